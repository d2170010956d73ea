"""What a side process loads and measures with.

The child ``Context`` read from the shared work directory (arguments, metadata, device, dtype, family
facts, batches), runtime information, the random-weight model and its LoRA configuration, and the timing
helpers: device synchronisation, peak memory, ``StepTimer``, the JSON result of a training side and moving
batches to the device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib.workload import batch_stats, peak_tflops, train_flops


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

    from vlm_lightning.replicas.real_size import family_facts

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
    from vlm_lightning.replicas.real_size import build_model, parameter_counts

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


def weights_folder(ctx: Context) -> Path:
    """A model folder with the random weights of ``build_base_model`` (the seed every side uses), saved once.

    Written with ``save_pretrained`` (weights, config and the processor, as ``scripts/ddp_scaling.py`` does)
    by the first side that needs it and reused by the others and later reps: ``ours*``, ``lightning`` and
    ``fit`` load it through the package's one model build (``vlm_lightning.models.build``), as training
    does, and start from the same weights as ``hf_trainer`` / ``trl``. ``counts.json`` keeps the parameter
    counts for sides that never hold the model in this process (``fit``).
    """
    import shutil

    import torch
    from transformers import AutoProcessor

    out = ctx.workdir / "weights"
    if (out / "counts.json").is_file():
        return out
    start = time.perf_counter()
    model, counts = build_base_model(ctx)
    partial = ctx.workdir / "weights.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    AutoProcessor.from_pretrained(ctx.folder).save_pretrained(partial)
    del model
    if ctx.is_cuda:
        torch.cuda.empty_cache()
    (partial / "counts.json").write_text(json.dumps(counts))
    partial.rename(out)  # complete or absent: a side killed while saving leaves only weights.partial
    print(f"[bench] random weights saved to {out} in {time.perf_counter() - start:.1f}s", flush=True)
    return out


def folder_counts(folder: Path) -> dict[str, Any]:
    """The parameter counts ``weights_folder`` saved."""
    return json.loads((folder / "counts.json").read_text())


def lm_target_regex(ctx: Context) -> str:
    """``lm_linear_regex`` of the folder's architecture, read from a meta-device copy (no weights, instant).

    Sides that build through ``vlm_lightning.models.build`` need the LoRA targets before the model exists.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(load_config(ctx.folder, use_cache=False))
    return lm_linear_regex(model, ctx.facts)


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
    """The window of the timed steps (steps ``warmup`` .. ``total - 1``), synchronised at its two ends only.

    The device is synchronised before the first timed step and after the last one, never in between: a
    side whose loop lets the host run ahead of the GPU (no per-step sync) keeps that overlap, and one that
    syncs every step (HF Trainer's NaN check of the loss) pays for it, as in real training. Per-step times
    are host times between those two syncs.
    """

    def __init__(self, device: Any, warmup: int, total: int) -> None:
        if total <= warmup:
            raise ValueError(f"StepTimer needs more steps ({total}) than warm-up steps ({warmup})")
        self.device = device
        self.warmup = warmup
        self.total = total
        self.step_times: list[float] = []
        self.window_start: float | None = None
        self.window_end: float | None = None
        self.first_start: float | None = None  # start of step 0: warm-up (compilation) time is visible
        self.closed = False  # the last step ended with a sync: the window is complete
        self._t0 = 0.0

    def begin(self, step: int) -> None:
        """Call right before step ``step`` starts."""
        if self.first_start is None:
            self.first_start = time.perf_counter()
        if step < self.warmup:
            return
        if step == self.warmup:
            sync(self.device)
        self._t0 = time.perf_counter()
        if self.window_start is None:
            self.window_start = self._t0

    def end(self, step: int) -> None:
        """Call right after step ``step`` finished (optimizer step included)."""
        if step < self.warmup:
            return
        if step == self.total - 1:
            sync(self.device)
            self.closed = True
        now = time.perf_counter()
        self.step_times.append(now - self._t0)
        self.window_end = now

    @property
    def window(self) -> float:
        """Seconds from the start of the first timed step to the end of the last."""
        if self.window_start is None or self.window_end is None:
            raise RuntimeError("no timed step ran")
        if not self.closed:  # the GPU may still have been working: the window would be too short
            raise RuntimeError(f"the timed window did not end at step {self.total - 1} with a sync")
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
        "step_ms": 1000 * window / len(timer.step_times),
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
