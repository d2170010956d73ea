"""``last.ckpt`` holds the last step of every fit, whether or not the monitored value improved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vlm_lightning.callbacks.checkpoint import RunCheckpoint


class _WorseningModule(L.LightningModule):
    """A linear model whose logged ``val/loss`` only gets worse after the first validation."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.validations = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validations += 1
        self.log("val/loss", float(self.validations))  # 1, 2, 3, ...: the first is the best

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=1)


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
    trainer.fit(_WorseningModule(), _loader(train_rows), _loader(2))
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    best = torch.load(tmp_path / "best.ckpt", weights_only=True)
    assert last["global_step"] == max_steps
    first_validation = val_check_interval or train_rows
    assert best["global_step"] == first_validation  # best.ckpt still follows the monitored value
    assert checkpoint.last_model_path.endswith("last.ckpt")
