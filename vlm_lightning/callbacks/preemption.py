"""Save a resumable ``last.ckpt`` and stop cleanly when the job is preempted (SIGTERM) or interrupted (Ctrl+C).

How it works with Lightning 2.6's own SIGTERM handling (``trainer/connectors/signal_connector.py``):

* ``on_fit_start`` installs our SIGTERM/SIGINT handlers. Lightning registers its handler *after*
  ``on_fit_start`` and chains the one it finds, so on SIGTERM both run: Lightning marks
  ``trainer.received_sigterm`` (and forwards the signal to DDP children it launched), we record it.
  Our handlers only set a flag; nothing is saved inside a signal handler.
* At the next ``on_train_batch_end`` (the optimizer step of that batch is done) every rank agrees
  through ``strategy.reduce_boolean_decision`` (a signal seen by any rank stops all of them at the same
  batch), the checkpoint is written to ``<run folder>/last.ckpt`` (the ``checkpoint`` callback's
  folder, else ``trainer.log_dir``), the resume command is printed and ``trainer.should_stop`` is set.
  Once that batch's metrics are logged, Lightning's ``SIGTERMException`` is raised (by Lightning itself
  on SIGTERM, else by us at the next hook): the exit path Lightning takes after a SIGTERM, so no
  validation, epoch-end checkpoint or further batch runs during the grace period. It is a
  ``SystemExit``: ``python -m vlm_lightning`` exits with ``exit_code`` (default 0; set e.g. 143 for
  schedulers that must tell a preempted job from a finished one). If that batch was the last one
  (``max_steps``), fit simply ends.
* A SIGTERM during validation makes Lightning raise ``SIGTERMException`` there; ``on_exception`` then
  saves the checkpoint (single-process runs; under DDP the ranks are not at a common point, so the
  previous checkpoint is kept).
* The previous handlers are restored when ``fit`` ends, also on exceptions; should a handler of ours
  outlive ``fit`` all the same, it only forwards to the previous behaviour.
* A second Ctrl+C while waiting for the batch to finish interrupts at once (``KeyboardInterrupt``).
  Signals reaching other processes (dataloader workers) or arriving outside ``fit`` get the previous
  handler's behaviour.

A checkpoint written in ``on_train_batch_end`` resumes at the next batch with ``fit --ckpt_path``
(see ``vlm_lightning.data.sampling`` for how the data position is restored).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from vlm_lightning.cli.secrets import redact
from vlm_lightning.errors import SettingError

_Handler = Any  # callable, signal.SIG_DFL / SIG_IGN or None


def resume_command(ckpt_path: str | Path, argv: Sequence[str] | None = None) -> str:
    """The command that resumes this run: our argv with ``--ckpt_path`` replaced, secrets redacted."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]) if argv else Path()
    ours = program.name in ("vlm-lightning", "vlm_lightning") or program.parent.name == "vlm_lightning"
    args: list[str] = []
    if ours:
        skip = False
        for arg in argv[1:]:
            if skip:
                skip = False
                continue
            if arg == "--ckpt_path":
                skip = True
                continue
            if arg.startswith("--ckpt_path="):
                continue
            args.append(arg)
        if "fit" not in args:
            args.insert(0, "fit")
    else:
        args = ["fit", "..."]
    command = " ".join(["python", "-m", "vlm_lightning", *[shlex.quote(a) for a in args]])
    return redact(f"{command} --ckpt_path {shlex.quote(str(ckpt_path))}")


def run_folder(trainer: L.Trainer) -> Path:
    """Where ``last.ckpt`` lives: the checkpoint callback's folder, else the log folder."""
    ckpt_cb = trainer.checkpoint_callback
    dirpath = getattr(ckpt_cb, "dirpath", None)
    if dirpath:
        return Path(dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir)


