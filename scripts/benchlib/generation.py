"""The ``--gen`` benchmark: greedy generation with a per-sample loop, HF ``generate`` and ours.

Trains the LoRA a few steps first, then times each method on the same prompt batches (ours with the LoRA
merged, with a static cache, and with the adapters unmerged) and compares their tokens with HF
``generate``'s.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchlib.context import (
    Context,
    build_base_model,
    lm_linear_regex,
    lora_settings,
    peak_gib,
    reset_peak,
    sync,
    to_device,
)
from benchlib.ours_sides import ours_step
from benchlib.workload import load_processor


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
