"""The parent's aggregation and markdown report.

The median over the reps of each training side, the per-step loss parity table, the training and
generation tables, the environment and workload lines, and the whole report with its title, command and
FLOPs formula.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import shlex
import statistics
import sys
from typing import Any

from benchlib.constants import FLOPS_FORMULA


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


def headline(rows: list[dict[str, Any]]) -> str:
    """The report's headline: the real ``fit`` CLI vs ``hf_trainer`` in this run (empty without both)."""
    by_side = {r["side"]: r for r in rows if "error" not in r}
    if "hf_trainer" not in by_side:
        return ""
    hf = by_side["hf_trainer"]
    lines = []
    for side, what in (
        ("fit", "fit"),
        ("fit_packed", "fit --data.packing true"),
        ("fit_unfused", "fit --model.fuse_adapter_inputs false"),
        ("fit_eager_vision", "fit --model.compile_vision_tower false"),
        ("fit_library_inputs", "fit --model.host_built_inputs false"),
    ):
        if side in by_side:
            fit = by_side[side]
            lines.append(
                f"**Headline: `python -m vlm_lightning {what}` vs HF Trainer: "
                f"{fit['samples_per_s'] / hf['samples_per_s']:.2f}× samples/s** ({fit['samples_per_s']:.2f} vs "
                f"{hf['samples_per_s']:.2f}; data loading included on the fit side, pre-collated batches on the "
                "HF side; same samples, same weights, same run)\n\n"
            )
    return "".join(lines)


def _losses(r: dict[str, Any]) -> str:
    first, last = r.get("loss_first", math.nan), r.get("loss_last", math.nan)
    if math.isnan(first) or math.isnan(last):
        return "n/a"
    return f"{first:.3f} → {last:.3f}"


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
            f"{r['peak_gib']:.2f} | {_percent(r['mfu'])} | {r['warmup_s']:.1f} | "
            f"{_losses(r)} | {ratio} |"
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
        from vlm_lightning.replicas.real_size import ParamCounts

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
    fresh = pool.get("batches", 0) >= args.warmup + args.steps
    cycled = " (every step a new batch)" if fresh else " cycled over the steps"
    return (
        f"- workload: batch {args.batch_size}, one {args.image_size[0]}-{args.image_size[1]} px image per sample, "
        f"~{args.prompt_tokens}-token prompt, {args.answer_tokens[0]}-{args.answer_tokens[1]}-token JSON answers "
        f"(loss on the answer only); per batch ~{pool.get('tokens_per_batch', 0):,.0f} tokens "
        f"({pool.get('image_tokens_per_batch', 0):,.0f} image tokens, {pool.get('labelled_per_batch', 0):,.0f} "
        f"labelled), {pool.get('batches', '?')} distinct batches{cycled}; LoRA r={args.lora_r} alpha={args.lora_alpha} "
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
