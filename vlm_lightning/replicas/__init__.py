"""Offline replicas for tests, the demo and benchmarks: no hub, the real transformers classes.

``registry.build_tiny(family, folder)`` builds a tiny replica (one module per family group, each with
its chat template and the sources it mirrors; ``common`` and ``qwen_common`` hold what they share, and
``qwen_templates`` the Qwen2/2.5/3-VL chat templates); ``real_size`` builds real-size random-weight
architectures for throughput benchmarks (their numbers in ``real_size_configs``, parameter counts in
``real_size_counts``); ``qwen_bpe`` rebuilds the real Qwen2 tokenizer.
"""
