"""Training and generation throughput: HF Trainer (+ TRL) vs vlm_lightning, on real-size VLMs with random weights.

The architecture is built from its published config (``vlm_lightning.models.real_configs``) with random
weights on the device; synthetic receipt-like batches (one 448-512 px image per sample, a ~40-token
prompt, a 60-340-token JSON answer, loss on the answer only) are collated once by the real
``ChatCollator`` and shared by every side. Each side runs in its own process (this script with
``--side X``), sides interleaved over ``--reps``, median reported:

* ``hf_trainer``: ``transformers.Trainer`` + PEFT LoRA on the same pre-collated batches (bf16 autocast,
  no gradient checkpointing, full-vocabulary logits at every position as HF computes them).
* ``trl``: TRL ``SFTTrainer`` with its defaults (gradient checkpointing on), when ``import trl`` works.
* ``ours``: what ``VLMFineTuner`` does per step under ``bf16-mixed`` with ``compile_language_model``:
  ``apply_training_mode`` LoRA, frozen vision tower without autograd, ``causal_lm_loss`` (logits only at
  labelled positions), fused AdamW, bf16 weights + fp32 LoRA under bf16 autocast without PEFT's input
  casts, decoder layers and vision encoder layers compiled one by one (``compile_vision_tower``),
  batches padded to a multiple of ``--pad-to`` and pinned as the trainer's DataLoader pins them.
* lever sides, each one lever away from ``ours`` or from ``ours_plain`` (see ``OURS_VARIANTS``):
  ``ours_plain`` (no compile, PEFT's casts: the previous path), ``ours_nocast`` (plain + no casts),
  ``ours_compile_only`` (plain + LM compile), ``ours_lm_only`` (ours without the vision compile),
  ``ours_nopad`` (ours with dynamic padding), ``ours_gc`` (ours + activation recomputation, to compare
  with TRL's defaults, which checkpoint).
* ``lightning`` (``--lightning``): a real ``L.Trainer.fit`` of ``VLMFineTuner`` on the same batches.

``--gen`` benchmarks greedy generation instead: a per-sample loop, HF ``generate`` on left-padded
processor batches, ours (``generate_batch`` on the collator's ``generation_inputs``) and ours with a
static cache (compiled decoding on CUDA), checking the batched outputs against the per-sample ones.

    python scripts/benchmark.py --tiny                  # CPU, tiny replica, seconds (CI)
    python scripts/benchmark.py --family qwen2_vl_2b --out docs/benchmarks.md
    python scripts/benchmark.py --family lfm2_vl_1_6b --gen
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

RESULT_PREFIX = "BENCH_RESULT "
IGNORE_INDEX = -100
# Our step's levers per side: PEFT input casts skipped, decoder layers compiled, padding to --pad-to,
# gradient checkpointing.
OURS_VARIANTS: dict[str, dict[str, bool]] = {
    "ours": {"skip_cast": True, "compile": True, "pad": True, "gc": False, "vision": True},
    "ours_lm_only": {"skip_cast": True, "compile": True, "pad": True, "gc": False, "vision": False},
    "ours_plain": {"skip_cast": False, "compile": False, "pad": True, "gc": False, "vision": False},
    "ours_nocast": {"skip_cast": True, "compile": False, "pad": True, "gc": False, "vision": False},
    "ours_compile_only": {"skip_cast": False, "compile": True, "pad": True, "gc": False, "vision": False},
    "ours_nopad": {"skip_cast": True, "compile": True, "pad": False, "gc": False, "vision": True},
    "ours_gc": {"skip_cast": True, "compile": True, "pad": True, "gc": True, "vision": True},
}
TRAIN_SIDES = ("hf_trainer", "trl", *OURS_VARIANTS, "lightning")
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
    "steps": 40,
    "reps": 2,
    "distinct_batches": 10,
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
    "distinct_batches": 5,
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


# =============================================================================================
# Arguments
# =============================================================================================
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; ``None`` defaults are filled by ``resolve_defaults`` (tiny or real)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="qwen2_vl_2b", choices=["qwen2_vl_2b", "lfm2_vl_1_6b"])
    p.add_argument("--tiny", action="store_true", help="tiny replica on CPU, fp32, seconds (CI)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("MIN", "MAX"), help="image side range, px")
    p.add_argument("--answer-tokens", type=int, nargs=2, metavar=("MIN", "MAX"))
    p.add_argument("--prompt-tokens", type=int, default=40)
    p.add_argument("--warmup", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--reps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distinct-batches", type=int, help="batches built (cycled over the steps)")
    p.add_argument("--pad-to", type=int, default=64, help="ours: pad sequence length to a multiple of this")
    p.add_argument("--max-length", type=int, default=8192)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--sides", help=f"comma list from {','.join(TRAIN_SIDES)} (default: all available)")
    p.add_argument("--levers", action="store_true", help="add every ours_* lever side")
    p.add_argument("--profile", action="store_true", help="ours_* sides: print a profile of 3 more steps")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, every side")
    p.add_argument(
        "--compile-dynamic",
        default="auto",
        choices=["auto", "true", "false"],
        help="torch.compile dynamic=: auto (None: static first, dynamic after one recompile, as "
        "VLMFineTuner), false (one graph per padded length), true",
    )
    p.add_argument("--lightning", action="store_true", help="add a real L.Trainer.fit of VLMFineTuner")
    p.add_argument("--attn", default="sdpa", help="attn_implementation for every side")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument(
        "--peak-tflops", type=float, help="peak dense bf16 TFLOP/s (default: from the device name)"
    )
    p.add_argument("--gen", action="store_true", help="benchmark generation instead of training")
    p.add_argument("--gen-prompts", type=int)
    p.add_argument("--gen-tokens", type=int)
    p.add_argument("--gen-batch", type=int, nargs="+")
    p.add_argument("--no-gen-static", action="store_true", help="skip the static-cache generation variant")
    p.add_argument(
        "--gen-single-prompts", type=int, help="prompts timed one at a time (the per-sample rate's sample)"
    )
    p.add_argument(
        "--gen-train-steps", type=int, help="LoRA training steps before generating (0: untrained adapter)"
    )
    p.add_argument("--out", type=Path, help="append the report (markdown) to this file")
    p.add_argument("--json-out", type=Path, help="write every raw result to this JSON file")
    p.add_argument("--timeout", type=int, help="seconds allowed to each side process")
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--rep", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    resolve_defaults(args)
    return args


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill unset sizes from the tiny or real defaults; pick device and dtype."""
    defaults = TINY_DEFAULTS if args.tiny else REAL_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"


def resolve_sides(args: argparse.Namespace) -> list[str]:
    """The training sides to run, in order; TRL only when it imports."""
    if args.sides:
        sides = [s.strip() for s in args.sides.split(",") if s.strip()]
        unknown = [s for s in sides if s not in TRAIN_SIDES]
        if unknown:
            raise SystemExit(f"unknown side(s) {unknown}; choose from {TRAIN_SIDES}")
    else:
        sides = ["hf_trainer", "trl", "ours"]
        sides += [s for s in OURS_VARIANTS if s != "ours"] if args.levers else []
        sides += ["lightning"] if args.lightning else []
    if "trl" in sides:
        try:
            importlib.import_module("trl")
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
            print(f"[bench] note: trl side skipped (import trl failed: {type(exc).__name__}: {exc})")
            sides.remove("trl")
    return sides


