"""The ``fit`` side: the real ``python -m vlm_lightning fit`` in a subprocess, data loading included.

It trains on the same samples as the other sides (written by the parent as images + JSONL rows in the
project's data format, ``workload.write_samples``), from the same random weights (``weights_folder``,
saved with ``save_pretrained``), with the CLI's defaults plus the benchmark's settings: batch size,
steps, LoRA, ``max_length``, precision / dtype, attention and gradient clipping. Validation and
checkpointing are off so that they do not land in the timed window, and the progress bar is off (no
terminal). The package's ``Throughput`` callback (``vlm_lightning.callbacks.throughput``) times the
optimizer steps after ``--warmup``, synchronised at both ends, with the batches' loading in between.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.constants import FIT_LEVER_FLAGS
from benchlib.context import Context, folder_counts, lm_target_regex, weights_folder
from benchlib.workload import batch_stats, peak_tflops, train_flops

THROUGHPUT_LINE = "[vlm_lightning] throughput:"
DEFAULT_LR = 2e-4  # VLMFineTuner's default AdamW learning rate (weight decay 0)


def packed_rows(ctx: Context) -> int:
    """Rows per ``fit_packed`` step: the shared batches' mean real tokens over ``--packed-row-tokens``.

    So that a packed step holds about the tokens (and samples) of an unpacked ``--batch-size`` step.
    """
    stats = [batch_stats(b, ctx.meta["image_token_id"]) for b in ctx.warmup_batches + ctx.timed_batches]
    mean_tokens = sum(s.tokens for s in stats) / max(1, len(stats))
    return max(1, round(mean_tokens / ctx.args.packed_row_tokens))


def fit_command(
    ctx: Context,
    model: Path,
    train: Path,
    root: Path,
    packed_rows: int | None = None,
    lever_flags: list[str] | None = None,
) -> list[str]:
    """The ``fit`` command line: defaults + the benchmark's settings + the ``Throughput`` callback.

    ``packed_rows``: the ``fit_packed`` side, ``data.packing`` with that many rows of
    ``--packed-row-tokens`` tokens per step instead of ``--batch-size`` padded samples.
    ``lever_flags``: a lever side's flags (``FIT_LEVER_FLAGS``), before ``--fit-args``.
    """
    args = ctx.args
    command = [
        sys.executable,
        "-m",
        "vlm_lightning",
        "fit",
        "--model.name_or_path",
        str(model),
        "--model.lora.r",
        str(args.lora_r),
        "--model.lora.alpha",
        str(args.lora_alpha),
        "--model.lora.dropout",
        str(args.lora_dropout),
        "--model.lora.targets",
        lm_target_regex(ctx),  # every LM linear layer, as the other sides
        "--model.dtype",
        "bfloat16" if ctx.bf16 else "float32",
        "--model.attn_implementation",
        args.attn,
        "--data.train",
        str(train),
        "--data.batch_size",
        str(args.batch_size),
        "--data.max_length",
        str(args.max_length),
        "--trainer.accelerator",
        "gpu" if ctx.is_cuda else "cpu",
        "--trainer.devices",
        "1",
        "--trainer.precision",
        "bf16-mixed" if ctx.bf16 else "32-true",
        "--trainer.max_steps",
        str(args.warmup + args.steps),
        "--trainer.gradient_clip_val",
        str(args.max_grad_norm),
        "--trainer.limit_val_batches",
        "0",
        "--checkpoint.every_n_train_steps",
        str(10**9),  # no step or epoch-end checkpoint inside the timed window
        "--checkpoint.save_last",
        "false",  # nor last.ckpt when fit ends
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(root),
        "--seed_everything",
        str(args.seed),
        "--trainer.callbacks+=vlm_lightning.callbacks.throughput.Throughput",
        f"--trainer.callbacks.warmup_steps={args.warmup}",
    ]
    if packed_rows is not None:
        command += ["--data.packing", "true", "--data.max_tokens_per_row", str(args.packed_row_tokens)]
        command += ["--data.batch_size", str(packed_rows)]
    if args.lr != DEFAULT_LR:
        command += ["--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", str(args.lr)]
        command += ["--model.optimizer.weight_decay", "0"]
    return command + (lever_flags or []) + shlex.split(args.fit_args or "")


def logged_losses(root: Path) -> list[float]:
    """``train/loss`` values of the run's ``metrics.csv`` (every ``log_every_n_steps``), in step order."""
    losses = []
    for path in sorted(root.glob("version_*/metrics.csv")):
        with path.open() as fh:
            losses += [float(row["train/loss"]) for row in csv.DictReader(fh) if row.get("train/loss")]
    return losses


