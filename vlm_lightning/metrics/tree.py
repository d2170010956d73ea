"""Donut's tree-edit-distance accuracy and field-level F1 as a torchmetrics class."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vlm_lightning.metrics import functional as F
from vlm_lightning.metrics.json_metrics import parse_reference
from vlm_lightning.metrics.text import DocumentMetric, ratio

__all__ = ["TreeEditAccuracy"]


class TreeEditAccuracy(DocumentMetric):
    """Donut ``JSONParseEvaluator`` -> ``{"ted_accuracy", "field_f1"}``.

    ``ted_accuracy`` is the mean over samples of :func:`ted_accuracy`; ``field_f1`` is Donut's
    corpus micro F1, accumulated as summed true-positive and ``fn + fp`` counts. A prediction without
    JSON is scored as ``{}``. With several references, the one with the best tree accuracy is used.
    """

    needs_json_references = True

    stat_names = ("ted_sum", "tp", "fn_or_fp")

    def _against(self, parsed: Any, target: Any) -> dict[str, float]:
        tp, fn_or_fp = F.field_f1_counts(parsed, target)
        return {"ted_sum": F.ted_accuracy(parsed, target), "tp": float(tp), "fn_or_fp": float(fn_or_fp)}

    def sample_stats(self, prediction: str, references: list[str]) -> dict[str, float]:
        parsed = F.extract_json(prediction)
        parsed = {} if parsed is None else parsed
        candidates = [self._against(parsed, parse_reference(ref)) for ref in references]
        return max(candidates, key=lambda stats: stats["ted_sum"])

    def finalize(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        tp, fn_or_fp = stats["tp"], stats["fn_or_fp"]
        return {
            "ted_accuracy": ratio(stats["ted_sum"], stats["n_samples"]),
            "field_f1": ratio(tp, tp + fn_or_fp / 2),
        }