# =============================================================================================
# Synthetic receipts
# =============================================================================================
STORES = ["Corner Market", "Blue Fern Cafe", "Hardware Hub", "City Pharmacy", "Green Grocer", "Book Nook"]
ITEMS = ["espresso", "bagel", "milk 1L", "batteries AA", "notebook", "apples", "screws M4", "tea", "bread"]
PROMPTS = [
    "Extract store, date, items and total from this receipt as JSON.",
    "Read the receipt and return its fields as compact JSON please.",
    "Return the receipt as JSON: store_name, date, items, total now.",
]
GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:-$"


def receipt_answer(rng: random.Random, n_tokens: int) -> str:
    """Receipt-like compact JSON text of exactly ``n_tokens`` bytes (= tokens for a byte-level tokenizer)."""
    doc: dict[str, Any] = {
        "store_name": rng.choice(STORES),
        "date": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "currency": "EUR",
        "items": [],
    }
    text = json.dumps(doc, separators=(",", ":"))
    while len(text) < n_tokens:
        price = rng.randint(50, 4999) / 100
        doc["items"].append({"name": rng.choice(ITEMS), "qty": rng.randint(1, 4), "price": f"{price:.2f}"})
        doc["total"] = f"{sum(float(i['price']) * i['qty'] for i in doc['items']):.2f}"
        text = json.dumps(doc, separators=(",", ":"))
    return text[:n_tokens]


def receipt_image(rng: random.Random, width: int, height: int) -> Any:
    """A white receipt-looking RGB image with lines of dark text."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (250, 250, 244))
    draw = ImageDraw.Draw(image)
    y = 8
    while y < height - 16:
        line = "".join(rng.choice(GLYPHS) for _ in range(rng.randint(6, max(7, width // 12))))
        draw.text((8 + rng.randint(0, 16), y), line, fill=(25, 25, 25))
        y += rng.randint(12, 22)
    return image


def make_items(rng: random.Random, n: int, args: argparse.Namespace, answer_range: list[int]) -> list[tuple]:
    """``n`` (Record, [image]) pairs: one image, a ~``prompt_tokens`` prompt, an answer in ``answer_range``."""
    from vlm_lightning.data.records import Record

    items = []
    for _ in range(n):
        idx = rng.randrange(10**9)
        width, height = (rng.randint(*args.image_size) for _ in range(2))
        prompt = rng.choice(PROMPTS)[: args.prompt_tokens].rstrip()
        answer = receipt_answer(rng, rng.randint(*answer_range))
        record = Record(
            id=f"bench-{idx}",
            images=[receipt_image(rng, width, height)],
            messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            answers=[answer],
            meta={"source": "benchmark"},
        )
        items.append((record, list(record.images)))
    return items


# =============================================================================================
# Model folder, batches and the shared work directory (parent side)
# =============================================================================================
def build_folder(args: argparse.Namespace, out: Path) -> tuple[Path, str]:
    """Write the config + processor folder; return it and the family name."""
    from vlm_lightning.models.real_configs import REAL_ARCHITECTURES, build_real_folder

    family = REAL_ARCHITECTURES[args.family].family
    if not args.tiny:
        return build_real_folder(args.family, out), family
    from vlm_lightning.models.tiny import BUILDERS, build_tiny

    tiny = TINY_FAMILIES[args.family]
    if tiny in BUILDERS:
        return build_tiny(tiny, out), family
    print(f"[bench] note: no tiny replica for {tiny}; using the shrunk real config")
    return build_real_folder(args.family, out, shrink=True), family


def load_processor(folder: Path) -> Any:
    """The folder's processor, with a pad token."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def prepare_workdir(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Build the model folder and the batches every side shares; write ``meta.json``."""
    import torch
    from transformers import AutoConfig

    from vlm_lightning.data.collator import ChatCollator
    from vlm_lightning.models.real_configs import family_facts

    start = time.perf_counter()
    folder, family = build_folder(args, workdir / "model")
    processor = load_processor(folder)
    facts = family_facts(family)
    collator = ChatCollator(processor, facts, max_length=args.max_length)
    rng = random.Random(args.seed)
    meta: dict[str, Any] = {
        "folder": str(folder),
        "family": family,
        "image_token_id": int(AutoConfig.from_pretrained(folder).image_token_id),
        "pad_id": int(collator.pad_id),
    }
    if args.gen:
        items = make_items(rng, args.gen_prompts, args, [8, 16])
        torch.save(items, workdir / "gen_items.pt")
        meta["gen_prompts"] = len(items)
    if not args.gen or args.gen_train_steps:
        n = max(1, min(args.distinct_batches, args.warmup + args.steps))
        pool = [
            _strip_batch(collator(make_items(rng, args.batch_size, args, args.answer_tokens)))
            for _ in range(n)
        ]
        torch.save(pool, workdir / "train_batches.pt")
        meta["pool"] = describe_pool(pool, meta["image_token_id"])
    (workdir / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"[bench] model folder + data ready in {time.perf_counter() - start:.1f}s: {folder}")
    return meta


