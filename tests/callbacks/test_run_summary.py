"""A run says why it stopped and what it trains on."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from fit_helpers import WorseningModule, tensor_loader
from lightning.pytorch.callbacks import EarlyStopping

from vlm_lightning.callbacks.run_summary import RunSummary


def _fit(tmp_path: Path, capsys: pytest.CaptureFixture, **kwargs) -> str:  # noqa: ANN003
    callbacks = kwargs.pop("callbacks", [])
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
        callbacks=[RunSummary(), *callbacks], **kwargs,
    )  # fmt: skip
    trainer.fit(WorseningModule(), tensor_loader(8), tensor_loader(2))
    return capsys.readouterr().out


def test_max_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = _fit(tmp_path, capsys, max_steps=5)
    assert "[vlm_lightning] training stopped: reached trainer.max_steps 5" in out
    assert "[vlm_lightning] fit: 8 optimizer steps per epoch, 5 in all" in out


def test_max_epochs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = _fit(tmp_path, capsys, max_epochs=2)
    assert "training stopped: reached trainer.max_epochs 2 (step 16)" in out


def test_early_stopping_says_the_monitored_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stop = EarlyStopping(monitor="val/loss", patience=1, mode="min")
    out = _fit(tmp_path, capsys, max_epochs=10, callbacks=[stop])
    assert "training stopped: early stopping at step 16: Monitored metric val/loss did not improve" in out
    assert "Best score: 1.000" in out
