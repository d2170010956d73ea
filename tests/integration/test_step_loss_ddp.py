"""The training loss is the mean over the labelled tokens of an optimizer step, across accumulation and ranks.

One SGD step (the update is the gradient itself, so any weighting shows) on the same four receipts, whose answers
differ in length: one process with a batch of four, one process accumulating four batches of one, and two DDP
processes accumulating two batches of one each. All three updates must be equal (float32, 1e-5); with the
per-micro-batch mean averaged with equal weight they differ by far more. Packed batches (rows dealt to ranks in
turn) give the same update on two ranks with one row each as on one process with both rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_data import write_receipt_dataset

pytestmark = pytest.mark.slow


def _fit(model: Path, data: dict[str, Path], root: Path, *extra: str) -> dict[str, torch.Tensor]:
    args = [
        "fit",
        "--model.name_or_path", str(model),
        "--model.metrics", "[exact_match]",
        "--model.lora.dropout", "0",
        "--model.optimizer.class_path", "torch.optim.SGD",
        "--model.optimizer.init_args.lr", "1.0",
        "--model.scheduler", "constant",
        "--data.train", str(data["train"]),
        "--data.max_length", "400",
        "--data.image_max_tokens", "16",
        "--trainer.max_steps", "1",
        "--trainer.limit_val_batches", "0",
        "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_lightning", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    from vlm_lightning.checkpoints.io import validate_checkpoint

    (ckpt,) = root.glob("version_*/last.ckpt")
    return dict(validate_checkpoint(ckpt)["state_dict"])


def test_batch_accumulation_and_ranks_give_one_token_mean_update(tiny_replica, tmp_path: Path) -> None:  # noqa: ANN001
    data = write_receipt_dataset(tmp_path / "data", n_train=4)
    model = tiny_replica("qwen2_vl")
    one_batch = _fit(model, data, tmp_path / "batch4", "--data.batch_size", "4")
    accumulated = _fit(
        model,
        data,
        tmp_path / "accumulate",
        "--data.batch_size",
        "1",
        "--trainer.accumulate_grad_batches",
        "4",
    )
    ddp = _fit(
        model, data, tmp_path / "ddp", "--data.batch_size", "1", "--trainer.accumulate_grad_batches", "2",
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    assert one_batch.keys() == accumulated.keys() == ddp.keys()
    moved = max(float(v.abs().max()) for k, v in one_batch.items() if "lora_B" in k)
    assert moved > 1e-3  # the step did change the weights
    for name, reference in one_batch.items():
        torch.testing.assert_close(accumulated[name], reference, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(ddp[name], reference, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_packed_rows_on_two_ranks_give_the_one_process_update(
    tiny_replica, tmp_path: Path, mode: str
) -> None:  # noqa: ANN001
    """Packed batches are rows dealt to ranks in turn: 2 ranks x 1 row == 1 process x 2 rows, to 1e-5."""
    data = write_receipt_dataset(tmp_path / "data", n_train=8)
    model = tiny_replica("qwen2_vl")
    packed = ("--data.packing", "true", "--data.max_tokens_per_row", "400", "--model.mode", mode)
    one = _fit(model, data, tmp_path / "one", *packed, "--data.batch_size", "2")
    ddp = _fit(
        model, data, tmp_path / "ddp", *packed, "--data.batch_size", "1", "--trainer.devices", "2",
        "--trainer.strategy", "ddp",
    )  # fmt: skip
    assert one.keys() == ddp.keys()
    if mode == "lora":
        assert max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k) > 1e-3
    for name, reference in one.items():
        torch.testing.assert_close(ddp[name], reference, rtol=1e-5, atol=1e-6, msg=name)
