"""Stop on (or skip) a non-finite loss or gradient before it reaches the weights or a checkpoint.

The guard sees every micro-batch's loss in ``on_before_backward`` and the gradients in
``on_before_optimizer_step``; the decision is taken there, before ``optimizer.step()``, and agreed by
all DDP ranks (one reduced device flag, read once per optimizer step: no per-micro-batch host sync) so
they stop or skip together.

* ``action="stop"``: raise ``NonFiniteLossError`` naming the global step, epoch, batch index and the
  batch ids (``batch["ids"]``) of the offending micro-batches. The update is never applied, so the
  weights in memory and every checkpoint already written stay finite; nothing is saved afterwards.
* ``action="skip"``: drop the update (gradients set to ``None``, so AdamW neither steps, nor moves its
  moments, nor applies weight decay: the weights are bit-for-bit unchanged), warn with the same
  details and go on. The step counter and the LR schedule still advance. More than ``max_skips``
  skipped updates in a row raise ``NonFiniteLossError`` (the run has diverged).

In both modes ``on_save_checkpoint`` refuses (``NonFiniteLossError``) to write a checkpoint whose
weights are not finite, whatever made them so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn


class NonFiniteLossError(FloatingPointError):
    """A non-finite loss or gradient stopped training; the message names the step and batch ids."""


def _ids(batch: Any) -> list[Any]:
    ids = batch.get("ids") if isinstance(batch, dict) else None
    if ids is None:
        return []
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


def _nonfinite_params(params: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    return [name for name, t in params if torch.is_floating_point(t) and not bool(torch.isfinite(t).all())]


class NonFiniteGuard(Callback):
    """Catch NaN/Inf losses and gradients before the optimizer step.

    Args:
        action: ``stop`` (raise ``NonFiniteLossError``) or ``skip`` (drop that update and continue).
        check_grads: also check gradients (catches overflow in backward with a finite loss).
        max_skips: with ``skip``, give up after this many consecutive skipped updates.
        check_saves: refuse to write checkpoints with non-finite weights (one ``isfinite`` pass over the
            saved weights per checkpoint: cheap for adapters, seconds for a full multi-billion LM on CPU).
    """

    def __init__(
        self,
        action: Literal["stop", "skip"] = "stop",
        check_grads: bool = True,
        max_skips: int = 10,
        check_saves: bool = True,
    ) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.check_grads = check_grads
        self.max_skips = max_skips
        self.check_saves = check_saves
        self.skipped: list[dict[str, Any]] = []  # updates skipped in this session (step, message)
        self.skipped_total = 0  # across resumes
        self._consecutive = 0
        self._current: tuple[int, list[Any]] = (-1, [])
        self._bad: list[dict[str, Any]] = []  # offending micro-batches since the last optimizer step
        # (non-finite flag, loss, batch_idx, ids) of each micro-batch since the last optimizer step
        self._pending: list[tuple[torch.Tensor, torch.Tensor, int, list[Any]]] = []

    # --- detection ----------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Remember which samples this micro-batch holds."""
        self._current = (batch_idx, _ids(batch))

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        """Keep this micro-batch's finiteness flag on the device; it is read once per optimizer step."""
        self._pending.append((~torch.isfinite(loss.detach()).all(), loss.detach(), *self._current))

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Stop or drop the update when this step saw a non-finite loss or gradient on any rank.

        One device flag per step (losses of every micro-batch and, with ``check_grads``, the total
        gradient norm, which is non-finite when any gradient is), reduced over DDP ranks and read once.
        """
        flags = [flag for flag, *_ in self._pending]
        grads_bad: torch.Tensor | None = None
        if self.check_grads:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                grads_bad = ~torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True))
                flags.append(grads_bad)
        device = pl_module.device
        flag = torch.stack([f.to(device) for f in flags]).any() if flags else torch.zeros((), device=device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag.int(), reduce_op="sum")
        bad = bool(flag)  # the guard's one host sync per optimizer step
        if bad:
            for flag, loss, batch_idx, ids in self._pending:
                if bool(flag):
                    value = loss.float()
                    what = f"loss {value.item() if value.numel() == 1 else 'non-finite'}"
                    self._bad.append({"what": what, "batch_idx": batch_idx, "ids": ids})
            if grads_bad is not None and bool(grads_bad) and not self._bad:
                self._bad.append({"what": "gradient", "batch_idx": self._current[0], "ids": self._current[1]})
        self._pending = []
        if not bad:
            self._consecutive = 0
            return
        message = self._message(trainer)
        self._bad = []
        if self.action == "stop":
            raise NonFiniteLossError(message)
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self._consecutive += 1
        self.skipped_total += 1
        self.skipped.append({"step": trainer.global_step, "message": message})
        rank_zero_warn(f"{message}; update skipped ({self._consecutive} in a row)")
        if self._consecutive > self.max_skips:
            raise NonFiniteLossError(
                f"{self._consecutive} consecutive non-finite updates skipped; last: {message}"
            )

    def _message(self, trainer: L.Trainer) -> str:
        if not self._bad:
            where = "on another rank"
            ids: list[Any] = []
            whats = "non-finite loss or gradient"
            batch_idx = self._current[0]
        else:
            whats = ", ".join(sorted({b["what"] for b in self._bad}))
            ids = [i for b in self._bad for i in b["ids"]]
            batch_idx = self._bad[0]["batch_idx"]
            where = f"rank {trainer.global_rank}" if trainer.world_size > 1 else ""
        last = _last_checkpoint(trainer)
        return (
            f"non-finite {whats} at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {batch_idx}{', ' + where if where else ''}), batch ids {ids}; the update was not applied"
            + (f"; last good checkpoint: {last}" if last else "")
        )

    # --- never write NaN weights --------------------------------------------------------------
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse to write a checkpoint whose (saved) weights are not finite."""
        if not self.check_saves:
            return
        bad = _nonfinite_params(checkpoint.get("state_dict", {}).items())
        if bad:
            raise NonFiniteLossError(
                f"refusing to save a checkpoint at global step {trainer.global_step}: non-finite weights in "
                f"{bad[:3]}{' ...' if len(bad) > 3 else ''} ({len(bad)} tensor(s)); the previous checkpoint is kept"
            )

    def state_dict(self) -> dict[str, Any]:
        """How many updates were skipped (kept across resumes)."""
        return {"skipped_total": self.skipped_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the skipped-update count."""
        self.skipped_total = int(state_dict.get("skipped_total", 0))


def _last_checkpoint(trainer: L.Trainer) -> str:
    ckpt = trainer.checkpoint_callback
    path = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
    return str(path) if path else ""


__all__ = ["NonFiniteGuard", "NonFiniteLossError"]