def _strip_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Keep what training needs (drop generation inputs, prompts, answers)."""
    return {"inputs": batch["inputs"], "labels": batch["labels"], "ids": batch["ids"]}


def describe_pool(pool: list[dict[str, Any]], image_token_id: int) -> dict[str, Any]:
    """Token statistics of the shared batches."""
    stats = [batch_stats(b, image_token_id) for b in pool]
    widths = [int(b["labels"].shape[1]) for b in pool]
    return {
        "batches": len(pool),
        "tokens_per_batch": statistics.mean(s.tokens for s in stats),
        "labelled_per_batch": statistics.mean(s.labelled for s in stats),
        "image_tokens_per_batch": statistics.mean(s.image_tokens for s in stats),
        "patches_per_batch": statistics.mean(s.patches for s in stats),
        "width_min": min(widths),
        "width_max": max(widths),
    }


# =============================================================================================
# Batch statistics and FLOPs
# =============================================================================================
@dataclass
class BatchStats:
    """Counts that drive the FLOPs of one batch."""

    samples: int
    tokens: int  # non-padding tokens, image placeholders included
    labelled: int  # positions whose next token is labelled
    patches: int  # vision-encoder patches (before merging), padding excluded
    image_tokens: int  # merged image tokens the LM sees


def batch_stats(batch: dict[str, Any], image_token_id: int) -> BatchStats:
    """Count samples, tokens, labelled tokens, vision patches and image tokens of a batch."""
    inputs, labels = batch["inputs"], batch["labels"]
    if "image_grid_thw" in inputs:
        patches = int(inputs["image_grid_thw"].prod(-1).sum())
    elif "pixel_attention_mask" in inputs:
        patches = int(inputs["pixel_attention_mask"].sum())
    else:
        patches = 0
    return BatchStats(
        samples=int(labels.shape[0]),
        tokens=int(inputs["attention_mask"].sum()),
        labelled=int((labels[:, 1:] != IGNORE_INDEX).sum()),
        patches=patches,
        image_tokens=int((inputs["input_ids"] == image_token_id).sum()),
    )


def train_flops(s: BatchStats, counts: dict[str, Any]) -> float:
    """Useful model FLOPs of one LoRA training step (see ``FLOPS_FORMULA``)."""
    return (
        4.0 * counts["lm_non_embedding"] * s.tokens
        + 4.0 * counts["hidden_size"] * counts["vocab_size"] * s.labelled
        + 2.0 * counts["vision_encoder"] * s.patches
        + 2.0 * counts["projector"] * s.image_tokens
    )


def pad_batch(batch: dict[str, Any], multiple: int, pad_id: int) -> dict[str, Any]:
    """Right-pad every token-aligned tensor of a training batch to a multiple of ``multiple``."""
    import torch.nn.functional as F

    labels = batch["labels"]
    width = labels.shape[1]
    extra = (-width) % multiple if multiple and multiple > 1 else 0
    if not extra:
        return batch
    values = {"input_ids": pad_id}
    inputs = {
        k: F.pad(v, (0, extra), value=values.get(k, 0)) if _token_aligned(v, labels) else v
        for k, v in batch["inputs"].items()
    }
    return {**batch, "inputs": inputs, "labels": F.pad(labels, (0, extra), value=IGNORE_INDEX)}


def _token_aligned(value: Any, labels: Any) -> bool:
    return hasattr(value, "shape") and value.dim() == 2 and tuple(value.shape) == tuple(labels.shape)


def peak_tflops(device_name: str, override: float | None, device: str) -> float:
    """Peak dense bf16 TFLOP/s: ``override``, else by device name, else the CPU placeholder."""
    if override:
        return override
    if device == "cpu":
        return CPU_NOMINAL_TFLOPS
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    print(f"[bench] warning: unknown peak for '{device_name}'; MFU uses 989 TFLOP/s (pass --peak-tflops)")
    return 989.0


# =============================================================================================
# Child-process context
# =============================================================================================
@dataclass
class Context:
    """Everything a side needs, loaded from the shared work directory."""

    args: argparse.Namespace
    workdir: Path
    meta: dict[str, Any]
    device: Any
    dtype: Any
    facts: Any
    info: dict[str, Any]
    warmup_batches: list[dict[str, Any]] = field(default_factory=list)
    timed_batches: list[dict[str, Any]] = field(default_factory=list)
    named_trainable: list[tuple[str, Any]] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """The config + processor folder."""
        return Path(self.meta["folder"])

    @property
    def is_cuda(self) -> bool:
        """Running on a GPU."""
        return self.device.type == "cuda"

    @property
    def bf16(self) -> bool:
        """Weights in bf16 (and bf16 autocast)."""
        import torch

        return self.dtype == torch.bfloat16


def runtime_info(device: Any) -> dict[str, Any]:
    """Device name and library versions (printed by every side)."""
    import platform
    from importlib import metadata

    import torch

    info = {
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({os.cpu_count()} cores)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for name in ("transformers", "peft", "lightning", "trl"):  # versions without importing the packages
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[name] = metadata.version(name)
    return info


def load_context(args: argparse.Namespace) -> Context:
    """Read the work directory, pick device and dtype, print the environment."""
    import torch

    from vlm_lightning.models.real_configs import family_facts

    meta = json.loads((args.workdir / "meta.json").read_text())
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(0)
        device = torch.device("cuda", 0)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    info = runtime_info(device)
    print(
        f"[bench] {args.side} rep {args.rep}: " + " | ".join(f"{k} {v}" for k, v in info.items()), flush=True
    )
    ctx = Context(args, args.workdir, meta, device, dtype, family_facts(meta["family"]), info)
    if not args.gen:
        pool = torch.load(args.workdir / "train_batches.pt", weights_only=False)
        ctx.warmup_batches = [pool[i % len(pool)] for i in range(args.warmup)]
        ctx.timed_batches = [pool[(args.warmup + i) % len(pool)] for i in range(args.steps)]
    return ctx


def load_config(folder: Path, use_cache: bool) -> Any:
    """The folder's model config with ``use_cache`` set on it and its text config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    config.use_cache = use_cache
    text = getattr(config, "text_config", None)
    if text is not None:
        text.use_cache = use_cache
    return config


def build_base_model(ctx: Context, use_cache: bool = False) -> tuple[Any, dict[str, Any]]:
    """Random-weight model on the device (same seed in every side -> same weights) and its counts."""
    from vlm_lightning.models.real_configs import build_model, parameter_counts

    start = time.perf_counter()
    config = load_config(ctx.folder, use_cache)
    model = build_model(config, ctx.device, ctx.dtype, seed=ctx.args.seed, attn_implementation=ctx.args.attn)
    counts = parameter_counts(model, ctx.facts)
    sync(ctx.device)
    print(
        f"[bench] built {type(model).__name__} ({ctx.dtype}) in {time.perf_counter() - start:.1f}s: "
        f"{counts.summary()}",
        flush=True,
    )
    return model, counts.as_dict()


def lm_linear_regex(model: Any, facts: Any) -> str:
    """A PEFT ``target_modules`` regex hitting exactly the language model's ``nn.Linear`` layers."""
    import torch

    lm = model.get_submodule(facts.language_model)
    suffixes = sorted(
        {
            name.split(".", 2)[2]
            for name, module in lm.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith("layers.") and name.count(".") >= 2
        }
    )
    if not suffixes:
        raise ValueError(f"no linear layers under {facts.language_model}.layers")
    return rf"{re.escape(facts.language_model)}\.layers\.\d+\.({'|'.join(re.escape(s) for s in suffixes)})"


def lora_config(args: argparse.Namespace, regex: str) -> Any:
    """The PEFT LoraConfig every side uses (identical to what ``apply_training_mode`` builds)."""
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=regex,
        task_type="CAUSAL_LM",
    )


def lora_settings(args: argparse.Namespace, regex: str) -> Any:
    """The same LoRA as ``LoraSettings`` for ``apply_training_mode`` / ``VLMFineTuner``."""
    from vlm_lightning.models.peft_setup import LoraSettings

    return LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, targets=regex)


