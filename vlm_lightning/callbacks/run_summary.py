"""What a run is about to do, and why it stopped: printed once, on rank 0.

At the start of fit: samples per split (and the augmented copies among the training samples), optimizer
steps per epoch and in all, and the tokens per optimizer step (from the length check). At the end: the
reason training stopped — ``max_steps``, ``max_epochs``, early stopping with the monitored values, or a
preemption (which ``PreemptionCheckpoint`` reports with its resume command).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from vlm_lightning.callbacks.progress import announce


def start_summary(trainer: L.Trainer, datamodule: Any) -> str:
    """One line on what ``fit`` will train on."""
    datasets = getattr(datamodule, "datasets", {}) or {}
    parts = []
    for split in ("train", "val"):
        if split in datasets:
            records = datasets[split].records
            copies = sum("augment_copy" in r.meta for r in records)
            augmented = sum("augment_key" in r.meta for r in records)
            extra = (
                f" ({len(records) - copies} rows + {copies} copies: {augmented} augmented, "
                f"{copies - augmented} plain repeats)"
                if copies
                else ""
            )
            parts.append(f"{split} {len(records)} samples{extra}")
    accumulate = max(1, trainer.accumulate_grad_batches)
    batches = trainer.num_training_batches
    per_epoch = None
    if isinstance(batches, int | float) and math.isfinite(batches) and batches > 0:
        per_epoch = math.ceil(batches / accumulate)
        limits = [trainer.max_steps] if trainer.max_steps and trainer.max_steps > 0 else []
        if trainer.max_epochs and trainer.max_epochs > 0:  # whichever ends the fit first
            limits.append(per_epoch * trainer.max_epochs)
        total = min(limits) if limits else None
        noun = "optimizer step" if per_epoch == 1 else "optimizer steps"
        parts.append(f"{per_epoch} {noun} per epoch" + (f", {total} in all" if total else ""))
    train = datasets.get("train")
    lengths = getattr(train, "lengths", None)
    if lengths and per_epoch:  # an epoch's tokens over its optimizer steps (all ranks): packed or not
        packed = (getattr(datamodule, "hparams", None) or {}).get("packing")
        samples = f", ~{len(lengths) / per_epoch:.1f} samples" if packed else ""
        parts.append(f"~{round(sum(lengths) / per_epoch):,} tokens{samples} per optimizer step")
    elif lengths:
        batch = getattr(datamodule, "batch_size", 1) * accumulate * trainer.world_size
        parts.append(f"~{round(statistics.fmean(lengths) * batch):,} tokens per optimizer step")
    return "fit: " + ", ".join(parts)


def stop_reason(trainer: L.Trainer) -> str:
    """Why ``fit`` ended, in words (both reasons when early stopping fired at the ``max_steps`` step)."""
    at_max_steps = bool(
        trainer.max_steps and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
    )
    for callback in trainer.callbacks:
        if (
            isinstance(callback, EarlyStopping)
            and callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED
        ):
            detail = (callback.stopping_reason_message or f"{callback.monitor} stopped improving").strip()
            if at_max_steps:
                return f"reached trainer.max_steps {trainer.max_steps}; early stopping fired at the same step: {detail}"
            return f"early stopping at step {trainer.global_step}: {detail}"
    if at_max_steps:
        return f"reached trainer.max_steps {trainer.max_steps}"
    if trainer.max_epochs and trainer.max_epochs > 0 and trainer.current_epoch >= trainer.max_epochs:
        return f"reached trainer.max_epochs {trainer.max_epochs} (step {trainer.global_step})"
    if trainer.max_time is not None and trainer.should_stop:
        return f"reached trainer.max_time {trainer.max_time} (step {trainer.global_step})"
    return f"stopped at step {trainer.global_step}"


class RunSummary(Callback):
    """Prints ``start_summary`` when fit starts and ``stop_reason`` when it ends (rank 0)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            announce(f"[vlm_lightning] {start_summary(trainer, trainer.datamodule)}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        preempted = any(getattr(c, "saved_path", None) for c in trainer.callbacks)
        if trainer.is_global_zero and not preempted:
            announce(f"[vlm_lightning] training stopped: {stop_reason(trainer)}")


__all__ = ["RunSummary", "start_summary", "stop_reason"]
