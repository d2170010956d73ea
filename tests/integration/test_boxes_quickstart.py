"""configs/boxes_quickstart.yaml: a short fit, then ``compare`` shows the image-dependent gain.

The untrained replica answers "what colour is the box" no better than chance (0.25 at most, in practice
~0: it does not even write a colour); the fine-tuned one reads the image. Steps and paths are overridden to
keep the test short; the rest (LoRA r8 on the language model, frozen random vision tower, lr 3e-3 constant,
16 image tokens) is the shipped config.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlm_lightning.data.synthetic.visual import write_boxes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "boxes_quickstart.yaml"
SIZES = ((64, 64), (96, 64), (64, 96))


def test_fit_then_compare_shows_the_gain(tiny_replica, tmp_path: Path) -> None:  # noqa: ANN001
    replica = str(tiny_replica("qwen2_vl"))
    paths = write_boxes(
        tmp_path / "boxes",
        200,
        seed=0,
        split={"train": 0.8, "val": 0.04, "test": 0.16},
        sizes=SIZES,
        vary_question=True,
    )
    overrides = [
        "--model.name_or_path", replica,
        "--data.train", str(paths["train"]),
        "--data.val", str(paths["val"]),
        "--data.test", str(paths["test"]),
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    fit = subprocess.run(
        [sys.executable, "-m", "vlm_lightning", "fit", "--config", str(CONFIG), *overrides,
         "--trainer.max_steps", "250", "--trainer.val_check_interval", "250"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-4000:]
    prefix = "[vlm_lightning] best checkpoint:"
    best = next(line[len(prefix) :].strip() for line in fit.stdout.splitlines() if line.startswith(prefix))
    out = tmp_path / "comparison.md"
    compare = subprocess.run(
        [sys.executable, "-m", "vlm_lightning", "compare", "--config", str(CONFIG), "--ckpt_path", best,
         "--out", str(out), "--", *overrides],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert compare.returncode == 0, compare.stderr[-4000:]
    row = next(line for line in out.read_text().splitlines() if line.startswith("| exact_match |"))
    baseline, tuned = (float(cell) for cell in row.strip("|").split("|")[1:3])
    print(f"\n[boxes-quickstart] exact_match untrained {baseline:.3f} -> fine-tuned {tuned:.3f}")
    assert baseline <= 0.3, row
    assert tuned >= 0.8 and tuned - baseline >= 0.5, row
