"""scripts/benchmark.py --tiny end to end: every side runs in its own process and reports sane numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_tiny_training_reports_every_side(tmp_path: Path) -> None:
    out = run_benchmark("--tiny", "--json-out", str(tmp_path / "train.json"))
    rows = table_rows(out, "| side |")
    expected = ["hf_trainer", "ours"] + (["trl"] if importlib.util.find_spec("trl") else [])
    assert sorted(rows) == sorted(expected), rows
    for side, cells in rows.items():
        assert not cells[1].startswith("failed"), f"{side}: {cells}"
        # samples/s, tokens/s, step ms, peak GiB, MFU, warm-up s, loss first -> last, ratio vs hf_trainer
        columns = ("samples/s", "tokens/s", "step ms", "peak GiB", "MFU", "warm-up s", "loss", "ratio")
        for column, cell in zip(columns, cells[1:]):
            if column == "warm-up s":
                assert numbers(cell) and numbers(cell)[0] >= 0, f"{side} {column}: {cell!r}"
            else:
                assert_positive(cell, f"{side} {column}")
    assert "MFU = model FLOPs" in out and "device: CPU" in out
    parity = table_rows(out, "| side | steps |")
    assert "ours" in parity and int(parity["ours"][1]) > 0  # per-step losses compared on the same batches

    results = {r["side"]: r for r in json.loads((tmp_path / "train.json").read_text())["results"]}
    hf, ours = results["hf_trainer"], results["ours"]
    # same random weights, same first batch, same LoRA: the sides train the same model
    assert hf["trainable_params"] == ours["trainable_params"] > 0
    assert hf["loss_first"] == pytest.approx(ours["loss_first"], abs=1e-2)
    assert hf["counts"] == ours["counts"] and ours["counts"]["lm_non_embedding"] > 0


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