def trainable_count(model: Any) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# =============================================================================================
# Timing
# =============================================================================================
def sync(device: Any) -> None:
    """Wait for the device (no-op on CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: Any) -> None:
    """Start a fresh peak-memory measurement."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: Any) -> float:
    """Peak allocated GPU memory (CUDA) or the process's max RSS (CPU), GiB."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


class StepTimer:
    """Per-step times and the whole window of the timed steps (steps ``>= warmup``), synchronised."""

    def __init__(self, device: Any, warmup: int) -> None:
        self.device = device
        self.warmup = warmup
        self.step_times: list[float] = []
        self.window_start: float | None = None
        self.window_end: float | None = None
        self.first_start: float | None = None  # start of step 0: warm-up (compilation) time is visible
        self._t0 = 0.0

    def begin(self, step: int) -> None:
        """Call right before step ``step`` starts."""
        if self.first_start is None:
            self.first_start = time.perf_counter()
        if step < self.warmup:
            return
        sync(self.device)
        self._t0 = time.perf_counter()
        if self.window_start is None:
            self.window_start = self._t0

    def end(self, step: int) -> None:
        """Call right after step ``step`` finished (optimizer step included)."""
        if step < self.warmup:
            return
        sync(self.device)
        now = time.perf_counter()
        self.step_times.append(now - self._t0)
        self.window_end = now

    @property
    def window(self) -> float:
        """Seconds from the start of the first timed step to the end of the last."""
        if self.window_start is None or self.window_end is None:
            raise RuntimeError("no timed step ran")
        return self.window_end - self.window_start


def training_result(
    ctx: Context,
    side: str,
    timer: StepTimer,
    losses: list[float],
    counts: dict[str, Any],
    trainable: int,
    notes: str = "",
) -> dict[str, Any]:
    """The JSON line a training side reports."""
    if len(timer.step_times) != ctx.args.steps:
        raise RuntimeError(f"{side}: timed {len(timer.step_times)} steps, expected {ctx.args.steps}")
    image_token_id = ctx.meta["image_token_id"]
    stats = [batch_stats(b, image_token_id) for b in ctx.timed_batches]
    window = timer.window
    flops = sum(train_flops(s, counts) for s in stats)
    peak = peak_tflops(ctx.info["device_name"], ctx.args.peak_tflops, ctx.device.type)
    return {
        "side": side,
        "rep": ctx.args.rep,
        "samples_per_s": sum(s.samples for s in stats) / window,
        "tokens_per_s": sum(s.tokens for s in stats) / window,
        "step_ms": 1000 * statistics.median(timer.step_times),
        "window_s": window,
        "peak_gib": peak_gib(ctx.device),
        "model_tflops_per_s": flops / window / 1e12,
        "mfu": flops / window / (peak * 1e12),
        "peak_tflops": peak,
        "warmup_s": (timer.window_start or 0.0) - (timer.first_start or 0.0),
        "losses": losses,
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": losses[-1] if losses else float("nan"),
        "trainable_params": trainable,
        "counts": counts,
        "info": ctx.info,
        "notes": notes,
    }


def to_device(obj: Any, device: Any) -> Any:
    """Move tensors (nested in dicts / lists) to ``device``."""
    if hasattr(obj, "to") and hasattr(obj, "dtype"):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


# =============================================================================================
# Side: transformers.Trainer (and TRL's SFTTrainer on top of it)
# =============================================================================================
class _FlatBatches:
    """A map-style dataset of pre-collated batches, each returned as the model's keyword arguments."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i >= len(self.batches):
            raise IndexError(i)
        batch = self.batches[i]
        return {**batch["inputs"], "labels": batch["labels"]}


def unwrap_single(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate function for ``batch_size=1`` over pre-collated batches."""
    return items[0]


def recording_trainer(base: type) -> type:
    """A Trainer subclass that keeps the dataset order and records every step's loss."""
    from torch.utils.data import SequentialSampler

    class Recording(base):  # type: ignore[misc, valid-type]
        recorded: list[Any]

        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return SequentialSampler(self.train_dataset)

        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            loss = super().training_step(*args, **kwargs)
            self.recorded.append(loss.detach())
            return loss

    return Recording


def timing_callback(timer: StepTimer) -> Any:
    """A TrainerCallback timing each optimizer step with device synchronisation."""
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            timer.begin(state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            timer.end(state.global_step - 1)

    return Timing()


def trainer_arguments(ctx: Context, config_cls: type, side: str, **overrides: Any) -> Any:
    """Shared Trainer arguments (only the fields ``config_cls`` knows are passed)."""
    import dataclasses

    wanted = {
        "output_dir": str(ctx.workdir / f"{side}-{ctx.args.rep}"),
        "per_device_train_batch_size": 1,
        "max_steps": ctx.args.warmup + ctx.args.steps,
        "learning_rate": ctx.args.lr,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "max_grad_norm": ctx.args.max_grad_norm,
        "bf16": ctx.is_cuda and ctx.bf16,
        "report_to": [],
        "save_strategy": "no",
        "eval_strategy": "no",
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "disable_tqdm": True,
        "seed": ctx.args.seed,
        "use_cpu": not ctx.is_cuda,
        **overrides,
    }
    known = {f.name for f in dataclasses.fields(config_cls)}
    dropped = sorted(set(wanted) - known)
    if dropped:
        print(f"[bench] note: {config_cls.__name__} has no {dropped}; left at defaults")
    return config_cls(**{k: v for k, v in wanted.items() if k in known})


def run_trainer_side(ctx: Context, side: str) -> dict[str, Any]:
    """``hf_trainer`` (Trainer + PEFT, no checkpointing) or ``trl`` (SFTTrainer, its defaults)."""
    from transformers import Trainer, TrainingArguments

    model, counts = build_base_model(ctx)
    regex = lm_linear_regex(model, ctx.facts)
    timer = StepTimer(ctx.device, ctx.args.warmup)
    dataset = _FlatBatches(ctx.warmup_batches + ctx.timed_batches)
    if side == "hf_trainer":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(ctx.args, regex))
        args = trainer_arguments(ctx, TrainingArguments, side, gradient_checkpointing=False)
        trainer = recording_trainer(Trainer)(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=unwrap_single,
            callbacks=[timing_callback(timer)],
        )
        notes = "Trainer + PEFT, bf16 autocast, no gradient checkpointing"
    else:
        import datasets
        from trl import SFTConfig, SFTTrainer

        # SFTTrainer only takes a datasets.Dataset: index the same pre-collated batches through it
        index = datasets.Dataset.from_dict({"batch_index": list(range(len(dataset)))})
        args = trainer_arguments(
            ctx, SFTConfig, side, dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False
        )
        trainer = recording_trainer(SFTTrainer)(
            model=model,
            args=args,
            train_dataset=index,
            data_collator=lambda items: dataset[items[0]["batch_index"]],
            processing_class=load_processor(ctx.folder),
            peft_config=lora_config(ctx.args, regex),
            callbacks=[timing_callback(timer)],
        )
        notes = f"SFTTrainer defaults, gradient_checkpointing={getattr(args, 'gradient_checkpointing', '?')}"
    trainer.recorded = []
    reset_peak(ctx.device)
    trainer.train()
    losses = [float(x) for x in trainer.recorded]
    return training_result(ctx, side, timer, losses, counts, trainable_count(trainer.model), notes)


# =============================================================================================
# Side: ours (what VLMFineTuner does per step, in a plain loop)
# =============================================================================================
def ours_step(model: Any, optimizer: Any, params: list[Any], batch: dict[str, Any], ctx: Context) -> Any:
    """One training step as ``VLMFineTuner`` + Lightning run it; returns the detached loss."""
    import torch

    from vlm_lightning.loss import causal_lm_loss

    inputs = to_device(batch["inputs"], ctx.device)
    labels = to_device(batch["labels"], ctx.device)
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.bf16):
        loss, _, _ = causal_lm_loss(model, inputs, labels)
    if not torch.isfinite(loss):  # training_step's check (a device sync, as in the module)
        raise FloatingPointError(f"non-finite loss {loss.item()}")
    loss.backward()
    # VLMFineTuner.configure_gradient_clipping: one norm, logged and clipped (HF: max_grad_norm)
    norm = torch.nn.utils.clip_grad_norm_(params, ctx.args.max_grad_norm, foreach=True)  # logged + clipped
    if not ctx.diagnostics:  # first step: with lora_B = 0 the lora_A gradients are exactly zero in math
        a_grads = [p.grad for n, p in ctx.named_trainable if "lora_A" in n and p.grad is not None]
        ctx.diagnostics["lora_A_grad_nonzero_step1"] = sum(int((g != 0).sum()) for g in a_grads)
        ctx.diagnostics["lora_A_grad_absmax_step1"] = max(
            (float(g.abs().max()) for g in a_grads), default=0.0
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), norm.detach()


