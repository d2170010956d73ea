"""A window of optimizer steps that a diagnostic callback records once, on rank 0."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class StepWindow(Callback):
    """Calls ``begin`` before optimizer step ``start_step`` and ``end`` once ``steps`` more have run (or when
    training ends first), once per run and on rank 0 only. Subclasses record something in between."""

    def __init__(self, start_step: int, steps: int) -> None:
        self.start_step = start_step
        self.steps = steps
        self._first_step: int | None = None
        self._done = False

    def begin(self, trainer: L.Trainer) -> None:
        """Start recording (before the batch of optimizer step ``trainer.global_step``)."""
        raise NotImplementedError

    def end(self, trainer: L.Trainer, first_step: int) -> None:
        """Stop recording and report; ``first_step``: the optimizer step ``begin`` ran before."""
        raise NotImplementedError

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._first_step is not None or self._done or trainer.global_rank != 0:
            return
        if trainer.global_step >= self.start_step:
            self._first_step = trainer.global_step
            self.begin(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._first_step is not None and trainer.global_step - self._first_step >= self.steps:
            self._close(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._first_step is not None:
            self._close(trainer)

    def _close(self, trainer: L.Trainer) -> None:
        first, self._first_step, self._done = self._first_step, None, True
        assert first is not None
        self.end(trainer, first)
