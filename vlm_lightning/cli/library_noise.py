"""Library messages a user cannot act on, silenced in one place, each by its exact text and with its reason.

Anything not listed here still reaches the user: a new library warning is a signal, not noise. Tests check
that a clean CLI run prints no warning (``test_a_clean_run_prints_no_library_warning...``) and that each
entry matches only the message it names (``tests/cli/test_library_noise.py``).
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
        r"Total length of `list` across ranks is zero",
        "a fit without validation data: the data module returns no validation loader (Lightning's way to "
        "skip validation); the start line says 'val 0 samples'",
    ),
    (
        r"`is_gradient_checkpointing` is deprecated",
        "PEFT 0.21 reads transformers' deprecated attribute when it wraps a model",
    ),
    (
        r"The dirpath has changed from .* therefore `best_model_score`",
        "test / validate with --ckpt_path restore the fit's checkpoint-callback state into a new run folder",
    ),
    (
        r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided "
        r"during `Trainer` instantiation\. Please add the following callbacks: \[\"RunCheckpoint\{[^\"]*\}\"\]\.?$",
        "test / validate / predict from a fit's checkpoint need not its RunCheckpoint state (fit always has one; "
        "any other missing callback is still said)",
    ),
)
#: log records of Lightning's rank-zero logger that advertise other products
SILENCED_LOG_PREFIXES = ("💡 Tip: For seamless",)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(SILENCED_LOG_PREFIXES)


_ADVERTS = _DropAdverts()


def quiet_libraries() -> None:
    """Install the filters; repeated calls add nothing (``warnings`` replaces an identical filter)."""
    for message, _reason in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _ADVERTS not in logger.filters:
            logger.addFilter(_ADVERTS)


__all__ = ["SILENCED_LOG_PREFIXES", "SILENCED_WARNINGS", "quiet_libraries"]