def pin(obj: Any, ctx: Context) -> Any:
    """Page-locked copies of a batch's tensors on CUDA runs (what ``DataLoader(pin_memory=True)`` does)."""
    if not ctx.is_cuda:
        return obj
    if hasattr(obj, "pin_memory"):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: pin(v, ctx) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(pin(v, ctx) for v in obj)
    return obj


def run_ours(ctx: Context, side: str) -> dict[str, Any]:
    """Our path with the levers of ``OURS_VARIANTS[side]``."""
    import torch

    from vlm_lightning.models.acceleration import (
        compile_decoder_layers,
        compile_vision_layers,
        skip_lora_input_cast,
    )
    from vlm_lightning.models.peft_setup import apply_training_mode

    levers = OURS_VARIANTS[side]
    model, counts = build_base_model(ctx)
    regex = lm_linear_regex(model, ctx.facts)
    hf_checkpointing = levers["gc"] and not levers["compile"]  # compiled: the compiler recomputes
    model = apply_training_mode(
        model, ctx.facts, "lora", lora_settings(ctx.args, regex), gradient_checkpointing=hf_checkpointing
    )
    model.train()
    notes = [f"pad to x{ctx.args.pad_to}" if levers["pad"] else "dynamic padding"]
    if levers["skip_cast"] and ctx.bf16:
        notes.append(f"PEFT input cast skipped on {skip_lora_input_cast(model)} LoRA layers")
    if levers["compile"]:
        dynamic = {"auto": None, "true": True, "false": False}[ctx.args.compile_dynamic]
        n = compile_decoder_layers(model, ctx.facts, dynamic=dynamic, recompute_activations=levers["gc"])
        notes.append(f"torch.compile of {n} decoder layers (dynamic={dynamic})")
    if levers["vision"]:
        dynamic = {"auto": None, "true": True, "false": False}[ctx.args.compile_dynamic]
        notes.append(
            f"torch.compile of {compile_vision_layers(model, ctx.facts, dynamic=dynamic)} vision layers"
        )
    if levers["gc"]:
        notes.append(
            "activation recomputation by the compiler (memory budget 0)"
            if levers["compile"]
            else "gradient checkpointing (non-reentrant)"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    ctx.named_trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=ctx.args.lr, weight_decay=0.0, fused=ctx.is_cuda)
    pad_id = ctx.meta["pad_id"]
    pad_to = ctx.args.pad_to if levers["pad"] else 1
    # pinned like the trainer's DataLoader (pin_memory=True on CUDA) so host-to-device copies are async
    warmup = [pin(pad_batch(b, pad_to, pad_id), ctx) for b in ctx.warmup_batches]
    timed = [pin(pad_batch(b, pad_to, pad_id), ctx) for b in ctx.timed_batches]
    timer = StepTimer(ctx.device, len(warmup))
    losses = []
    reset_peak(ctx.device)
    norms = []
    for step, batch in enumerate(warmup + timed):
        timer.begin(step)
        loss, norm = ours_step(model, optimizer, params, batch, ctx)
        losses.append(loss)
        norms.append(norm)
        timer.end(step)
    if ctx.args.profile:
        profile_steps(lambda b: ours_step(model, optimizer, params, b, ctx), timed[:3], ctx.device)
    result = training_result(
        ctx, side, timer, [float(x) for x in losses], counts, trainable_count(model), ", ".join(notes)
    )
    result["padded_tokens_per_s"] = sum(b["labels"].numel() for b in timed) / timer.window
    result["grad_norms"] = [float(x) for x in norms]
    result.update(ctx.diagnostics)
    return result


def profile_steps(step: Callable[[Any], Any], batches: list[dict[str, Any]], device: Any) -> None:
    """Print the top kernels / ops by self device time over a few more steps (``--profile``)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches:
            step(batch)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)
    print("\n".join(f"[bench] profile | {line}" for line in table.splitlines()), flush=True)


# =============================================================================================
# Side: a real Lightning fit of VLMFineTuner
# =============================================================================================
class _BatchList:
    """Map-style dataset of full collated batches (``DataLoader(batch_size=None)``)."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[i]


def run_lightning(ctx: Context) -> dict[str, Any]:
    """``L.Trainer.fit`` on ``VLMFineTuner`` with the in-memory model (its loaders patched to return it)."""
    import functools
    import inspect

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    import vlm_lightning.module as module_mod

    model, counts = build_base_model(ctx)
    regex = lm_linear_regex(model, ctx.facts)
    processor = load_processor(ctx.folder)
    module_mod.load_model = lambda *a, **k: model
    module_mod.family_of = lambda *a, **k: ctx.facts
    module_mod.load_processor = lambda *a, **k: processor
    kwargs: dict[str, Any] = {
        "name_or_path": str(ctx.folder),
        "mode": "lora",
        "lora": lora_settings(ctx.args, regex),
        "optimizer": functools.partial(torch.optim.AdamW, lr=ctx.args.lr, weight_decay=0.0),
        "scheduler": "constant",
        "metrics": ["exact_match"],
        "val_generate": False,
    }
    if "compile_language_model" in inspect.signature(module_mod.VLMFineTuner).parameters:
        kwargs["compile_language_model"] = ctx.is_cuda
        kwargs["compile_vision_tower"] = ctx.is_cuda
    module = module_mod.VLMFineTuner(**kwargs)
    pad_id = ctx.meta["pad_id"]
    batches = [pad_batch(b, ctx.args.pad_to, pad_id) for b in ctx.warmup_batches + ctx.timed_batches]
    timer = StepTimer(ctx.device, ctx.args.warmup)
    losses: list[Any] = []

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            timer.begin(batch_idx)

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            losses.append(outputs["loss"].detach())
            timer.end(batch_idx)

    precision = "bf16-mixed" if ctx.bf16 else "32-true"
    trainer = L.Trainer(
        accelerator="gpu" if ctx.is_cuda else "cpu",
        devices=1,
        precision=precision,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=ctx.args.max_grad_norm,
        callbacks=[Timing()],
    )
    reset_peak(ctx.device)
    trainer.fit(module, train_dataloaders=DataLoader(_BatchList(batches), batch_size=None, shuffle=False))
    notes = f"L.Trainer.fit(VLMFineTuner), {precision}, pad to x{ctx.args.pad_to}"
    return training_result(
        ctx, "lightning", timer, [float(x) for x in losses], counts, trainable_count(module.model), notes
    )


