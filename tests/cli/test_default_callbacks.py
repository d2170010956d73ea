"""Default callbacks come from one table, one instance per type; a callback the user lists replaces its default."""

from __future__ import annotations

from collections import Counter

from lightning.pytorch.callbacks import TQDMProgressBar

from vlm_lightning.callbacks.curves import TrainingCurves
from vlm_lightning.callbacks.predictions import PredictionWriter
from vlm_lightning.callbacks.progress import StepProgressBar
from vlm_lightning.callbacks.throughput import Throughput
from vlm_lightning.callbacks.tracking import PredictionTable
from vlm_lightning.cli.lightning_cli import default_callbacks, with_default_callbacks


def test_defaults_are_one_per_type() -> None:
    kinds = Counter(type(c) for c in default_callbacks())
    assert kinds and max(kinds.values()) == 1


def test_a_listed_callback_replaces_its_default() -> None:
    mine = [
        PredictionWriter(),
        TrainingCurves(),
        PredictionTable(),
        Throughput(warmup_steps=1),
        TQDMProgressBar(),
    ]
    chosen = with_default_callbacks(mine)
    kinds = Counter(type(c) for c in chosen)
    assert max(kinds.values()) == 1  # nothing runs twice
    assert all(any(c is m for c in chosen) for m in mine)  # the user's instances are the ones kept
    assert not any(isinstance(c, StepProgressBar) for c in chosen)  # any progress bar replaces ours
    assert len(chosen) == len(default_callbacks())


def test_no_progress_bar_or_logger_leaves_their_callbacks_out() -> None:
    names = {type(c).__name__ for c in default_callbacks(progress_bar=False, logger=False)}
    assert "StepProgressBar" not in names and "LearningRateMonitor" not in names
