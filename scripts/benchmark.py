"""Training and generation throughput: HF Trainer (+ TRL) vs vlm_lightning, on real-size VLMs with random weights.

The architecture is built from its published config (``vlm_lightning.replicas.real_size``) with random
weights on the device; synthetic receipt-like batches (one 448-512 px image per sample, a ~40-token
prompt, a 60-340-token JSON answer, loss on the answer only) are collated once by the real
``ChatCollator`` and shared by every side, one batch per step (``--distinct-batches`` defaults to warm-up
+ steps: no timed step sees a batch twice, as in a real run). Each side runs in its own process (this script with
``--side X``), sides interleaved over ``--reps``, median reported:

* ``hf_trainer``: ``transformers.Trainer`` + PEFT LoRA on the same pre-collated batches (bf16 autocast,
  no gradient checkpointing, full-vocabulary logits at every position as HF computes them).
* ``trl``: TRL ``SFTTrainer`` with its defaults (gradient checkpointing on), when ``import trl`` works.
* ``fit``: the real ``python -m vlm_lightning fit`` in a subprocess, on the same samples written as images +
  JSONL rows (data loading, collation and the CLI's default callbacks included), with the CLI's defaults plus
  the benchmark's batch size, steps, LoRA, max_length, precision and clipping; validation and checkpoints
  off; timed by the package's ``Throughput`` callback after ``--warmup``. The headline is fit vs hf_trainer.
* ``ours``: what ``VLMFineTuner`` does per step under ``bf16-mixed`` with ``compile_language_model``, on the
  model ``VLMFineTuner`` itself builds (``models.build``) and prepares (``configure_model``) from the saved
  random weights: LoRA, frozen vision tower without autograd, ``causal_lm_loss`` (the frozen
  lm_head and the cross-entropy fused in chunks over the labelled tokens only), fused AdamW, bf16 weights + fp32 LoRA under bf16 autocast without PEFT's input
  casts, decoder layers and vision encoder layers compiled one by one (``compile_vision_tower``),
  batches padded to a multiple of ``--pad-to`` and pinned as the trainer's DataLoader pins them.
* lever sides, each one lever away from ``ours`` or from ``ours_plain`` (see ``OURS_VARIANTS``):
  ``ours_plain`` (no compile, PEFT's casts: the previous path), ``ours_nocast`` (plain + no casts),
  ``ours_compile_only`` (plain + LM compile), ``ours_lm_only`` (ours without the vision compile),
  ``ours_nopad`` (ours with dynamic padding), ``ours_unfused`` (ours with lm_head logits at the labelled
  positions and a separate cross-entropy), ``ours_gc`` (ours + activation recomputation, to compare
  with TRL's defaults, which checkpoint), ``ours_gc_nopad`` (ours_gc with dynamic padding).
* ``lightning`` (``--lightning``): a real ``L.Trainer.fit`` of ``VLMFineTuner`` on the same batches.

``--gen`` benchmarks greedy generation instead, after training the LoRA ``--gen-train-steps`` steps (a
trained adapter makes confident greedy choices, as at evaluation time): a per-sample loop (timed on
``--gen-single-prompts`` prompts), plain HF ``generate`` on the collator's left-padded batches (adapters
unmerged), ours (``generate_batch``: LoRA merged into temporary linear layers) and static-cache variants
(compiled decoding on CUDA), each compared token by token with HF ``generate`` on the same batches.

    python scripts/benchmark.py --tiny                  # CPU, tiny replica, seconds (CI)
    python scripts/benchmark.py --family lfm2_vl_1_6b --sides hf_trainer,fit --reps 2   # the headline
    python scripts/benchmark.py --family qwen2_vl_2b --out docs/benchmarks.md
    python scripts/benchmark.py --family lfm2_vl_1_6b --gen
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchlib.constants import (
    FIT_LEVER_FLAGS,
    FIT_SIDES,
    OURS_VARIANTS,
    REAL_DEFAULTS,
    RESULT_PREFIX,
    TINY_DEFAULTS,
    TRAIN_SIDES,
)
from benchlib.context import load_context
from benchlib.fit_side import run_fit
from benchlib.generation import run_gen
from benchlib.ours_sides import run_lightning, run_ours
from benchlib.report import gen_table, headline, loss_parity_table, median_row, report, training_table
from benchlib.trainer_sides import run_trainer_side
from benchlib.workload import prepare_workdir

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))


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
    p.add_argument(
        "--distinct-batches",
        type=int,
        help="batches built, cycled over the steps (default: warm-up + steps, every step a new batch)",
    )
    p.add_argument("--pad-to", type=int, default=64, help="ours: pad sequence length to a multiple of this")
    p.add_argument("--max-length", type=int, default=8192)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument(
        "--lora-dropout", type=float, default=0.0, help="LoRA dropout, every side (0.0: the CLI default)"
    )
    p.add_argument("--sides", help=f"comma list from {','.join(TRAIN_SIDES)} (default: all available)")
    p.add_argument(
        "--levers",
        action="store_true",
        help="add every lever side (ours_*, fit_unfused, fit_eager_vision, fit_library_inputs)",
    )
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
    p.add_argument(
        "--fit-args",
        default="",
        help="fit sides: more CLI flags, one string, e.g. --fit-args='--data.num_workers 4'",
    )
    p.add_argument(
        "--packed-row-tokens",
        type=int,
        default=2048,
        help="fit_packed side: data.max_tokens_per_row; its rows per step hold about one batch's tokens",
    )
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
    if args.distinct_batches is None:  # as in a real run: no timed step sees a batch twice
        args.distinct_batches = args.warmup + args.steps
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
        sides = ["hf_trainer", "trl", "ours", *(s for s in FIT_SIDES if s not in FIT_LEVER_FLAGS)]
        sides += [s for s in OURS_VARIANTS if s != "ours"] + list(FIT_LEVER_FLAGS) if args.levers else []
        sides += ["lightning"] if args.lightning else []
    if "trl" in sides:
        try:
            importlib.import_module("trl")
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
            print(f"[bench] note: trl side skipped (import trl failed: {type(exc).__name__}: {exc})")
            sides.remove("trl")
    return sides


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
        elif args.side in FIT_SIDES:
            result = run_fit(ctx, args.side)
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
        sides = [] if args.gen else resolve_sides(args)
        meta = prepare_workdir(args, workdir, fit_data=any(side in FIT_SIDES for side in sides))
        if args.gen:
            results = [run_side_process("gen", workdir, 0, args.timeout)]
            body = (
                gen_table(results[0])
                if "error" not in results[0]
                else f"generation failed: {results[0]['error']}"
            )
            failed = "error" in results[0]
        else:
            if args.distinct_batches < args.warmup + args.steps:
                print(
                    f"[bench] note: --distinct-batches {args.distinct_batches} < {args.warmup} warm-up + "
                    f"{args.steps} steps: batches recur (a real run never repeats a batch within an epoch)"
                )
            print(f"[bench] sides {sides} x {args.reps} rep(s), interleaved")
            results = [
                run_side_process(side, workdir, rep, args.timeout)
                for rep, side in interleaved(sides, args.reps)
            ]
            rows = [median_row(side, results) for side in sides]
            body = headline(rows) + training_table(rows) + "\n\n" + loss_parity_table(results, sides)
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
