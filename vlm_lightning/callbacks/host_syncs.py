"""Find the host syncs inside training steps: every place where the CPU waits for the GPU.

    python -m vlm_lightning fit --config ... \
        --trainer.callbacks+=vlm_lightning.callbacks.host_syncs.HostSyncReport \
        --trainer.callbacks.start_step=20 --trainer.callbacks.steps=2

A sync (``.item()``, ``.tolist()``, ``nonzero``, slicing with a GPU tensor, ``if tensor:``) empties the
queue of launched kernels: the host cannot prepare the next kernels while the GPU works, and a step
costs host time + GPU time instead of the larger of the two. For the chosen optimizer steps this callback
turns on ``torch.cuda.set_sync_debug_mode("warn")`` and writes ``<run>/host_syncs.txt``: each Python
line that synchronised, how often per step, and the operation, on rank 0. CUDA only (nothing to find
on the CPU).

torch reports the syncs through Python's ``warnings`` and no Lightning hook encloses a whole step, so from the
first recorded step's ``on_train_batch_start`` to the last one's ``on_train_batch_end`` the sync warnings are
counted by ``patches/host_sync_warnings.py`` (one filter and ``warnings.showwarning`` changed, every other
warning shown as usual; restored at the end of the window, of training, or on an exception).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from vlm_lightning.errors import SettingError
from vlm_lightning.patches.host_sync_warnings import SyncWarningRecorder


def _cuda() -> bool:
    return torch.cuda.is_available()


def _set_sync_debug_mode(mode: str) -> None:
    torch.cuda.set_sync_debug_mode(mode)


class HostSyncReport(Callback):
    """Record the synchronising CUDA operations of optimizer steps ``start_step`` .. ``start_step + steps``.

    Args:
        start_step: first recorded optimizer step (after compilation: compiling syncs too).
        steps: how many optimizer steps to record.
    """

    def __init__(self, start_step: int = 20, steps: int = 2) -> None:
        if start_step < 0 or steps < 1:
            raise SettingError(
                f"HostSyncReport needs start_step >= 0 and steps >= 1; got {start_step}, {steps}"
            )
        self.start_step = start_step
        self.steps = steps
        self.sites: Counter[tuple[str, int, str]] = Counter()
        self.report_path: Path | None = None
        self._recorder = SyncWarningRecorder()
        self._first_step = -1

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.global_rank == 0 and _cuda() and self.report_path is None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._recorder.recording or not self._active(trainer) or trainer.global_step < self.start_step:
            return
        self._recorder.start()
        self._first_step = trainer.global_step
        _set_sync_debug_mode("warn")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._recorder.recording and trainer.global_step - self._first_step >= self.steps:
            self._finish(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._recorder.recording:
            self._finish(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._recorder.recording:
            self._stop_recording()

    def _stop_recording(self) -> list[tuple[str, int, str]]:
        """Sync debugging off, warnings back to normal; the (file, line, message) of each sync meanwhile."""
        _set_sync_debug_mode("default")
        return self._recorder.stop()

    def _finish(self, trainer: L.Trainer) -> None:
        caught = self._stop_recording()
        steps = max(1, trainer.global_step - self._first_step)
        for filename, lineno, message in caught:
            self.sites[(filename, lineno, message.splitlines()[0][:120])] += 1
        total = sum(self.sites.values())
        lines = [
            f"steps {self._first_step}..{trainer.global_step}: {total / steps:.1f} host syncs per optimizer step",
            "",
            f"{'per step':>8}  site  (operation)",
        ]
        for (filename, lineno, message), count in self.sites.most_common():
            lines.append(f"{count / steps:>8.1f}  {filename}:{lineno}  ({message})")
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.report_path = folder / "host_syncs.txt"
        self.report_path.write_text("\n".join(lines) + "\n")
        print(f"[vlm_lightning] host syncs: {self.report_path} ({lines[0]})")
