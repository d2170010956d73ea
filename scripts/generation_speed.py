"""``test`` generation speed through the real CLI: the default decoding path vs plain HF ``generate``.

Runs ``python -m vlm_lightning test`` once per variant (``--repeat`` times), each in its own process with its
own compiler cache (cold on a variant's first run, that variant's own on later ones), with a fit run's
``config.yaml`` and checkpoint on the first ``--prompts`` rows of ``--test`` (same batches for every variant),
and reads the per-prompt latencies that ``test`` writes to ``predictions.jsonl`` (each row: its batch's
``generate`` time / batch size). Reported per variant: the generation seconds of all batches, of the first
batch (where the static cache's decoding step compiles) and of the others, and how many predictions differ
from plain HF ``generate``'s.

Variants: the default (``generation_cache: auto`` = static cache on CUDA, LoRA merged while generating), the
same with the decoder / vision layers not compiled, merged + dynamic cache (the default before), dynamic cache
with adapters unmerged (compiled layers), plain HF ``generate`` (dynamic cache, adapters unmerged, eager
layers: what ``model.generate`` gives without this trainer), and the static cache with each decoding-step
compiler (``--model.generation_compiler cudagraphs`` / ``inductor``).

    python scripts/generation_speed.py --run RUN/version_0 --test data.jsonl --prompts 64 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

EAGER_LAYERS = ["--model.compile_language_model", "false", "--model.compile_vision_tower", "false"]
PLAIN = ["--model.generation_cache", "dynamic", "--model.merge_lora_for_generation", "false"]
VARIANTS: dict[str, list[str]] = {
    "default (static cache, LoRA merged)": [],
    "static cache, LoRA merged, layers not compiled": EAGER_LAYERS,
    "LoRA merged, dynamic cache": ["--model.generation_cache", "dynamic"],
    "dynamic cache, adapters unmerged, compiled layers": PLAIN,
    "plain HF generate (dynamic cache, adapters unmerged, layers not compiled)": PLAIN + EAGER_LAYERS,
    "static cache, LoRA merged, decoding step as CUDA graphs of eager kernels": [
        "--model.generation_compiler",
        "cudagraphs",
    ],
    "static cache, LoRA merged, decoding step by inductor": ["--model.generation_compiler", "inductor"],
}
REFERENCE = "plain HF generate (dynamic cache, adapters unmerged, layers not compiled)"


def variant_numbers(text: str) -> list[int]:
    """``--variants``: comma-separated numbers of ``VARIANTS`` entries."""
    try:
        chosen = [int(part) for part in text.split(",")]
    except ValueError:
        chosen = []
    if not chosen or any(not 0 <= i < len(VARIANTS) for i in chosen):
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers from 0 to {len(VARIANTS) - 1}, e.g. 0,1")
    return chosen


def positive_int(text: str) -> int:
    """``--repeat``: at least one run per variant."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--run", type=Path, required=True, help="a fit run folder with config.yaml and the checkpoint"
    )
    p.add_argument("--ckpt", default="last.ckpt", help="checkpoint file name inside --run")
    p.add_argument("--test", type=Path, required=True, help="JSONL rows to generate for")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, help="model.generate_max_new_tokens (default: the run's)")
    p.add_argument("--workdir", type=Path, default=Path("runs/generation_speed"))
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    p.add_argument(
        "--variants",
        type=variant_numbers,
        help="comma list of variant numbers (default: all; plain HF generate always runs): "
        + "; ".join(f"{i} = {name}" for i, name in enumerate(VARIANTS)),
    )
    p.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        help="runs per variant, each in its own process; every variant has its own compiler cache, so the "
        "first run compiles cold (as a new machine does) and later runs read that variant's cache",
    )
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI flags for every variant")
    return p.parse_args(argv)


def test_command(args: argparse.Namespace, name: str, root: Path) -> list[str]:
    """The ``test`` command line of one variant."""
    batches = -(-args.prompts // args.batch_size)
    command = [
        sys.executable, "-m", "vlm_lightning", "test",
        "--config", str(args.run / "config.yaml"),
        "--ckpt_path", str(args.run / args.ckpt),
        "--data.test", str(args.test),
        "--data.batch_size", str(args.batch_size),
        "--trainer.limit_test_batches", str(batches),
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root),
    ]  # fmt: skip
    if args.max_new_tokens:
        command += ["--model.generate_max_new_tokens", str(args.max_new_tokens)]
    return command + VARIANTS[name] + list(args.extra)


def batch_seconds(rows: list[dict], batch_size: int) -> list[float]:
    """Each consecutive batch's generation seconds (test batches are unshuffled, in input order)."""
    return [
        sum(row["latency_ms"] for row in rows[i : i + batch_size]) / 1000
        for i in range(0, len(rows), batch_size)
    ]


def compiler_cache_env(cache: Path) -> dict[str, str]:
    """The environment of a variant's process: inductor's and Triton's caches in the variant's own folder.

    A shared cache makes the order of the variants matter (a later variant reads the kernels an earlier one
    compiled for the same decoding graph), so every variant starts cold and its repeats read its own cache.
    """
    return {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
    }


def run_variant(args: argparse.Namespace, name: str, index: int, repeat: int = 0) -> dict:
    """Run one variant's ``test`` in its own process; its timings and predictions."""
    root = args.workdir / f"variant-{index}-run-{repeat}"
    command = test_command(args, name, root)
    cache = "cold" if repeat == 0 else "warm"
    print(f"[generation_speed] {name}, {cache} compiler cache: {' '.join(command[1:])}", flush=True)
    env = compiler_cache_env(args.workdir / f"variant-{index}-cache")
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - start
    root.mkdir(parents=True, exist_ok=True)
    (root / "test.log").write_text(proc.stdout + "\n----- stderr -----\n" + proc.stderr)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{name}: test exited with {proc.returncode} (log: {root / 'test.log'})")
    (predictions,) = sorted(root.glob("**/predictions.jsonl"))
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    seconds = batch_seconds(rows, args.batch_size)
    return {
        "name": name,
        "cache": cache,
        "prompts": len(rows),
        "total_s": sum(seconds),
        "first_s": seconds[0],
        "rest_s": sum(seconds[1:]),
        "wall_s": wall,
        "predictions": [row["prediction"] for row in rows],
    }


def table(results: list[dict], batch_size: int) -> str:
    """The markdown table; ratios against plain HF generate."""
    references = {r["cache"]: r for r in results if r["name"] == REFERENCE}
    lines = [
        f"| variant | compiler cache | prompts (batch {batch_size}) | generation s, all batches | first batch s "
        "| other batches s | vs HF generate (all) | vs HF generate (after the first batch) | predictions != HF generate | process wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        reference = references[r["cache"]]  # plain HF generate in the same cache state
        differ = sum(a != b for a, b in zip(r["predictions"], reference["predictions"], strict=True))
        rest = reference["rest_s"] / r["rest_s"] if r["rest_s"] else float("nan")
        lines.append(
            f"| {r['name']} | {r['cache']} | {r['prompts']} | {r['total_s']:.2f} | "
            f"{r['first_s']:.2f} | {r['rest_s']:.2f} | "
            f"{reference['total_s'] / r['total_s']:.2f}x | {rest:.2f}x | {differ}/{r['prompts']} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(VARIANTS)
    chosen = args.variants or list(range(len(names)))
    if names.index(REFERENCE) not in chosen:
        chosen = [*chosen, names.index(REFERENCE)]  # the ratios need it
    results = [run_variant(args, names[i], i, r) for r in range(args.repeat) for i in chosen]
    report = table(results, args.batch_size)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