class PreemptionCheckpoint(Callback):
    """On SIGTERM / SIGINT: finish the current batch, save ``<run>/last.ckpt``, print how to resume, stop.

    Args:
        signals: signal names to handle (``SIGTERM``, ``SIGINT``, ``SIGUSR1``, ...).
        filename: checkpoint file name inside the run folder.
        exit_code: exit status of ``python -m vlm_lightning`` after a preemption stop (0: clean exit).
        ddp_check_every_n_batches: under DDP the ranks agree on stopping (one all-reduce and host sync)
            every this many batches, not after every batch; a single process checks every batch.
    """

    def __init__(
        self,
        signals: Sequence[str] = ("SIGTERM", "SIGINT"),
        filename: str = "last.ckpt",
        exit_code: int = 0,
        ddp_check_every_n_batches: int = 10,
    ) -> None:
        self.signals = [
            signal.Signals[name] if isinstance(name, str) else signal.Signals(name) for name in signals
        ]
        self.filename = filename
        self.exit_code = exit_code
        if ddp_check_every_n_batches < 1:
            raise SettingError(
                f"PreemptionCheckpoint ddp_check_every_n_batches must be >= 1, got {ddp_check_every_n_batches}"
            )
        self.ddp_check_every_n_batches = ddp_check_every_n_batches
        self.requested: signal.Signals | None = None
        self.saved_path: Path | None = None
        self._previous: dict[signal.Signals, _Handler] = {}
        self._active = False
        self._exit_pending = False
        self._pid = os.getpid()

    # --- signal handling ----------------------------------------------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if not self._active or os.getpid() != self._pid:
            self._fallback(sig, frame)
            return
        if self.requested is not None and sig == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl+C: stop now
        if self.requested is None:
            self.requested = sig
            hint = " (Ctrl+C again to stop at once)" if sig == signal.SIGINT else ""
            message = (
                f"[vlm_lightning] received {sig.name}: saving a checkpoint after the current batch{hint}\n"
            )
            try:  # os.write, not print: a handler may interrupt a print to the same stream
                os.write(2, message.encode())
            except OSError:
                pass

    def _fallback(self, sig: signal.Signals, frame: FrameType | None) -> None:
        """Behave as the handler we replaced would have (default action for SIG_DFL)."""
        previous = self._previous.get(sig, signal.SIG_DFL)
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_IGN:
            return
        elif sig == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("PreemptionCheckpoint: not in the main thread, signal handlers not installed")
            return
        for sig in self.signals:
            current = signal.getsignal(sig)
            if current != self._handle:  # fit run twice: keep the handler from before the first run
                self._previous[sig] = current
            signal.signal(sig, self._handle)
        self._active = True

    def _restore(self) -> None:
        self._active = False
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._handle:  # leave handlers others installed since alone
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    # --- hooks --------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the handlers (every rank; only this process acts on them)."""
        self.requested, self.saved_path, self._pid, self._exit_pending = None, None, os.getpid(), False
        self._install()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """All ranks decide together; on a request save, report and leave through ``SIGTERMException``."""
        local = self.requested is not None
        if trainer.world_size > 1:
            if batch_idx % self.ddp_check_every_n_batches:
                return  # every rank skips the same batches, so the collective below stays matched
            stop = trainer.strategy.reduce_boolean_decision(local, all=False)
        else:
            stop = local
        if not stop:
            return
        self._save(trainer)
        trainer.should_stop = True
        self._exit_pending = True  # leave at the next hook: this batch's metrics are logged after this one

    def _leave(self) -> None:
        if self._exit_pending:
            self._exit_pending = False
            raise SIGTERMException(self.exit_code)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Leave before training another batch."""
        self._leave()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave instead of validating (``should_stop`` would trigger a validation run)."""
        self._leave()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave before epoch-end checkpoints overwrite ``last.ckpt``."""
        self._leave()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Lightning stopped on SIGTERM elsewhere (e.g. in validation): save if nothing was saved yet."""
        if isinstance(exception, SIGTERMException) and self.saved_path is not None:
            exception.code = self.exit_code  # also when Lightning raised it first (after our save)
        elif (
            isinstance(exception, SIGTERMException)
            and self.saved_path is None
            and (self.requested is not None or trainer.received_sigterm)
            and trainer.world_size == 1
            and trainer.state.fn == "fit"
        ):
            self._save(trainer)
            exception.code = self.exit_code
        # Lightning restores the handlers it saw at registration (ours) after this hook and calls no
        # callback afterwards: let it restore now, then give the signals back to their previous owners.
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and hasattr(connector, "teardown"):
            connector.teardown()
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the signals back to whoever had them before ``fit``."""
        self._restore()

    def _save(self, trainer: L.Trainer) -> Path:
        path = run_folder(trainer) / self.filename
        trainer.save_checkpoint(path)
        self.saved_path = path
        if trainer.is_global_zero:
            name = self.requested.name if self.requested is not None else "SIGTERM"
            print(
                f"[vlm_lightning] preempted ({name}) at step {trainer.global_step}; saved {path}\n"
                f"[vlm_lightning] resume with: {resume_command(path)}",
                flush=True,
            )
        return path


__all__ = ["PreemptionCheckpoint", "resume_command", "run_folder"]
