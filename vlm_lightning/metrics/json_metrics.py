"""Structured-output metrics: generic JSON comparison and receipt field accuracy."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from vlm_lightning.metrics import functional as F
from vlm_lightning.metrics.text import DocumentMetric, ratio

__all__ = ["JSON_SCORE_WEIGHTS", "JSONMetrics", "ReceiptFieldMetrics", "parse_reference"]

#: ``json_score = 0.5 * field_f1 + 0.25 * structure_similarity + 0.25 * (1 - edit_distance)``, per sample.
JSON_SCORE_WEIGHTS = {"field_f1": 0.5, "structure_similarity": 0.25, "edit_similarity": 0.25}
NUMBER_TOLERANCE = 0.01


def parse_reference(reference: str) -> Any:
    """``json.loads`` a reference answer, with a clear error when it is not JSON."""
    try:
        return json.loads(reference)
    except ValueError as err:
        raise ValueError(f"reference answer is not valid JSON: {reference[:200]!r}") from err


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _best(candidates: list[dict[str, float]], key: str) -> dict[str, float]:
    """The candidate with the highest ``key``; the first one on ties."""
    return max(candidates, key=lambda stats: stats[key])


# --- generic JSON -------------------------------------------------------------------------------------
def _json_sample(prediction: str, parsed: Any, target: Any) -> dict[str, float]:
    """Additive statistics of one prediction against one parsed target."""
    target_flat = F.flatten_json(target)
    if parsed is None:
        return {
            "n_target_fields": float(len(target_flat)),
            "edit_sum": F.normalized_edit_distance(prediction, F.canonical_json(target)),
        }
    pred_flat = F.flatten_json(parsed)
    shared = pred_flat.keys() & target_flat.keys()
    union = pred_flat.keys() | target_flat.keys()
    tp = sum(1 for key in shared if pred_flat[key] == target_flat[key])
    f1 = 2 * tp / (len(pred_flat) + len(target_flat))
    structure = len(shared) / len(union)
    edit = F.normalized_edit_distance(F.canonical_json(parsed), F.canonical_json(target))
    w = JSON_SCORE_WEIGHTS
    return {
        "valid_sum": 1.0,
        "structure_sum": structure,
        "value_accuracy_sum": tp / len(shared) if shared else 0.0,
        "tp": float(tp),
        "n_pred_fields": float(len(pred_flat)),
        "n_target_fields": float(len(target_flat)),
        "value_similarity_sum": _mean(
            [1.0 - F.normalized_edit_distance(pred_flat[k], target_flat[k]) for k in shared]
        ),
        "edit_sum": edit,
        "score_sum": w["field_f1"] * f1
        + w["structure_similarity"] * structure
        + w["edit_similarity"] * (1 - edit),
    }


class JSONMetrics(DocumentMetric):
    """Compare generated JSON with the reference JSON (``references[i]`` are compact JSON strings).

    The prediction is parsed with :func:`extract_json` (fences and surrounding prose allowed); the
    reference with ``json.loads``. Both are flattened to key paths (:func:`flatten_json`). Values:

    * ``json_valid_rate``: share of predictions holding a JSON object/array;
    * ``json_structure_similarity``: Jaccard of the key-path sets;
    * ``json_value_accuracy``: share of shared key paths whose values are equal;
    * ``json_field_precision/recall/f1``: micro over all samples, a field being a (path, value) pair;
    * ``json_value_similarity``: mean ``1 - normalised edit distance`` of values on shared paths;
    * ``json_edit_distance``: normalised edit distance of canonical (sorted, compact) dumps, lower
      is better; for an invalid prediction it is taken against the raw text;
    * ``json_score``: per sample ``0.5 * field_f1 + 0.25 * structure_similarity + 0.25 * (1 -
      edit_distance)``, averaged (higher is better).

    An invalid prediction counts 0 for everything else (its target fields count as misses). With
    several references, the one giving the highest ``json_score`` is used.
    """

    needs_json_references = True

    higher_is_better = None
    stat_names = (
        "valid_sum",
        "structure_sum",
        "value_accuracy_sum",
        "tp",
        "n_pred_fields",
        "n_target_fields",
        "value_similarity_sum",
        "edit_sum",
        "score_sum",
    )

    def sample_stats(self, prediction: str, references: list[str]) -> dict[str, float]:
        parsed = F.extract_json(prediction)
        candidates = [_json_sample(prediction, parsed, parse_reference(ref)) for ref in references]
        return _best([dict.fromkeys(self.stat_names, 0.0) | c for c in candidates], "score_sum")

    def finalize(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        n = stats["n_samples"]
        return {
            "json_valid_rate": ratio(stats["valid_sum"], n),
            "json_structure_similarity": ratio(stats["structure_sum"], n),
            "json_value_accuracy": ratio(stats["value_accuracy_sum"], n),
            "json_field_precision": ratio(stats["tp"], stats["n_pred_fields"]),
            "json_field_recall": ratio(stats["tp"], stats["n_target_fields"]),
            "json_field_f1": ratio(2 * stats["tp"], stats["n_pred_fields"] + stats["n_target_fields"]),
            "json_value_similarity": ratio(stats["value_similarity_sum"], n),
            "json_edit_distance": ratio(stats["edit_sum"], n),
            "json_score": ratio(stats["score_sum"], n),
        }


# --- receipts -----------------------------------------------------------------------------------------
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")
_DECIMAL = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")


def as_number(value: Any) -> float | None:
    """A finite float from a number or a numeric string (``"$1,234.50"``); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip().lstrip("$€£¥").strip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return float(text) if _DECIMAL.fullmatch(text) else None


