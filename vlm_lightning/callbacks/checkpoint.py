"""ModelCheckpoint writing ``best.ckpt`` and ``last.ckpt`` straight into the run folder."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """Keeps the best checkpoint as ``<run>/best.ckpt`` and the latest as ``<run>/last.ckpt``.

    The files hold only trainable weights (see ``VLMFineTuner.on_save_checkpoint``) plus optimizer,
    scheduler and loop state, so ``fit --ckpt_path <run>/last.ckpt`` resumes exactly.
    """

    def __init__(
        self,
        monitor: str | None = "val/loss",
        mode: str = "min",
        every_n_train_steps: int | None = None,
        save_last: bool = True,
        dirpath: str | None = None,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=save_last,
            every_n_train_steps=every_n_train_steps,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            from vlm_lightning.callbacks.predictions import run_dir

            self.dirpath = str(run_dir(trainer))
        super().setup(trainer, pl_module, stage)
