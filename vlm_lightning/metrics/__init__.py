"""Document metrics on generated text: pure functions and DDP-exact torchmetrics classes."""

from vlm_lightning.metrics.json_metrics import JSONMetrics, ReceiptFieldMetrics
from vlm_lightning.metrics.registry import METRICS, DocumentMetrics, build_metrics, metric_names
from vlm_lightning.metrics.text import ANLS, DocumentMetric, ExactMatch, LatexMetrics, RelaxedAccuracy
from vlm_lightning.metrics.tree import TreeEditAccuracy

__all__ = [
    "ANLS",
    "METRICS",
    "DocumentMetric",
    "DocumentMetrics",
    "ExactMatch",
    "JSONMetrics",
    "LatexMetrics",
    "ReceiptFieldMetrics",
    "RelaxedAccuracy",
    "TreeEditAccuracy",
    "build_metrics",
    "metric_names",
]
