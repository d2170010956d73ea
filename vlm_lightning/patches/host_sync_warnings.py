"""torch's host-sync warnings counted while ``HostSyncReport`` records; every other warning shown as before.

``torch.cuda.set_sync_debug_mode("warn")`` reports each synchronising CUDA operation only through Python's
``warnings`` (c10's ``TORCH_WARN`` -> ``PyErr_WarnEx``), and Lightning has no callback hook around a whole
training step (``on_train_batch_start`` runs before the forward, ``on_train_batch_end`` after the optimizer
step), so a recording has to span two hooks: it cannot be one with-block. Between ``start`` and ``stop`` the
process's warning state differs in exactly two ways: one ``"always"`` filter for torch's sync message (every
occurrence counted, not only the first per line) and ``warnings.showwarning`` replaced by a recorder that keeps
the sync messages and hands every other warning to the handler that was there before. ``stop`` restores both
(the state ``catch_warnings`` saved at ``start``); ``callbacks/host_syncs.py`` calls it at the end of the
window, at the end of training and on an exception.
"""

from __future__ import annotations

import warnings
from typing import Any

#: the start of torch's sync-debug warning ("called a synchronizing CUDA operation")
SYNC_MESSAGE = "synchronizing CUDA operation"


class SyncWarningRecorder:
    """``start()`` ... ``stop()``: the (file, line, message) of each sync warning in between, in order."""

    def __init__(self) -> None:
        self._saved: warnings.catch_warnings | None = None
        self._caught: list[tuple[str, int, str]] = []

    @property
    def recording(self) -> bool:
        return self._saved is not None

    def start(self) -> None:
        """Count sync warnings from now on; other warnings go to the current ``warnings.showwarning``."""
        if self._saved is not None:
            raise RuntimeError("SyncWarningRecorder.start: already recording")
        saved = warnings.catch_warnings()  # saves the filters and showwarning; stop() restores them
        saved.__enter__()
        self._saved, self._caught = saved, []
        previous = warnings.showwarning
        caught = self._caught

        def show(
            message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
        ) -> None:
            if SYNC_MESSAGE in str(message):
                caught.append((filename, lineno, str(message)))
            else:
                previous(message, category, filename, lineno, file, line)

        # the window's one filter: restored by stop() (vlm_lightning.patches: "host_sync_warnings")
        warnings.filterwarnings("always", message=f".*{SYNC_MESSAGE}")
        warnings.showwarning = show

    def stop(self) -> list[tuple[str, int, str]]:
        """The process's warning state as before ``start``; the sync warnings caught meanwhile."""
        saved, self._saved = self._saved, None
        if saved is not None:
            saved.__exit__(None, None, None)
        caught, self._caught = self._caught, []
        return caught


__all__ = ["SYNC_MESSAGE", "SyncWarningRecorder"]
