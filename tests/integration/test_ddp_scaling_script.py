"""scripts/ddp_scaling.py --shrink on CPU: the real `fit` CLI runs, the report has one row per device count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_shrunken_scaling_run_reports_timed_steps_and_sizes_data_to_one_epoch(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    args = ["--shrink", "--devices", "1", "--steps", "4", "--warmup", "1", "--batch-size", "2", "--reps", "2"]
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "ddp_scaling.py"),
            *args,
            "--workdir",
            str(tmp_path),
            "--no-test",
            "--profile",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 2, proc.stdout[-3000:]  # the throughput row and the profile row of rank 0
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    profile = [c.strip() for c in rows[1].strip("|").split("|")]
    assert profile[1] == "0" and all(float(c) > 0 for c in profile[2:5])  # step, batch, next batch medians
    assert float(cells[1]) > 0 and cells[3] == "1.00x"
    assert cells[4] == "3"  # 4 steps, 1 of warm-up
    reps = [float(v) for v in cells[8].split(",")]  # both runs; the row shows the lower middle one
    assert len(reps) == 2 and float(cells[1]) == pytest.approx(min(reps), abs=0.051)
    assert (tmp_path / "runs_1_r0").is_dir() and (tmp_path / "runs_1_r1").is_dir()
    # (4 + 1) steps x batch 2 x 1 device / 0.9 train fraction, + 16: every timed step inside epoch 0
    train_rows = (tmp_path / "receipts_28" / "train.jsonl").read_text().splitlines()
    assert len(train_rows) >= 5 * 2 and all(json.loads(r) for r in train_rows)


def test_too_few_samples_for_the_timed_window_is_refused(tmp_path: Path) -> None:
    args = ["--shrink", "--devices", "1", "4", "--steps", "10", "--samples", "20", "--workdir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ddp_scaling.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "--samples 20 puts an epoch boundary inside the timed steps of the 4-GPU run" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_zero_reps_is_refused_before_any_work(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "ddp_scaling.py"),
            "--shrink",
            "--reps",
            "0",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "--reps must be at least 1" in proc.stderr
    assert not any(tmp_path.iterdir())  # no weights built, no data written


def test_ddp_options_without_a_value_are_refused(tmp_path: Path) -> None:
    args = ["--shrink", "--ddp-options", "static_graph", "--workdir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ddp_scaling.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "--ddp-options takes KEY=VALUE pairs, got 'static_graph'" in proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())  # refused before any work
