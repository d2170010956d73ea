"""scripts/benchmark.py --tiny end to end: every side runs in its own process and reports sane numbers.

The ``fit`` side runs the real CLI on the shared samples; the distinct-batches default covers every step.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "benchmark.py"


def run_benchmark(*args: str) -> str:
    """Run the script, fail with its output if it fails, return stdout."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env
    )
    assert proc.returncode == 0, (
        f"benchmark failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    )
    return proc.stdout


def table_rows(stdout: str, header_start: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose header starts with ``header_start``, keyed by 'first cell[/second]'."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0] if header_start.startswith("| side") else f"{cells[0]}/{cells[1]}"] = cells
    return rows


def numbers(cell: str) -> list[float]:
    """Every number in a table cell (thousands separators, %, × and arrows ignored)."""
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", cell.replace(",", ""))]


def assert_positive(cell: str, what: str) -> None:
    values = numbers(cell)
    assert values, f"{what}: no number in {cell!r}"
    assert all(math.isfinite(v) and v > 0 for v in values), f"{what}: {cell!r}"


def load_benchmark_script(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``scripts/benchmark.py`` as a module (its ``benchlib`` imports resolve from ``scripts/``)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv",
    [
        ["--tiny"],
        [],
        ["--tiny", "--warmup", "4", "--steps", "9"],
        ["--family", "lfm2_vl_1_6b", "--warmup", "3", "--steps", "70"],
    ],
)
def test_distinct_batches_default_gives_every_timed_step_a_new_batch(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    args = load_benchmark_script(monkeypatch).parse_args([*argv, "--device", "cpu"])
    assert args.distinct_batches >= args.warmup + args.steps, vars(args)


def test_tiny_training_reports_every_side(tmp_path: Path) -> None:
    out = run_benchmark("--tiny", "--json-out", str(tmp_path / "train.json"), "--keep-workdir")
    workdir = Path(re.search(r"workdir (\S+)", out).group(1))
    try:
        check_tiny_training(out, tmp_path / "train.json", workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def check_tiny_training(out: str, json_path: Path, workdir: Path) -> None:
    rows = table_rows(out, "| side |")
    expected = ["hf_trainer", "ours", "fit", "fit_packed"] + (
        ["trl"] if importlib.util.find_spec("trl") else []
    )
    assert sorted(rows) == sorted(expected), rows
    for side, cells in rows.items():
        assert not cells[1].startswith("failed"), f"{side}: {cells}"
        # samples/s, tokens/s, step ms, peak GiB, MFU, warm-up s, loss first -> last, ratio vs hf_trainer
        columns = ("samples/s", "tokens/s", "step ms", "peak GiB", "MFU", "warm-up s", "loss", "ratio")
        for column, cell in zip(columns, cells[1:]):
            if column == "warm-up s":
                assert numbers(cell) and numbers(cell)[0] >= 0, f"{side} {column}: {cell!r}"
            elif column == "loss" and side.startswith("fit"):  # logged every 10 steps: none in 5 steps
                assert cell == "n/a" or all(v > 0 for v in numbers(cell)), f"fit loss: {cell!r}"
            else:
                assert_positive(cell, f"{side} {column}")
    assert "MFU = model FLOPs" in out and "device: CPU" in out
    assert "**Headline: `python -m vlm_lightning fit` vs HF Trainer:" in out
    assert "**Headline: `python -m vlm_lightning fit --data.packing true` vs HF Trainer:" in out
    parity = table_rows(out, "| side | steps |")
    assert "ours" in parity and int(parity["ours"][1]) > 0  # per-step losses compared on the same batches

    report = json.loads(json_path.read_text())
    results = {r["side"]: r for r in report["results"]}
    hf, ours, fit = results["hf_trainer"], results["ours"], results["fit"]
    # same random weights, same first batch, same LoRA: the sides train the same model
    assert hf["trainable_params"] == ours["trainable_params"] == fit["trainable_params"] > 0
    assert hf["loss_first"] == pytest.approx(ours["loss_first"], abs=1e-2)
    assert hf["counts"] == ours["counts"] == fit["counts"] and ours["counts"]["lm_non_embedding"] > 0
    assert "VLMFineTuner" in ours["notes"]  # built and prepared by the package, as fit does

    # fit: the real CLI timed its 3 steps after the 2 warm-up steps, on the samples every side uses
    assert fit["samples_per_s"] > 0 and fit["tokens_per_s"] > 0
    assert fit["throughput"]["timed_optimizer_steps"] == 3
    # fit_packed: the same samples in packed rows (one row of 2,048 tokens holds a tiny batch's tokens)
    packed = results["fit_packed"]
    assert packed["throughput"]["timed_optimizer_steps"] == 3 and packed["samples_per_s"] > 0
    assert packed["trainable_params"] == fit["trainable_params"]
    command = (workdir / "fit_packed-0" / "command.txt").read_text()
    assert "--data.packing true --data.max_tokens_per_row 2048 --data.batch_size 1" in command, command
    assert "packed: 1 row(s) x 2048 tokens per step" in packed["notes"]
    meta = report["meta"]
    assert meta["pool"]["batches"] == 2 + 3  # default: every step a batch never seen before
    check_fit_data_is_the_shared_batches(workdir, meta)


def check_fit_data_is_the_shared_batches(workdir: Path, meta: dict[str, Any]) -> None:
    """The fit side's JSONL rows read back (project reader) and collated give the shared batches."""
    import torch

    from vlm_lightning.data.collator import ChatCollator
    from vlm_lightning.data.datamodule import RecordDataset
    from vlm_lightning.data.records import read_jsonl
    from vlm_lightning.models.loading import family_of, load_processor

    records, problems = read_jsonl(meta["fit_data"])
    assert not problems, problems
    pool = torch.load(workdir / "train_batches.pt", weights_only=False)
    assert [r.id for r in records] == [i for batch in pool for i in batch["ids"]]
    collator = ChatCollator(load_processor(meta["folder"]), family_of(meta["folder"]), max_length=8192)
    dataset = RecordDataset(records)
    size = len(pool[0]["ids"])
    for k, batch in enumerate(pool):
        again = collator([dataset[k * size + i] for i in range(size)])
        for key in ("input_ids", "attention_mask", "pixel_values"):
            assert torch.equal(again["inputs"][key], batch["inputs"][key]), (k, key)
        assert torch.equal(again["labels"], batch["labels"]), k


def test_tiny_generation_reports_every_method() -> None:
    out = run_benchmark("--tiny", "--gen")
    rows = table_rows(out, "| method |")
    merged = "ours (LoRA merged)"
    for key in (
        "per-sample loop/1",
        "HF generate/2",
        f"{merged}/2",
        "HF generate/4",
        f"{merged}/4",
        f"{merged} + static cache/4",
    ):
        assert key in rows, f"missing {key}: {sorted(rows)}"
        cells = rows[key]
        assert not cells[2].startswith("failed"), f"{key}: {cells}"
        for column, cell in zip(("seconds", "s / prompt", "new tokens/s", "speedup"), cells[3:7]):
            assert_positive(cell, f"{key} {column}")
        differ, total = (int(x) for x in re.match(r"(\d+)/(\d+)", cells[8]).groups())
        assert total == int(cells[2]) and 0 <= differ <= total
        if key != "per-sample loop/1":
            assert total == 4 and differ == 0, (
                f"{key}: fp32 on CPU must give HF generate's tokens ({cells[8]})"
            )
    assert "LoRA trained 2 steps first" in out
