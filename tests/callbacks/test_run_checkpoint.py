"""``last.ckpt`` holds the last step of every fit, whether or not the monitored value improved."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from fit_helpers import WorseningModule, tensor_loader

from vlm_lightning.callbacks.checkpoint import RunCheckpoint


@pytest.mark.parametrize(
    ("max_steps", "val_check_interval", "train_rows"),
    [(20, 10, 40), (30, 5, 40), (24, 10, 40), (7, None, 3)],  # mid-epoch, many vals, no val at end, epochs
)
def test_last_ckpt_holds_the_final_step(
    tmp_path: Path, max_steps: int, val_check_interval: int | None, train_rows: int
) -> None:
    checkpoint = RunCheckpoint(dirpath=str(tmp_path))
    trainer = L.Trainer(
        max_steps=max_steps,
        val_check_interval=val_check_interval,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
        num_sanity_val_steps=0,
    )
    trainer.fit(WorseningModule(), tensor_loader(train_rows), tensor_loader(2))
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    best = torch.load(tmp_path / "best.ckpt", weights_only=True)
    assert last["global_step"] == max_steps
    first_validation = val_check_interval or train_rows
    assert best["global_step"] == first_validation  # best.ckpt still follows the monitored value
    assert checkpoint.last_model_path.endswith("last.ckpt")


def test_a_fit_without_validation_keeps_last_ckpt_and_no_best(
    tmp_path: Path, capsys: pytest.CaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """Nothing to rank by: no best.ckpt, no per-epoch "could not find the monitored key" warning."""
    checkpoint = RunCheckpoint(dirpath=str(tmp_path))
    trainer = L.Trainer(
        max_steps=6,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
    )
    trainer.fit(WorseningModule(), tensor_loader(3))
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 6
    assert not (tmp_path / "best.ckpt").exists()
    assert "no validation data" in capsys.readouterr().out
    assert not [w for w in recwarn if "could not find the monitored key" in str(w.message)]
