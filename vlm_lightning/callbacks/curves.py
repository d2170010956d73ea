"""``training_curves.png``: loss, monitored metric and learning rate vs step, drawn at the end of ``fit``.

The values come from the run's own ``metrics.csv`` (CSVLogger, the default logger) and from the history
the callback keeps itself during training: ``train/loss`` and the learning rate after every training
batch, every ``val/*`` value after every validation (sanity checks excluded). A series the history holds at
more steps than ``metrics.csv`` (which has a row every ``log_every_n_steps`` only) is drawn from the history;
with no CSVLogger (W&B only, TensorBoard only, ...) everything is.

The figure is drawn with ``matplotlib.figure.Figure`` on the Agg canvas, so the global matplotlib
backend is never changed.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from vlm_lightning.callbacks.predictions import run_dir

Series = dict[str, list[tuple[float, float]]]  # metric name -> [(step, value), ...]
_Pending = dict[str, list[tuple[float, Any]]]  # values may still be device tensors

TRAIN_LOSS_KEYS = ("train/loss", "train/loss_step")
VAL_LOSS_KEYS = ("val/loss",)
FILE_NAME = "training_curves.png"


def read_metrics_csv(path: str | Path) -> Series:
    """``{column: [(step, value), ...]}`` of a Lightning ``metrics.csv`` (empty cells and NaNs skipped)."""
    series: Series = defaultdict(list)
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            step = _to_float(row.get("step"))
            if step is None:
                continue
            for key, cell in row.items():
                if key in ("step", "epoch") or key is None:
                    continue
                value = _to_float(cell)
                if value is not None:
                    series[key].append((step, value))
    return dict(series)


def _to_float(cell: Any) -> float | None:
    if cell is None or cell == "":
        return None
    try:
        value = float(cell)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _scalar(value: Any) -> float | None:
    try:
        return _to_float(float(value.detach().cpu()) if hasattr(value, "detach") else value)
    except (TypeError, ValueError, RuntimeError):  # non-scalar tensors
        return None


def lr_keys(series: Series) -> list[str]:
    """Learning-rate columns of ``LearningRateMonitor`` (``lr-AdamW``, ``lr-AdamW/pg1``, ...)."""
    return sorted(k for k in series if k.startswith("lr-") and not k.startswith("lr-momentum"))


def _first(series: Series, keys: tuple[str, ...]) -> tuple[str, list[tuple[float, float]]] | None:
    for key in keys:
        if series.get(key):
            return key, series[key]
    return None


def plot_curves(series: Series, path: str | Path, monitor: str | None = None, title: str = "") -> Path:
    """Draw the three panels (losses, monitored metric, learning rate) into the PNG ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional: matplotlib, only to draw
    from matplotlib.figure import Figure  # optional: matplotlib

    fig = Figure(figsize=(14, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_metric, ax_lr = fig.subplots(1, 3)

    def draw(ax: Any, key: str, points: list[tuple[float, float]], **kwargs: Any) -> None:
        steps, values = zip(*sorted(points))
        marker = "o" if len(points) <= 30 else None
        ax.plot(steps, values, label=key, marker=marker, markersize=3, **kwargs)

    for keys, style in ((TRAIN_LOSS_KEYS, {"alpha": 0.8}), (VAL_LOSS_KEYS, {"linewidth": 2})):
        found = _first(series, keys)
        if found:
            draw(ax_loss, *found, **style)
    _finish(ax_loss, "loss", "loss")

    if monitor and series.get(monitor):
        draw(ax_metric, monitor, series[monitor], color="tab:green")
    _finish(ax_metric, f"monitored: {monitor or '(none)'}", monitor or "")

    for key in lr_keys(series):
        draw(ax_lr, key, series[key], color="tab:purple" if key == "lr-AdamW" else None)
    _finish(ax_lr, "learning rate", "lr")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _finish(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if ax.lines:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")


class TrainingCurves(Callback):
    """Writes ``<run>/training_curves.png`` at the end of ``fit`` (rank 0) and prints its path.

    Args:
        filename: file name inside the run folder.
    """

    def __init__(self, filename: str = FILE_NAME) -> None:
        self.filename = filename
        self._points: _Pending = defaultdict(list)
        self.path: Path | None = None

    # --- own history (every step; metrics.csv has a row every log_every_n_steps) -----------------
    @property
    def history(self) -> Series:
        """The kept points as floats (device tensors are read here, not at every step; NaN dropped)."""
        out: Series = defaultdict(list)
        for key, points in self._points.items():
            for step, value in points:
                if (number := _scalar(value)) is not None:
                    out[key].append((step, number))
        return out

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._points = defaultdict(list)
        self.path = None

    def _put(self, key: str, step: float, value: Any) -> None:
        """Append a point; a second value at the same step (gradient accumulation) replaces the first.

        Training losses stay device tensors until the figure is drawn: reading one per step would
        synchronise the GPU every step."""
        points = self._points[key]
        if points and points[-1][0] == step:
            points[-1] = (step, value)
        else:
            points.append((step, value))

    # steps follow metrics.csv: the lr used by optimizer step k, then the loss of that step, both at k
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank != 0:
            return
        step = float(trainer.global_step)
        for optimizer in trainer.optimizers:
            name = f"lr-{type(optimizer).__name__}"
            for i, group in enumerate(optimizer.param_groups):
                value = _scalar(group.get("lr"))
                if value is not None:
                    self._put(name if i == 0 else f"{name}/pg{i + 1}", step, value)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank != 0:
            return
        step = float(max(0, trainer.global_step - 1))
        for key in TRAIN_LOSS_KEYS:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                self._put(key, step, value.detach().clone() if hasattr(value, "detach") else value)
                break

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        step = float(max(0, trainer.global_step - 1))
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/") and (number := _scalar(value)) is not None:
                self._put(key, step, number)

    # --- the figure ---------------------------------------------------------------------------
    def collect(self, trainer: L.Trainer) -> tuple[Series, str]:
        """The series to plot and where they come from (``metrics.csv`` path or ``callback history``)."""
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # flush rows still buffered (the logger is finalized only after on_fit_end)
                metrics_file = Path(logger.log_dir) / "metrics.csv"
                if metrics_file.is_file():
                    series = dict(read_metrics_csv(metrics_file))
                    if series:
                        denser = {k: v for k, v in self.history.items() if len(v) > len(series.get(k, []))}
                        source = str(metrics_file) + (" + callback history" if denser else "")
                        return {**series, **denser}, source
        return dict(self.history), "callback history"

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if _has_earlier_twin(self, trainer):
            return
        folder = run_dir(trainer)  # a broadcast: every rank takes part, only rank 0 draws
        if trainer.global_rank != 0:
            return
        series, source = self.collect(trainer)
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        title = f"{folder} (from {source.replace(str(folder) + '/', '')})"
        self.path = plot_curves(series, folder / self.filename, monitor=monitor, title=title)
        print(f"[vlm_lightning] training curves: {self.path}")


def _has_earlier_twin(callback: Callback, trainer: L.Trainer) -> bool:
    """True when another callback of the same class comes first (added both by default and by config)."""
    for other in trainer.callbacks:
        if other is callback:
            return False
        if type(other) is type(callback):
            return True
    return False


__all__ = ["TrainingCurves", "plot_curves", "read_metrics_csv"]
