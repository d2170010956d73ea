"""A progress bar over optimizer steps: ``train (epoch 2): 120/1000 [01:10<08:30, ...]`` with full metric names.

Lightning's bar restarts every epoch and counts batches; with ``max_steps`` (how runs here are sized) its
epoch total says little, and it shows the logger's ``v_num``. This bar counts optimizer steps of the
whole run (continuing from the resumed step), so tqdm's ETA is the time to the end of training.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm import tqdm


def announce(text: str) -> None:
    """Print ``text`` on its own line to stdout: tqdm clears any bar it is drawing first and redraws it after
    (a plain print would leave the text at the end of the bar's line)."""
    tqdm.write(text)
    sys.stdout.flush()


def total_steps(trainer: L.Trainer) -> int | None:
    """Optimizer steps the fit will run (``max_steps``, else epochs x steps per epoch), or None."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    batches = trainer.num_training_batches
    if (
        trainer.max_epochs
        and trainer.max_epochs > 0
        and isinstance(batches, int | float)
        and math.isfinite(batches)
    ):
        return math.ceil(batches / max(1, trainer.accumulate_grad_batches)) * trainer.max_epochs
    return None


class StepProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` whose training bar spans the whole run in optimizer steps (no ``v_num``)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=total_steps(trainer))
        bar.n = bar.initial = trainer.global_step  # a resumed run continues its count
        bar.set_description("train")
        bar.refresh()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        self.train_progress_bar.set_description(f"train (epoch {trainer.current_epoch})")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and step != bar.n and self._should_update(step, bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


__all__ = ["StepProgressBar", "total_steps"]
