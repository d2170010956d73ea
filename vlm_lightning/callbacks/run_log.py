"""One run, one folder: ``fit --ckpt_path <run>/last.ckpt`` logs into ``<run>`` and continues its metrics.csv.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder exists (and warns), and a new run gets a new
``version_N``: a resumed run would then have two folders, two half curves, and its ``best.ckpt`` left in
the first. ``run_folder_of`` finds the run folder of a checkpoint; ``ResumedCSVLogger`` reopens it, keeping
the rows logged up to the checkpoint's step (rows after it were not part of the state that continues).
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

METRICS_FILE = "metrics.csv"
RUN_MARKERS = ("hparams.yaml", "config.yaml", METRICS_FILE)


def run_folder_of(ckpt_path: str | Path) -> Path | None:
    """The run folder a checkpoint was written into (it holds the run's logs), or None."""
    folder = Path(ckpt_path).resolve().parent
    return folder if any((folder / name).is_file() for name in RUN_MARKERS) else None


def rows_before(metrics_file: Path, step: int) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a metrics.csv logged up to ``step`` (rows without a step are kept)."""
    if not metrics_file.is_file():
        return [], []
    with metrics_file.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if not r.get("step") or float(r["step"]) <= step]
    return header, rows


class ResumedCSVLogger(CSVLogger):
    """A ``CSVLogger`` writing into an existing run folder, continuing its metrics.csv from ``step``.

    Args:
        folder: the run folder (``<root>/version_N``).
        step: the global step the run resumes from; rows logged after it are dropped.
    """

    def __init__(self, folder: str | Path, step: int, **kwargs: Any) -> None:
        folder = Path(folder)
        super().__init__(save_dir=str(folder.parent), name="", version=folder.name, **kwargs)
        self.resume_step = step

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        metrics_file = Path(self.log_dir) / METRICS_FILE
        header, rows = rows_before(metrics_file, self.resume_step)
        # scoped: the resumed run folder exists by design; its rows up to the step are kept below
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
            experiment = super().experiment
        if header:
            with metrics_file.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=header)
                writer.writeheader()
                writer.writerows(rows)
            experiment.metrics_keys = sorted(header)
        return experiment


__all__ = ["ResumedCSVLogger", "rows_before", "run_folder_of"]
