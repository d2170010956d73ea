"""ModelCheckpoint writing ``best.ckpt`` and ``last.ckpt`` straight into the run folder."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from vlm_lightning.callbacks.predictions import run_dir


def _runs_validation(trainer: L.Trainer) -> bool:
    """Whether this fit has validation batches (unknown data modules: assumed so)."""
    if trainer.limit_val_batches == 0:
        return False
    datasets = getattr(trainer.datamodule, "datasets", None)
    return datasets is None or bool(datasets.get("val"))


class RunCheckpoint(ModelCheckpoint):
    """Keeps the best checkpoint as ``<run>/best.ckpt`` and the latest state as ``<run>/last.ckpt``.

    The files hold only trainable weights (see ``VLMFineTuner.on_save_checkpoint``) plus optimizer,
    scheduler and loop state, so ``fit --ckpt_path <run>/last.ckpt`` resumes exactly.

    Lightning 2.6's ``ModelCheckpoint`` with a monitor rewrites ``last.ckpt`` only when it also saves a
    top-k checkpoint, i.e. when the monitored value improves: ``last.ckpt`` would then hold the best
    step, not the last one. Here ``last.ckpt`` is rewritten at every checkpoint moment (validation or
    epoch end) and at the end of every fit, whenever it is older than the current step.
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
        self._step_in_last: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # the run folder (not a given checkpoint.dirpath): checkpoints there are this run's (a resume)
        self._own_folder = getattr(self, "_own_folder", False) or self.dirpath is None
        if self.dirpath is None:
            self.dirpath = str(run_dir(trainer))
        if stage == "fit" and self.monitor is not None and not _runs_validation(trainer):
            # nothing to rank by: only last.ckpt (Lightning would warn each epoch that val/ values are missing)
            self.monitor, self.save_top_k = None, 0
            if trainer.is_global_zero:
                print(
                    "[vlm_lightning] no validation data (data.val / data.val_fraction, "
                    "trainer.limit_val_batches): no best.ckpt is chosen; last.ckpt holds the latest weights"
                )
        # scoped: the run folder always holds config.yaml / hparams.yaml (and on a resume its own checkpoints):
        # warn only about other checkpoints in a folder given as checkpoint.dirpath
        with warnings.catch_warnings():
            if self._own_folder or not any(Path(self.dirpath).glob("*.ckpt")):
                warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._step_in_last = trainer.global_step

    def _refresh_last(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` if it does not hold the current step (after Lightning's own saves)."""
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.global_step == 0
            or self._step_in_last == trainer.global_step
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # else best.ckpt is chosen at epoch end
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._refresh_last(trainer)
