"""Fixed settings of the benchmark, shared by the parent, the sides and the report.

The result-line prefix a side process prints, the label ignore index, our step's levers per side
(``OURS_VARIANTS``) and the list of training sides, the tiny replica of each family, the peak bf16
TFLOP/s per device, the default sizes of a real and of a tiny run (not ``--distinct-batches``: it
defaults to warm-up + timed steps, so every timed step trains on a batch never seen before, as in a real
run), and the FLOPs formula behind MFU.
"""

from __future__ import annotations

from typing import Any

RESULT_PREFIX = "BENCH_RESULT "
IGNORE_INDEX = -100
# Our step's levers per side: PEFT input casts skipped, decoder layers compiled, padding to --pad-to,
# gradient checkpointing, vision layers compiled, lm_head + cross-entropy fused in chunks (frozen head).
OURS_VARIANTS: dict[str, dict[str, bool]] = {  # "fuse_head" is True unless a side says otherwise
    "ours": {"skip_cast": True, "compile": True, "pad": True, "gc": False, "vision": True},
    "ours_lm_only": {"skip_cast": True, "compile": True, "pad": True, "gc": False, "vision": False},
    "ours_plain": {
        "skip_cast": False,
        "compile": False,
        "pad": True,
        "gc": False,
        "vision": False,
        "fuse_head": False,
    },
    "ours_nocast": {
        "skip_cast": True,
        "compile": False,
        "pad": True,
        "gc": False,
        "vision": False,
        "fuse_head": False,
    },
    "ours_compile_only": {
        "skip_cast": False,
        "compile": True,
        "pad": True,
        "gc": False,
        "vision": False,
        "fuse_head": False,
    },
    "ours_nopad": {"skip_cast": True, "compile": True, "pad": False, "gc": False, "vision": True},
    "ours_unfused": {
        "skip_cast": True,
        "compile": True,
        "pad": True,
        "gc": False,
        "vision": True,
        "fuse_head": False,
    },
    "ours_gc": {"skip_cast": True, "compile": True, "pad": True, "gc": True, "vision": True},
    "ours_gc_nopad": {"skip_cast": True, "compile": True, "pad": False, "gc": True, "vision": True},
}
# ``fit``: the real CLI (``python -m vlm_lightning fit``) in a subprocess, data loading included
# ``fit_packed``: the same with ``data.packing`` (rows of ``--packed-row-tokens``, about a batch's tokens per step)
# lever sides (with --levers or named): ``fit_unfused``: ``fit`` with each LoRA A projection its own GEMM;
# ``fit_eager_vision``: ``fit`` with the vision tower's encoder layers not compiled; ``fit_library_inputs``:
# ``fit`` with the Qwen-VL M-RoPE index and vision inputs left to transformers' forward (no host-built inputs)
FIT_LEVER_FLAGS: dict[str, list[str]] = {
    "fit_unfused": ["--model.fuse_adapter_inputs", "false"],
    "fit_eager_vision": ["--model.compile_vision_tower", "false"],
    "fit_library_inputs": ["--model.host_built_inputs", "false"],
}
FIT_SIDES = ("fit", "fit_packed", *FIT_LEVER_FLAGS)
TRAIN_SIDES = ("hf_trainer", "trl", *OURS_VARIANTS, "lightning", *FIT_SIDES)
TINY_FAMILIES = {"qwen2_vl_2b": "qwen2_vl", "lfm2_vl_1_6b": "lfm2_vl"}
# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, matched in order against the device name.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
)
CPU_NOMINAL_TFLOPS = 1.0  # placeholder so the CPU smoke run has a number; CPU MFU means nothing
REAL_DEFAULTS: dict[str, Any] = {
    "batch_size": 8,
    "image_size": [448, 512],
    "answer_tokens": [60, 340],
    "warmup": 10,
    "steps": 100,  # a 30-40 step window (3-4 s) moved up to 1.6x between machines (docs/benchmarks.md)
    "reps": 2,
    "gen_prompts": 64,
    "gen_tokens": 128,
    "gen_batch": [16, 64],
    "gen_single_prompts": 16,
    "gen_train_steps": 40,
    "timeout": 900,
}
TINY_DEFAULTS: dict[str, Any] = {
    "batch_size": 2,
    "image_size": [112, 140],
    "answer_tokens": [16, 48],
    "warmup": 2,
    "steps": 3,
    "reps": 1,
    "gen_prompts": 4,
    "gen_tokens": 8,
    "gen_batch": [2, 4],
    "gen_single_prompts": 4,
    "gen_train_steps": 2,
    "timeout": 300,
}
FLOPS_FORMULA = (
    "MFU = model FLOPs / (measured time x peak dense bf16 FLOP/s). Model FLOPs per step = "
    "4·N_lm·T + 4·d·V·L + 2·N_vis·P + 2·N_proj·I, where N_lm = language-model parameters without the "
    "embedding table, T = non-padding tokens (text + image placeholders), d·V = lm_head (hidden x vocab) "
    "applied at the L labelled tokens, N_vis = vision-encoder parameters over its P image patches (before "
    "merging), N_proj = projector parameters over the I merged image tokens. 4 = forward (2) + activation "
    "gradients (2): the base weights are frozen, so no weight-gradient GEMMs; the frozen vision tower and "
    "projector run forward only (2). Not counted: attention scores, LoRA adapters, optimizer, padding, "
    "and work a side does beyond this (e.g. HF's logits at every position, gradient-checkpointing "
    "recompute). Every side gets the same numerator, so MFU ranks useful throughput."
)
