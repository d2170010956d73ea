"""The pieces of ``scripts/benchmark.py``, one job per module.

``constants`` holds the fixed settings (side levers, defaults, peaks, the FLOPs formula); ``workload`` the
synthetic receipts, the shared work directory and the FLOPs of a batch; ``context`` what a side process
loads and the timing helpers; ``trainer_sides``, ``ours_sides`` and ``generation`` the benchmarked sides;
``report`` the aggregation and the markdown tables. Heavy libraries (torch, transformers, trl, lightning)
are imported inside the functions that use them, so the parent process stays light.
"""