# =============================================================================================
# Generation
# =============================================================================================
def timed(device: Any, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` between two device synchronisations; return seconds and its result."""
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - start, value


def hf_prompt_batch(processor: Any, items: list[tuple]) -> dict[str, Any]:
    """The plain HF way: chat template -> processor, left-padded."""
    from vlm_lightning.data.collator import to_template_messages

    texts = [
        processor.apply_chat_template(
            to_template_messages(r)[:-1], tokenize=False, add_generation_prompt=True
        )
        for r, _ in items
    ]
    out = processor(
        text=texts,
        images=[list(imgs) for _, imgs in items],
        padding=True,
        padding_side="left",
        return_tensors="pt",
        add_special_tokens=False,
    )
    return dict(out)


def left_pad(inputs: dict[str, Any], width: int, pad_id: int) -> dict[str, Any]:
    """Left-pad the token-aligned tensors of a generation batch to ``width``."""
    import torch.nn.functional as F

    ids = inputs["input_ids"]
    extra = width - ids.shape[1]
    if extra <= 0:
        return inputs
    return {
        k: F.pad(v, (extra, 0), value=pad_id if k == "input_ids" else 0)
        if hasattr(v, "shape") and v.dim() == 2 and v.shape == ids.shape
        else v
        for k, v in inputs.items()
    }


def compare_tokens(reference: list[list[int]], got: list[list[int]]) -> dict[str, Any]:
    """How many samples differ from the reference, and the mean length of the common prefix."""
    differ, prefix = 0, []
    for ref, out in zip(reference, got):
        same = next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), min(len(ref), len(out)))
        prefix.append(same)
        differ += int(ref != out)
    return {"differ": differ, "total": len(reference), "mean_common_prefix": statistics.mean(prefix)}


@dataclass
class GenSetup:
    """Model, collator and inputs shared by the generation methods."""

    model: Any
    tokenizer: Any
    stop_ids: list[int]
    pad_id: int
    items: list[tuple]
    collator: Any
    processor: Any
    n_tokens: int


def generate_rows(setup: GenSetup, inputs: dict[str, Any], device: Any, **extra: Any) -> list[list[int]]:
    """Plain ``model.generate`` (LoRA adapters unmerged), exactly ``n_tokens`` greedy new tokens per row."""
    inputs = to_device(inputs, device)
    out = setup.model.generate(
        **inputs,
        max_new_tokens=setup.n_tokens,
        min_new_tokens=setup.n_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=setup.stop_ids,
        pad_token_id=setup.pad_id,
        **extra,
    )
    return out[:, inputs["input_ids"].shape[1] :].tolist()


def ours_rows(setup: GenSetup, inputs: dict[str, Any], device: Any, **extra: Any) -> list[list[int]]:
    """``vlm_lightning.generation.generate_batch`` (what VLMFineTuner.generate calls: LoRA merged)."""
    from vlm_lightning.generation import generate_batch

    _, new = generate_batch(
        setup.model,
        to_device(inputs, device),
        setup.tokenizer,
        setup.stop_ids,
        max_new_tokens=setup.n_tokens,
        min_new_tokens=setup.n_tokens,
        **extra,
    )
    return new.tolist()


def gen_method(
    ctx: Context,
    setup: GenSetup,
    name: str,
    batch: int,
    batches: list[dict[str, Any]],
    run: Callable[[dict[str, Any]], list[list[int]]],
) -> tuple[dict[str, Any], list[list[int]]]:
    """Warm up on the first batch, then time every batch; return the row and the new tokens."""
    first_s, _ = timed(ctx.device, lambda: run(batches[0]))
    seconds, outs = timed(ctx.device, lambda: [row for b in batches for row in run(b)])
    new_tokens = len(outs) * setup.n_tokens
    print(
        f"[bench] gen {name} batch {batch}: {seconds:.2f}s ({new_tokens / seconds:.1f} new tokens/s)",
        flush=True,
    )
    return {
        "method": name,
        "batch": batch,
        "prompts": len(outs),
        "seconds": seconds,
        "seconds_per_prompt": seconds / len(outs),
        "first_call_s": first_s,
        "new_tokens_per_s": new_tokens / seconds,
    }, outs


def train_adapter(ctx: Context, model: Any, steps: int) -> list[float]:
    """Fine-tune the LoRA ``steps`` steps on the receipt batches, so generation decodes with a trained
    adapter (confident greedy choices, as at evaluation time) instead of random weights' near-ties."""
    import torch

    pool = torch.load(ctx.workdir / "train_batches.pt", weights_only=False)
    params = [p for p in model.parameters() if p.requires_grad]
    ctx.named_trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=ctx.args.lr, weight_decay=0.0)
    model.train()
    losses = [float(ours_step(model, optimizer, params, pool[i % len(pool)], ctx)[0]) for i in range(steps)]
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    if ctx.is_cuda:
        torch.cuda.empty_cache()
    print(f"[bench] adapter trained {steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    return losses


def run_gen(ctx: Context) -> dict[str, Any]:
    """Per-sample loop vs plain HF ``generate`` vs ours (merged LoRA, + static cache) on the same batches."""
    import torch

    from vlm_lightning.data.collator import ChatCollator
    from vlm_lightning.generation import end_of_turn_ids
    from vlm_lightning.models.peft_setup import apply_training_mode

    model, counts = build_base_model(ctx, use_cache=True)
    model = apply_training_mode(
        model, ctx.facts, "lora", lora_settings(ctx.args, lm_linear_regex(model, ctx.facts))
    )
    losses = train_adapter(ctx, model, ctx.args.gen_train_steps) if ctx.args.gen_train_steps else []
    model.eval()
    processor = load_processor(ctx.folder)
    tokenizer = processor.tokenizer
    collator = ChatCollator(processor, ctx.facts, max_length=ctx.args.max_length)
    items = torch.load(ctx.workdir / "gen_items.pt", weights_only=False)
    setup = GenSetup(
        model,
        tokenizer,
        end_of_turn_ids(tokenizer, ctx.facts.end_of_turn),
        collator.pad_id,
        items,
        collator,
        processor,
        ctx.args.gen_tokens,
    )
    rows: list[dict[str, Any]] = []
    reset_peak(ctx.device)
    with torch.inference_mode():
        singles = [collator([it])["generation_inputs"] for it in items[: ctx.args.gen_single_prompts]]
        single_row, single_outs = gen_method(
            ctx, setup, "per-sample loop", 1, singles, lambda b: generate_rows(setup, b, ctx.device)
        )
        batched: dict[int, list[list[int]]] = {}
        for size in ctx.args.gen_batch:
            size_rows, batched[size] = gen_batched(ctx, setup, size)
            rows += size_rows
    largest = batched[max(batched)]
    rows.insert(0, {**single_row, **compare_tokens(largest[: len(single_outs)], single_outs)})
    per_prompt = single_row["seconds_per_prompt"]
    for row in rows:
        if "seconds" in row:
            row["speedup"] = per_prompt / row["seconds_per_prompt"]
    return {
        "side": "gen",
        "rep": ctx.args.rep,
        "rows": rows,
        "prompts": len(items),
        "new_tokens": ctx.args.gen_tokens,
        "adapter_losses": losses,
        "peak_gib": peak_gib(ctx.device),
        "counts": counts,
        "info": ctx.info,
    }


def gen_batched(ctx: Context, setup: GenSetup, size: int) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """HF generate, ours, and ours + static cache on the same batches of ``size`` prompts.

    Returns the rows (each compared token by token with HF generate) and HF generate's tokens."""
    chunks = [setup.items[i : i + size] for i in range(0, len(setup.items), size)]
    batches = [setup.collator(c)["generation_inputs"] for c in chunks]
    width = max(b["input_ids"].shape[1] for b in batches)
    padded = [left_pad(b, width, setup.pad_id) for b in batches]  # one static shape for every chunk
    hf_row, reference = gen_method(
        ctx, setup, "HF generate", size, batches, lambda b: generate_rows(setup, b, ctx.device)
    )
    rows = [{**hf_row, **compare_tokens(reference, reference), "vs_hf": 1.0}]
    methods: list[tuple[str, list[dict[str, Any]], Callable[[dict[str, Any]], list[list[int]]]]] = [
        ("ours (LoRA merged)", batches, lambda b: ours_rows(setup, b, ctx.device)),
    ]
    if not ctx.args.no_gen_static:
        methods.append(
            (
                "ours (LoRA merged) + static cache",
                padded,
                lambda b: ours_rows(setup, b, ctx.device, cache_implementation="static"),
            )
        )
        methods.append(
            (
                "adapters unmerged + static cache",
                padded,
                lambda b: ours_rows(setup, b, ctx.device, merge_lora=False, cache_implementation="static"),
            )
        )
    for name, inputs, run in methods:
        try:
            row, outs = gen_method(ctx, setup, name, size, inputs, run)
            rows.append(
                {**row, **compare_tokens(reference, outs), "vs_hf": hf_row["seconds"] / row["seconds"]}
            )
        except Exception as exc:  # noqa: BLE001 - a failing variant is reported, not fatal
            traceback.print_exc()
            rows.append({"method": name, "batch": size, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    return rows, reference


# =============================================================================================
# Child entry point
# =============================================================================================
def child_main(args: argparse.Namespace) -> int:
    """Run one side in this process and print its JSON result line."""
    try:
        ctx = load_context(args)
        if args.gen:
            result = run_gen(ctx)
        elif args.side in ("hf_trainer", "trl"):
            result = run_trainer_side(ctx, args.side)
        elif args.side in OURS_VARIANTS:
            result = run_ours(ctx, args.side)
        elif args.side == "lightning":
            result = run_lightning(ctx)
        else:
            raise ValueError(f"unknown side {args.side}")
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a failed side
        traceback.print_exc()
        print(
            RESULT_PREFIX
            + json.dumps(
                {"side": args.side, "rep": args.rep, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            ),
            flush=True,
        )
        return 1
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# =============================================================================================
# Parent: run the sides, aggregate, report
# =============================================================================================
def child_command(side: str, workdir: Path, rep: int) -> list[str]:
    """This script with the user's arguments plus the internal side flags."""
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        *sys.argv[1:],
        "--side",
        side,
        "--workdir",
        str(workdir),
        "--rep",
        str(rep),
    ]


def child_env() -> dict[str, str]:
    """Environment for side processes: offline, quiet tokenizers."""
    env = dict(os.environ)
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("HF_DATASETS_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("WANDB_MODE", "disabled"),
    ):
        env.setdefault(key, value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_side_process(side: str, workdir: Path, rep: int, timeout: int) -> dict[str, Any]:
    """Run one side in a fresh process; return its result (or an error entry)."""
    log = workdir / "logs" / f"{rep}-{side}.log"
    log.parent.mkdir(exist_ok=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            child_command(side, workdir, rep),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            cwd=ROOT,
        )
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        stderr = (exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or "") + "\nTIMEOUT"
        code = -1
    log.write_text(stdout + "\n----- stderr -----\n" + stderr)
    for line in stdout.splitlines():
        if line.startswith("[bench]"):
            print("   " + line, flush=True)
    result = next(
        (
            json.loads(line[len(RESULT_PREFIX) :])
            for line in reversed(stdout.splitlines())
            if line.startswith(RESULT_PREFIX)
        ),
        None,
    )
    if result is None or code != 0 or "error" in result:
        error = (result or {}).get("error") or f"exit code {code}"
        print(f"[bench] {side} rep {rep} FAILED ({error}); log: {log}\n" + _tail(stderr, 25), flush=True)
        return {"side": side, "rep": rep, "error": error}
    result["process_s"] = time.perf_counter() - start
    return result


def _tail(text: str, lines: int) -> str:
    return "\n".join("   | " + line for line in text.strip().splitlines()[-lines:])


def interleaved(sides: list[str], reps: int) -> Iterator[tuple[int, str]]:
    """(rep, side) pairs, the side order rotated every rep."""
    for rep in range(reps):
        k = rep % len(sides)
        for side in sides[k:] + sides[:k]:
            yield rep, side


def median_row(side: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over the successful reps of one side."""
    ok = [r for r in results if r["side"] == side and "error" not in r]
    if not ok:
        errors = "; ".join(sorted({r.get("error", "?") for r in results if r["side"] == side}))
        return {"side": side, "error": errors or "not run"}
    keys = ("samples_per_s", "tokens_per_s", "step_ms", "peak_gib", "mfu", "model_tflops_per_s", "warmup_s")
    row = {k: statistics.median(r[k] for r in ok) for k in keys}
    row.update(
        side=side,
        reps=len(ok),
        loss_first=ok[0]["loss_first"],
        loss_last=ok[0]["loss_last"],
        trainable_params=ok[0]["trainable_params"],
        notes=ok[0].get("notes", ""),
    )
    return row


def loss_parity_table(results: list[dict[str, Any]], sides: list[str]) -> str:
    """Per-step losses of every side against a reference side on the same batches (rep 0)."""
    first = {r["side"]: r["losses"] for r in results if r.get("rep") == 0 and "losses" in r}
    ref = next((s for s in ("ours_plain", "hf_trainer", *sides) if s in first), None)
    if ref is None:
        return "loss parity: no side finished"
    lines = [
        f"Loss per step vs `{ref}` (same batches, rep 0; dropout masks differ between sides):",
        "",
        "| side | steps | mean abs. diff | max abs. diff | mean loss, last 10 steps | reference, last 10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for side in sides:
        if side not in first or side == ref:
            continue
        a, b = first[side], first[ref]
        n = min(len(a), len(b))
        diffs = [abs(x - y) for x, y in zip(a[:n], b[:n])]
        lines.append(
            f"| {side} | {n} | {statistics.fmean(diffs):.4f} | {max(diffs):.4f} | "
            f"{statistics.fmean(a[n - 10 : n]):.4f} | {statistics.fmean(b[n - 10 : n]):.4f} |"
        )
    return "\n".join(lines)


def training_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the training sides (ratios vs hf_trainer's samples/s)."""
    base = next((r["samples_per_s"] for r in rows if r["side"] == "hf_trainer" and "error" not in r), None)
    lines = [
        "| side | samples/s | tokens/s | step ms | peak GiB | MFU | warm-up s | loss first → last | vs hf_trainer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['side']} | failed: {r['error'][:120]} | | | | | | | |")
            continue
        ratio = f"{r['samples_per_s'] / base:.2f}×" if base else "n/a"
        lines.append(
            f"| {r['side']} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.0f} | "
            f"{r['peak_gib']:.1f} | {_percent(r['mfu'])} | {r['warmup_s']:.1f} | "
            f"{r['loss_first']:.3f} → {r['loss_last']:.3f} | {ratio} |"
        )
    lines.append("")
    for r in rows:
        if "error" not in r:
            lines.append(
                f"- {r['side']}: {r['notes']}; {r['trainable_params']:,} trainable parameters; "
                f"{r['model_tflops_per_s']:.1f} model TFLOP/s; median of {r['reps']} rep(s)"
            )
    return "\n".join(lines)


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%" if x >= 0.001 else f"{100 * x:.2g}%"


def gen_table(result: dict[str, Any]) -> str:
    """Markdown table of the generation methods."""
    lines = [
        "| method | batch | prompts | seconds | s / prompt | new tokens/s | speedup vs per-sample "
        "| vs HF generate | greedy outputs ≠ HF generate | first call s (untimed warm-up) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['batch']} | failed: {r['error'][:120]} | | | | | | | |")
            continue
        vs_hf = f"{r['vs_hf']:.2f}×" if "vs_hf" in r else ""
        lines.append(
            f"| {r['method']} | {r['batch']} | {r['prompts']} | {r['seconds']:.2f} | "
            f"{r['seconds_per_prompt']:.3f} | {r['new_tokens_per_s']:.1f} | {r['speedup']:.2f}× | {vs_hf} | "
            f"{r['differ']}/{r['total']} (common prefix {r['mean_common_prefix']:.1f}) | {r['first_call_s']:.2f} |"
        )
    losses = result.get("adapter_losses") or []
    trained = (
        f"LoRA trained {len(losses)} steps first (loss {losses[0]:.3f} -> {losses[-1]:.3f})"
        if losses
        else "untrained LoRA (random weights: near-tied logits)"
    )
    lines.append("")
    lines.append(
        f"{result['prompts']} prompts x {result['new_tokens']} new tokens; {trained}; peak memory "
        f"{result['peak_gib']:.1f} GiB. The per-sample loop is timed on its first prompts and compared "
        "per prompt; 'vs HF generate' compares the same batches of the same size. 'first call' is the "
        "warm-up run on the first batch (compilation for the static cache on CUDA); 'seconds' covers every "
        "batch afterwards. Greedy outputs are compared token by token with HF generate on the same batches "
        "(the per-sample row: with HF generate at the largest batch)."
    )
    return "\n".join(lines)


def environment_lines(info: dict[str, Any], counts: dict[str, Any] | None) -> list[str]:
    """Device, versions and model size lines for the report."""
    versions = ", ".join(
        f"{k} {info[k]}" for k in ("torch", "cuda", "transformers", "peft", "lightning", "trl") if info.get(k)
    )
    out = [f"- device: {info.get('device_name', '?')}; python {info.get('python', '?')}; {versions}"]
    if counts:
        from vlm_lightning.models.real_configs import ParamCounts

        out.append(f"- model (random weights): {ParamCounts(**counts).summary()}")
    return out


def setup_line(args: argparse.Namespace, meta: dict[str, Any]) -> str:
    """One line describing the workload."""
    if args.gen:
        return (
            f"- workload: {args.gen_prompts} prompts (one {args.image_size[0]}-{args.image_size[1]} px image "
            f"each) x {args.gen_tokens} greedy new tokens (min_new_tokens = max_new_tokens), {args.dtype}, "
            f"LoRA-wrapped model in eval mode, batch sizes {args.gen_batch}"
        )
    pool = meta.get("pool", {})
    return (
        f"- workload: batch {args.batch_size}, one {args.image_size[0]}-{args.image_size[1]} px image per sample, "
        f"~{args.prompt_tokens}-token prompt, {args.answer_tokens[0]}-{args.answer_tokens[1]}-token JSON answers "
        f"(loss on the answer only); per batch ~{pool.get('tokens_per_batch', 0):,.0f} tokens "
        f"({pool.get('image_tokens_per_batch', 0):,.0f} image tokens, {pool.get('labelled_per_batch', 0):,.0f} "
        f"labelled), {pool.get('batches', '?')} distinct batches cycled; LoRA r={args.lora_r} alpha={args.lora_alpha} "
        f"dropout={args.lora_dropout} on every LM linear layer; {args.dtype}; {args.warmup} warm-up + "
        f"{args.steps} timed steps; median of {args.reps} rep(s), sides interleaved, one process each"
    )


def report(args: argparse.Namespace, meta: dict[str, Any], results: list[dict[str, Any]], body: str) -> str:
    """The markdown report: title, environment, command, table, formula."""
    ok = next((r for r in results if "error" not in r), {})
    mode = "generation" if args.gen else "LoRA training"
    title = f"### {args.family}{' (tiny replica)' if args.tiny else ''}: {mode} throughput"
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "scripts/benchmark.py", *sys.argv[1:]])
    lines = [
        title,
        "",
        f"- date: {when}",
        *environment_lines(ok.get("info", {}), ok.get("counts")),
        f"- command: `{command}`",
        setup_line(args, meta),
        "",
        body,
        "",
    ]
    if not args.gen:
        peak = ok.get("peak_tflops")
        lines += [
            f"Peak used for MFU: {peak} TFLOP/s (dense bf16){' (CPU placeholder)' if args.device == 'cpu' else ''}."
            " Peak GiB = torch.cuda.max_memory_allocated (CPU: process max RSS).",
            "",
            FLOPS_FORMULA,
            "",
        ]
    return "\n".join(lines)


def parent_main(args: argparse.Namespace) -> int:
    """Prepare the shared data, run every side in its own process, print and save the report."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        raise SystemExit("torchvision is required: the Qwen2-VL and LFM2-VL image processors use it")
    workdir = Path(tempfile.mkdtemp(prefix="vlm-bench-"))
    print(
        f"[bench] {args.family}{' tiny' if args.tiny else ''} on {args.device} ({args.dtype}); workdir {workdir}"
    )
    failed = True
    try:
        meta = prepare_workdir(args, workdir)
        if args.gen:
            results = [run_side_process("gen", workdir, 0, args.timeout)]
            body = (
                gen_table(results[0])
                if "error" not in results[0]
                else f"generation failed: {results[0]['error']}"
            )
            failed = "error" in results[0]
        else:
            sides = resolve_sides(args)
            print(f"[bench] sides {sides} x {args.reps} rep(s), interleaved")
            results = [
                run_side_process(side, workdir, rep, args.timeout)
                for rep, side in interleaved(sides, args.reps)
            ]
            rows = [median_row(side, results) for side in sides]
            body = training_table(rows) + "\n\n" + loss_parity_table(results, sides)
            failed = any("error" in r for r in rows)
        text = report(args, meta, results, body)
        print("\n" + text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as fh:
                fh.write("\n" + text + "\n")
            print(f"[bench] report appended to {args.out}")
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        return 1 if failed else 0
    finally:
        if args.keep_workdir or failed:
            print(f"[bench] work directory kept (logs in {workdir / 'logs'})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parent (no ``--side``) or child (``--side X``)."""
    args = parse_args(argv)
    if args.side:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
