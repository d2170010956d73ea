"""Metric names usable in configs, and the container that runs a selection of them."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from vlm_lightning.errors import SettingError
from vlm_lightning.metrics.json_metrics import JSONMetrics, ReceiptFieldMetrics
from vlm_lightning.metrics.text import (
    ANLS,
    CharacterErrorRate,
    DocumentMetric,
    ExactMatch,
    LatexMetrics,
    RelaxedAccuracy,
)
from vlm_lightning.metrics.tree import TreeEditAccuracy

__all__ = ["METRICS", "DocumentMetrics", "build_metrics", "metric_names"]

METRICS: dict[str, type[DocumentMetric]] = {
    "anls": ANLS,
    "relaxed_accuracy": RelaxedAccuracy,
    "exact_match": ExactMatch,
    "json": JSONMetrics,
    "receipt": ReceiptFieldMetrics,
    "tree": TreeEditAccuracy,
    "latex": LatexMetrics,
    "cer": CharacterErrorRate,
}


def _merge(named: Sequence[tuple[str, dict[str, float]]]) -> dict[str, float]:
    """Merge per-metric dicts; a key already taken is renamed ``<metric name>/<key>``."""
    merged: dict[str, float] = {}
    for name, values in named:
        for key, value in values.items():
            merged[f"{name}/{key}" if key in merged else key] = value
    return merged


class DocumentMetrics(torch.nn.Module):
    """A ``ModuleDict`` of selected metrics with one ``update``/``compute``/``reset``/``score_sample``.

    Values of all metrics are merged into one flat dict; if two metrics produce the same key (e.g.
    ``exact_match`` and ``latex``), the later one is renamed ``<metric name>/<key>``.
    """

    def __init__(self, metrics: dict[str, DocumentMetric]) -> None:
        super().__init__()
        self.metrics = torch.nn.ModuleDict(metrics)

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """Update every metric with the batch."""
        for metric in self.metrics.values():
            metric.update(predictions, references)

    def compute(self) -> dict[str, float]:
        """Merged values of all metrics as Python floats."""
        return _merge(
            [
                (name, {k: float(v) for k, v in metric.compute().items()})
                for name, metric in self.metrics.items()
            ]
        )

    def reset(self) -> None:
        """Reset every metric."""
        for metric in self.metrics.values():
            metric.reset()

    def score_sample(self, prediction: str, references: Sequence[str]) -> dict[str, float]:
        """Merged per-sample values of all metrics."""
        return _merge(
            [(name, metric.score_sample(prediction, references)) for name, metric in self.metrics.items()]
        )


#: ``torchmetrics.Metric`` keywords, given to every selected metric.
BASE_KWARGS = frozenset(
    {
        "compute_on_cpu",
        "dist_sync_on_step",
        "process_group",
        "dist_sync_fn",
        "distributed_available_fn",
        "sync_on_compute",
        "compute_with_cache",
    }
)


def _accepted(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    own = {key for key in params if key not in ("self", "kwargs")}
    return {key: value for key, value in kwargs.items() if key in own or key in BASE_KWARGS}


def metric_names(setting: Sequence[str] | str | None) -> list[str]:
    """``model.metrics`` as a list of names: a list, one name or a comma list (``anls`` / ``json,exact_match``);
    ``exact_match`` when unset."""
    if isinstance(setting, str):
        setting = [name.strip() for name in setting.split(",") if name.strip()]
    return list(setting or ["exact_match"])


def build_metrics(names: Sequence[str], **kwargs: Any) -> DocumentMetrics:
    """Instantiate the named metrics; each receives the ``kwargs`` its constructor declares.

    ``torchmetrics.Metric`` keywords (``sync_on_compute``, ``process_group``, ...) go to all of them.

    Raises ``ValueError`` for an unknown name (listing the known ones) and ``TypeError`` for a
    keyword that no selected metric accepts.
    """
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise SettingError(
            f"unknown metric(s) {unknown} in model.metrics; known metrics: {', '.join(sorted(METRICS))}"
        )
    unused = set(kwargs)
    metrics: dict[str, DocumentMetric] = {}
    for name in dict.fromkeys(names):
        own = _accepted(METRICS[name], kwargs)
        unused -= own.keys()
        metrics[name] = METRICS[name](**own)
    if unused:
        raise TypeError(f"no selected metric accepts {sorted(unused)}")
    return DocumentMetrics(metrics)
