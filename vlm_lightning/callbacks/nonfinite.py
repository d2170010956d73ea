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

With a fused optimizer (the trainer's AdamW on CUDA) the host does not wait for the flag: the fused kernel
drops the update on the device and the flag is read one optimizer step later (see ``NonFiniteGuard``).

In both modes ``on_save_checkpoint`` refuses (``NonFiniteLossError``) to write a checkpoint whose
weights are not finite, whatever made them so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from vlm_lightning.errors import SettingError, UserError
from vlm_lightning.training.sharding import full_value


class NonFiniteLossError(UserError, FloatingPointError):
    """A non-finite loss or gradient stopped training; the message names the step and batch ids."""


def _ids(batch: Any) -> list[Any]:
    ids = batch.get("ids") if isinstance(batch, dict) else None
    if ids is None:
        return []
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


def _nonfinite_params(params: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    return [name for name, t in params if torch.is_floating_point(t) and not bool(torch.isfinite(t).all())]


@dataclass
class _StepCheck:
    """One optimizer step's verdict, kept on the device until it is read."""

    flag: torch.Tensor  # > 0 when any rank saw a non-finite loss or gradient (reduced over ranks)
    micro: list[tuple[torch.Tensor, torch.Tensor, int, list[Any]]]  # (flag, loss, batch_idx, ids)
    grads_bad: torch.Tensor | None
    step: int
    epoch: int
    batch_idx: int
    ids: list[Any]
    # deferred verdicts: ``flag`` copied to pinned host memory when computed, and the copy's CUDA event;
    # reading them waits for that copy only, not for the work queued since (``bool(flag)`` would)
    host_flag: torch.Tensor | None = None
    copied: torch.cuda.Event | None = None

    def copy_to_host(self) -> None:
        """Start the flag's copy to the host (CUDA only); ``is_set`` then waits for it alone."""
        if self.flag.device.type != "cuda":
            return
        self.host_flag = torch.empty(self.flag.shape, dtype=self.flag.dtype, pin_memory=True)
        self.host_flag.copy_(self.flag, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()

    def is_set(self) -> bool:
        """Whether the step saw a non-finite value (the guard's one host read per optimizer step)."""
        if self.copied is None or self.host_flag is None:
            return bool(self.flag)
        self.copied.synchronize()
        return bool(self.host_flag)


def _defers_on_device(optimizer: torch.optim.Optimizer, trainer: L.Trainer) -> bool:
    """Whether ``optimizer`` can drop an update from a device flag (fused kernels read ``found_inf``)."""
    if str(trainer.precision) == "16-mixed":  # the GradScaler sets found_inf itself
        return False
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False) and optimizer.defaults.get("fused"))


class NonFiniteGuard(Callback):
    """Catch NaN/Inf losses and gradients before the optimizer step.

    With a fused optimizer (the trainer's AdamW on CUDA) the update is dropped on the device: the step's
    flag is handed to the fused kernel as ``found_inf`` (what ``GradScaler`` does), which leaves weights,
    moments and the optimizer's step count untouched, and the flag is read one optimizer step later, so
    the host never waits for the GPU inside a step. The error or warning then comes one step late but
    names the step where it happened, and the late step's update is not applied either with ``stop``;
    checkpoints and the end of training read pending flags first. Other optimizers (and fp16 with a
    GradScaler) are checked with one host sync per optimizer step.

    Args:
        action: ``stop`` (raise ``NonFiniteLossError``) or ``skip`` (drop that update and continue).
        check_grads: also check gradients (catches overflow in backward with a finite loss).
        max_skips: with ``skip``, give up after this many consecutive skipped updates.
        check_saves: refuse to write checkpoints with non-finite weights (one ``isfinite`` pass over the
            saved weights per checkpoint: cheap for adapters, seconds for a full multi-billion LM on CPU).
        defer: read the flag one step later and drop the update on the device (``None``: whenever the
            optimizer supports it; ``False``: always one host sync per step).
    """

    def __init__(
        self,
        action: Literal["stop", "skip"] = "stop",
        check_grads: bool = True,
        max_skips: int = 10,
        check_saves: bool = True,
        defer: bool | None = None,
    ) -> None:
        if action not in ("stop", "skip"):
            raise SettingError(f"NonFiniteGuard action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.check_grads = check_grads
        self.max_skips = max_skips
        self.check_saves = check_saves
        self.defer = defer
        self.skipped: list[dict[str, Any]] = []  # updates skipped in this session (step, message)
        self.skipped_total = 0  # across resumes
        self._consecutive = 0
        self._current: tuple[int, list[Any]] = (-1, [])
        # (non-finite flag, loss, batch_idx, ids) of each micro-batch since the last optimizer step
        self._pending: list[tuple[torch.Tensor, torch.Tensor, int, list[Any]]] = []
        self._unread: list[_StepCheck] = []  # deferred verdicts, oldest first
        self._optimizers_flagged: list[torch.optim.Optimizer] = []
        #: (global step, total gradient norm) of the last optimizer step checked, as the guard saw the
        #: gradients (before the trainer's token-mean rescale): the trainer logs and clips with it
        #: instead of computing the norm a second time
        self.step_grad_norm: tuple[int, torch.Tensor] | None = None

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
        gradient norm, which is non-finite when any gradient is), reduced over DDP ranks.
        """
        flags = [flag for flag, *_ in self._pending]
        grads_bad: torch.Tensor | None = None
        if self.check_grads:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                norm = full_value(torch.nn.utils.get_total_norm(grads, foreach=True))
                self.step_grad_norm = (trainer.global_step, norm)
                grads_bad = ~torch.isfinite(norm)
                flags.append(grads_bad)
        device = pl_module.device
        flag = torch.stack([f.to(device) for f in flags]).any() if flags else torch.zeros((), device=device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag.int(), reduce_op="sum")
        check = _StepCheck(
            flag, self._pending, grads_bad, trainer.global_step, trainer.current_epoch, *self._current
        )
        self._pending = []
        supported = _defers_on_device(optimizer, trainer)
        if self.defer and not supported:
            raise SettingError(
                f"NonFiniteGuard(defer=True) needs a fused optimizer that reads found_inf (e.g. "
                f"torch.optim.AdamW(fused=True)) and no fp16 GradScaler; got {type(optimizer).__name__}"
            )
        if not (supported if self.defer is None else self.defer):
            self._conclude(trainer, check, optimizer)
            return
        self._read_unread(trainer)  # last step's verdict: long computed by now on the device
        # the fused kernel skips the whole update (weights, moments, step count) when found_inf == 1
        optimizer.found_inf = (flag > 0).float()  # type: ignore[attr-defined]
        optimizer.grad_scale = None  # type: ignore[attr-defined]
        if optimizer not in self._optimizers_flagged:
            self._optimizers_flagged.append(optimizer)
        check.copy_to_host()
        self._unread.append(check)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Take the device flag off the optimizers once they have stepped."""
        self._unflag()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Read the verdicts still pending (the last step's)."""
        self._unflag()
        self._read_unread(trainer)

    def _unflag(self) -> None:
        for optimizer in self._optimizers_flagged:
            for name in ("found_inf", "grad_scale"):
                if hasattr(optimizer, name):
                    delattr(optimizer, name)
        self._optimizers_flagged = []

    def _read_unread(self, trainer: L.Trainer) -> None:
        unread, self._unread = self._unread, []
        for check in unread:
            self._conclude(trainer, check, None)

    def _conclude(
        self, trainer: L.Trainer, check: _StepCheck, optimizer: torch.optim.Optimizer | None
    ) -> None:
        """Act on one step's verdict; ``optimizer`` is given when its update is still to be dropped."""
        if not check.is_set():  # the guard's one host read per optimizer step (a late one when deferred)
            self._consecutive = 0
            return
        bad: list[dict[str, Any]] = []
        for flag, loss, batch_idx, ids in check.micro:
            if bool(flag):
                value = loss.float()
                what = f"loss {value.item() if value.numel() == 1 else 'non-finite'}"
                bad.append({"what": what, "batch_idx": batch_idx, "ids": ids})
        if check.grads_bad is not None and bool(check.grads_bad) and not bad:
            bad.append({"what": "gradient", "batch_idx": check.batch_idx, "ids": check.ids})
        message = self._message(trainer, check, bad)
        if self.action == "stop":
            self._unread = []
            raise NonFiniteLossError(message)
        if optimizer is not None:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        self._consecutive += 1
        self.skipped_total += 1
        self.skipped.append({"step": check.step, "message": message})
        rank_zero_warn(f"{message}; update skipped ({self._consecutive} in a row)")
        if self._consecutive > self.max_skips:
            self._unread = []
            raise NonFiniteLossError(
                f"{self._consecutive} consecutive non-finite updates skipped; last: {message}"
            )

    def _message(self, trainer: L.Trainer, check: _StepCheck, bad: list[dict[str, Any]]) -> str:
        if not bad:
            where = "on another rank"
            ids: list[Any] = []
            whats = "non-finite loss or gradient"
            batch_idx = check.batch_idx
        else:
            whats = ", ".join(sorted({b["what"] for b in bad}))
            ids = [i for b in bad for i in b["ids"]]
            batch_idx = bad[0]["batch_idx"]
            where = f"rank {trainer.global_rank}" if trainer.world_size > 1 else ""
        last = _last_checkpoint(trainer)
        return (
            f"non-finite {whats} at global step {check.step} (epoch {check.epoch}, "
            f"batch {batch_idx}{', ' + where if where else ''}), batch ids {ids}; the update was not applied"
            + (f"; last good checkpoint: {last}" if last else "")
        )

    # --- never write NaN weights --------------------------------------------------------------
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Read pending verdicts, then refuse to write a checkpoint whose (saved) weights are not finite."""
        self._read_unread(trainer)
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
