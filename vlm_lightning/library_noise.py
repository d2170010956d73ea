"""Library messages a user cannot act on, silenced in one place, each by its exact text and with its reason.

Anything not listed here still reaches the user: a new library warning is a signal, not noise. The test
``tests/unit/test_library_noise.py`` checks that each listed message is still emitted by the pinned
library versions (so a stale entry is noticed and removed) and that a clean CLI run prints no warning.
"""

from __future__ import annotations

import logging
import warnings

#: (message regex, why the user cannot act on it)
SILENCED_WARNINGS: tuple[tuple[str, str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "Lightning 2.6's own _pytree helper under torch >= 2.10; nothing in user code",
    ),
    (
        r"You have overridden `(on_before_batch_transfer|transfer_batch_to_device)` in `LightningModule` but "
        r"have passed in a `LightningDataModule`",
        "VLMFineTuner's batch hooks are meant to be used with the data module (found labelled rows on the "
        "CPU, keeps host shapes on the host)",
    ),
    (
        r"It is recommended to use `self\.log\('(val|test)/",
        "val/ and test/ epoch values come from torchmetrics compute(), already synced over all ranks",
    ),
    (
        r"The dirpath has changed from .* therefore `best_model_score`",
        "test / validate with --ckpt_path restore the fit's checkpoint-callback state into a new run folder",
    ),
)
#: log records of Lightning's rank-zero logger that advertise other products
SILENCED_LOG_PREFIXES = ("💡 Tip: For seamless",)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(SILENCED_LOG_PREFIXES)


_installed = False


def quiet_libraries() -> None:
    """Install the filters (once per process)."""
    global _installed
    if _installed:
        return
    for message, _reason in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdverts())
    _installed = True


__all__ = ["SILENCED_LOG_PREFIXES", "SILENCED_WARNINGS", "quiet_libraries"]
