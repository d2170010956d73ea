"""Checkpoint hooks of the LightningModule: trainable weights only, run facts, RNG states, load checks."""

from __future__ import annotations

import dataclasses
import math
import random
import sys
from typing import Any

import numpy as np
import torch

from vlm_lightning.errors import UserError
from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.peft_setup import LoraSettings

#: data settings that decide a prompt's tokens: recorded in checkpoints, the defaults of inference
PROMPT_SETTINGS = ("prompt", "system", "image_max_tokens", "image_min_tokens", "max_image_side")
_INFERENCE_KEYS = (*PROMPT_SETTINGS, "max_length", "mask")


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint does not belong to this model / training mode."""


class CheckpointHooks:
    """Mixin for ``VLMFineTuner``: checkpoints hold the trainable weights, the run's facts and RNG states.

    Needs the LightningModule's ``named_parameters``, ``state_dict``, ``hparams`` and ``_trainer``, and the
    fine-tuner's ``facts`` and ``lora``.
    """

    facts: FamilyFacts
    lora: LoraSettings

    def trainable_state_dict(
        self, state_dict: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Only the weights that train (LoRA adapters, or the LM in full mode), of ``state_dict`` (the
        strategy's: under FSDP2 full on rank 0, or this rank's shards) or of the module's own."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        if state_dict is None:
            state_dict = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return {k: v for k, v in state_dict.items() if k in names}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the trainable weights; add the run's family, mode, LoRA and data settings and RNG states."""
        checkpoint["state_dict"] = self.trainable_state_dict(checkpoint.get("state_dict"))
        checkpoint["vlm_lightning"] = {
            "family": self.facts.name,
            "mode": self.hparams.mode,
            "name_or_path": self.hparams.name_or_path,
            "trainable_keys": len(checkpoint["state_dict"]),
            "lora": dataclasses.asdict(self.lora),
            "data": self._inference_settings(),
        }
        checkpoint["rng_states"] = collect_rng_states()

    def _data_settings(self) -> dict[str, Any]:
        """The trainer's data module settings (``data.*``); empty without a trainer or data module."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return dict(getattr(datamodule, "hparams", None) or {})

    def _inference_settings(self) -> dict[str, Any]:
        """Prompt and image settings inference needs to reproduce training inputs."""
        settings = self._data_settings()
        return {k: settings[k] for k in _INFERENCE_KEYS if k in settings}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse checkpoints of another family, mode or LoRA layout; restore RNG states when fitting."""
        info = checkpoint.get("vlm_lightning")
        if info is None:
            raise CheckpointMismatchError("this checkpoint was not written by vlm_lightning")
        if info.get("mode") != self.hparams.mode or info.get("family") != self.facts.name:
            raise CheckpointMismatchError(
                f"checkpoint is a {info.get('family')} {info.get('mode')} run; this model is "
                f"{self.facts.name} {self.hparams.mode}"
            )
        expected = {n for n, p in self.named_parameters() if p.requires_grad}
        got = (
            set(checkpoint["state_dict"]) if "state_dict" in checkpoint else expected
        )  # sharded: loaded already
        if got != expected:
            missing, extra = sorted(expected - got)[:3], sorted(got - expected)[:3]
            raise CheckpointMismatchError(
                f"checkpoint weights do not match this model's trainable weights (missing e.g. {missing}, "
                f"unexpected e.g. {extra}): was it trained with other LoRA settings?"
            )
        shapes = {n: tuple(p.shape) for n, p in self.named_parameters() if p.requires_grad}
        stored = checkpoint.get("state_dict") or {}
        other = [n for n in sorted(stored) if n in shapes and tuple(stored[n].shape) != shapes[n]]
        if other:
            raise CheckpointMismatchError(
                f"checkpoint weights have other shapes than this model's ({len(other)} of {len(stored)}, e.g. "
                f"{other[0]}: {tuple(stored[other[0]].shape)} in the checkpoint, {shapes[other[0]]} here): it was "
                f"trained from {info.get('name_or_path')}; give that base model as --model.name_or_path"
            )
        if "rng_states" in checkpoint and self._trainer is not None and self.trainer.state.fn == "fit":
            set_rng_states(checkpoint["rng_states"])
        reopen_epoch_cut_by_max_steps(checkpoint)

    def on_train_start(self) -> None:
        """A resumed run trains on this run's learning-rate schedule from its first step (said when it moves)."""
        if self._trainer is None or self.trainer.ckpt_path is None:
            return
        changed = follow_this_runs_schedule(self.trainer)
        if changed and self.trainer.is_global_zero:
            restored, now = changed[0]
            print(
                f"[vlm_lightning] resumed at step {self.trainer.global_step}: the learning-rate schedule follows "
                f"this run's length (trainer.max_steps / max_epochs), so the learning rate goes {restored:.3g} -> "
                f"{now:.3g} (the checkpoint's run had another length)",
                file=sys.stderr,
            )


def follow_this_runs_schedule(trainer: Any) -> list[tuple[float, float]]:
    """After a resume, set each group's learning rate to this run's schedule at the restored step; return the
    ``(restored, now)`` pairs that changed.

    The optimizer's learning rates come back from the checkpoint as the old run's schedule left them, while the
    scheduler is built for this run's length (``trainer.max_steps`` / epochs). With the same length they agree;
    with a longer run the first resumed step would train at the old schedule's end (0 for a finished cosine)
    and the next jump to the new curve."""
    changed = []
    for config in getattr(trainer, "lr_scheduler_configs", None) or []:
        scheduler = config.scheduler
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            continue
        step = scheduler.last_epoch
        wanted = [
            base * rule(step) for base, rule in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
        ]
        groups = scheduler.optimizer.param_groups
        for group, lr in zip(groups, wanted, strict=True):
            if not math.isclose(group["lr"], lr, rel_tol=1e-9, abs_tol=1e-15):
                changed.append((group["lr"], lr))
                group["lr"] = lr
        scheduler._last_lr = [group["lr"] for group in groups]
    return changed


def reopen_epoch_cut_by_max_steps(checkpoint: dict[str, Any]) -> bool:
    """Mark an epoch that ``trainer.max_steps`` ended part-way as unfinished again; returns whether it did.

    Lightning counts the epoch as processed before ``on_train_epoch_end``, where ``last.ckpt`` is written, even
    when ``max_steps`` stopped it part-way (``is_last_batch`` false). Resumed with a larger ``max_steps``, its
    fit loop then saw the epoch as done: with ``max_epochs: 1`` it trained nothing and exited successfully, and
    with more epochs it trained one epoch too few. Reopened, the resume continues the same epoch at the next
    batch (the data module resumes its order exactly)."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = fit_loop.get("epoch_progress")
    batches = fit_loop.get("epoch_loop.batch_progress")
    if not epochs or not batches or batches.get("is_last_batch", True):
        return False
    current, total = epochs["current"], epochs["total"]
    if current["processed"] != current["completed"] + 1 or total["processed"] != total["completed"] + 1:
        return False
    current["processed"] -= 1
    total["processed"] -= 1
    return True


def collect_rng_states() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore the states ``collect_rng_states`` returned."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


__all__ = [
    "CheckpointHooks",
    "CheckpointMismatchError",
    "collect_rng_states",
    "reopen_epoch_cut_by_max_steps",
    "set_rng_states",
]