def _normalise_text(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return " ".join(text.lower().split())


def values_match(prediction: Any, target: Any) -> bool:
    """Numbers (or numeric strings) within 0.01, else lowercased whitespace-collapsed text equality."""
    pred_number, target_number = as_number(prediction), as_number(target)
    if pred_number is not None and target_number is not None:
        return abs(pred_number - target_number) <= NUMBER_TOLERANCE + 1e-9
    return _normalise_text(prediction) == _normalise_text(target)


def _items_length(obj: dict) -> int:
    items = obj.get("items")
    return len(items) if isinstance(items, list) else 0


class ReceiptFieldMetrics(DocumentMetric):
    """Receipt extraction: per-field accuracy and whole-object checks on the parsed prediction.

    * ``field_acc/<name>``: :func:`values_match` of the field (a field missing on both sides matches);
    * ``items_count_acc``: the predicted ``items`` list length is within 1 of the target's;
    * ``partial_match``: at least ``max(1, len(fields) - 1)`` fields match;
    * ``object_exact_match``: the parsed prediction equals the parsed target.

    A prediction that holds no JSON object counts 0 everywhere. With several references, the one with
    the most matches is used.
    """

    needs_json_references = True

    def __init__(
        self, fields: Sequence[str] = ("store_name", "date", "total", "currency"), **kwargs: Any
    ) -> None:
        if isinstance(fields, str) or not fields:
            raise ValueError("fields must be a non-empty sequence of key names")
        self.fields = tuple(fields)
        super().__init__(**kwargs)

    def _stat_names(self) -> tuple[str, ...]:
        fields = tuple(f"field_{i}_correct" for i in range(len(self.fields)))
        return (*fields, "items_count_correct", "partial_correct", "exact_correct")

    def _against(self, parsed: Any, target: Any) -> dict[str, float]:
        stats = dict.fromkeys(self._stat_names(), 0.0)
        if not isinstance(parsed, dict) or not isinstance(target, dict):
            return stats
        for i, name in enumerate(self.fields):
            stats[f"field_{i}_correct"] = float(values_match(parsed.get(name), target.get(name)))
        matched = sum(stats[f"field_{i}_correct"] for i in range(len(self.fields)))
        stats["items_count_correct"] = float(abs(_items_length(parsed) - _items_length(target)) <= 1)
        stats["partial_correct"] = float(matched >= max(1, len(self.fields) - 1))
        stats["exact_correct"] = float(parsed == target)
        return stats

    def sample_stats(self, prediction: str, references: list[str]) -> dict[str, float]:
        parsed = F.extract_json(prediction)
        candidates = [self._against(parsed, parse_reference(ref)) for ref in references]
        return max(candidates, key=lambda stats: sum(stats.values()))

    def finalize(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        n = stats["n_samples"]
        values = {
            f"field_acc/{name}": ratio(stats[f"field_{i}_correct"], n) for i, name in enumerate(self.fields)
        }
        values["items_count_acc"] = ratio(stats["items_count_correct"], n)
        values["partial_match"] = ratio(stats["partial_correct"], n)
        values["object_exact_match"] = ratio(stats["exact_correct"], n)
        return values