def run_fit(ctx: Context, side: str = "fit") -> dict[str, Any]:
    """Run ``fit`` (or ``fit_packed``) once; report its steady-state throughput as a training-table row."""
    started = time.perf_counter()
    if "fit_data" not in ctx.meta:
        raise RuntimeError("no fit data in the work directory (the parent writes it when fit is a side)")
    model = weights_folder(ctx)
    counts = folder_counts(model)
    root = ctx.workdir / f"{side}-{ctx.args.rep}"
    root.mkdir(parents=True, exist_ok=True)
    rows = packed_rows(ctx) if side == "fit_packed" else None
    flags = FIT_LEVER_FLAGS.get(side)
    command = fit_command(ctx, model, Path(ctx.meta["fit_data"]), root, packed_rows=rows, lever_flags=flags)
    (root / "command.txt").write_text(shlex.join(command) + "\n")
    print(f"[bench] {side}: {shlex.join(command[1:])}", flush=True)
    # killed before the parent's own limit kills this process (which would leave the CLI running)
    budget = max(30.0, ctx.args.timeout - (time.perf_counter() - started) - 30)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli_start = time.perf_counter()
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=budget, env=env, cwd=root, check=False
    )
    cli_s = time.perf_counter() - cli_start
    (root / "fit.log").write_text(proc.stdout + "\n----- stderr -----\n" + proc.stderr)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"{side} exited with {proc.returncode} (log: {root / 'fit.log'})")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(THROUGHPUT_LINE)]
    if not lines:
        raise RuntimeError(f"fit printed no throughput line (log: {root / 'fit.log'})")
    measured = json.loads(lines[-1][len(THROUGHPUT_LINE) :])
    if measured["timed_optimizer_steps"] != ctx.args.steps:
        raise RuntimeError(f"fit timed {measured['timed_optimizer_steps']} steps, expected {ctx.args.steps}")
    trainable = next(
        (
            int(line.split("trainable params:")[1].split("||")[0].replace(",", ""))
            for line in proc.stdout.splitlines()
            if line.startswith("[vlm_lightning]") and "trainable params:" in line
        ),
        0,
    )
    seconds = measured["seconds"]
    # fit draws its own (shuffled, length-grouped on CUDA) batches from the same samples: its model FLOPs
    # are estimated from its tokens/s and the FLOPs per token of the shared batches
    stats = [batch_stats(b, ctx.meta["image_token_id"]) for b in ctx.warmup_batches + ctx.timed_batches]
    flops_per_token = sum(train_flops(s, counts) for s in stats) / max(1, sum(s.tokens for s in stats))
    peak = peak_tflops(ctx.info["device_name"], ctx.args.peak_tflops, ctx.device.type)
    flops_per_s = flops_per_token * measured["tokens_per_s"]
    memory = measured.get("peak_gib_per_device") or measured.get("peak_rss_gib_per_process") or [math.nan]
    losses = logged_losses(root)
    return {
        "side": side,
        "rep": ctx.args.rep,
        "samples_per_s": measured["samples_per_s"],
        "tokens_per_s": measured["tokens_per_s"],
        "step_ms": 1000 * seconds / measured["timed_optimizer_steps"],
        "window_s": seconds,
        "peak_gib": max(memory),
        "model_tflops_per_s": flops_per_s / 1e12,
        "mfu": flops_per_s / (peak * 1e12),
        "peak_tflops": peak,
        "warmup_s": cli_s - seconds,  # the whole CLI run before and after the timed window
        "loss_first": losses[0] if losses else math.nan,
        "loss_last": losses[-1] if losses else math.nan,
        "logged_losses": losses,
        "trainable_params": trainable,
        "counts": counts,
        "info": ctx.info,
        "throughput": measured,
        "notes": (
            (f"packed: {rows} row(s) x {ctx.args.packed_row_tokens} tokens per step; " if rows else "")
            + "python -m vlm_lightning fit (CLI defaults + the benchmark's settings; data loaded from "
            f"{ctx.meta['fit_data']}); Throughput callback after {ctx.args.warmup} warm-up steps; MFU from "
            "tokens/s x the shared batches' FLOPs per token; warm-up s = the whole CLI run outside the timed "
            "window (start, data checks, model load, warm-up steps); loss: logged train/loss"
        ),
    }
