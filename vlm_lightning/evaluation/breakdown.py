"""Per-field, per-document-type and failure breakdowns, and latency / cost, from per-sample rows."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from vlm_lightning.metrics import build_metrics
from vlm_lightning.metrics.functional import extract_json

FAILURE_KINDS = ("empty_output", "invalid_json", "missing_field", "extra_field", "wrong_value", "correct")


def _parse(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    return extract_json(text)


def classify_failure(prediction: str, target: Any) -> str:
    """One label per sample: the first failure kind that applies, else ``correct``."""
    if not prediction.strip():
        return "empty_output"
    want = _parse(target)
    got = _parse(prediction)
    if not isinstance(want, dict):
        return "correct" if prediction.strip() == str(target).strip() else "wrong_value"
    if not isinstance(got, dict):
        return "invalid_json"
    if set(want) - set(got):
        return "missing_field"
    if set(got) - set(want):
        return "extra_field"
    return "correct" if all(got[k] == want[k] for k in want) else "wrong_value"


def failure_breakdown(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Counts per failure kind with one example id each."""
    table: dict[str, dict[str, Any]] = {k: {"count": 0, "example": None} for k in FAILURE_KINDS}
    for row in rows:
        kind = classify_failure(row["prediction"], row["target"])
        table[kind]["count"] += 1
        if table[kind]["example"] is None:
            table[kind]["example"] = {"id": row["id"], "prediction": row["prediction"][:200]}
    return table


def per_field_accuracy(rows: list[dict[str, Any]]) -> dict[str, float]:
    """For JSON targets: share of samples whose top-level field value equals the target's."""
    hits: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        want = _parse(row["target"])
        if not isinstance(want, dict):
            continue
        got = _parse(row["prediction"])
        got = got if isinstance(got, dict) else {}
        for key, value in want.items():
            hits[key].append(int(got.get(key) == value))
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def per_document_type(
    rows: list[dict[str, Any]], metric_names: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Every metric per ``meta.doc_type`` group (``unknown`` when absent).

    With ``metric_names`` each group is scored by the same metric objects as the whole split (corpus BLEU
    over the group's samples, micro F1 over its fields, ...), so a group holding every sample shows the
    split's own values. Without them (predict runs), the mean of the per-sample scores.
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        doc_type = (row.get("meta") or {}).get("doc_type", "unknown")
        groups[str(doc_type)].append(row)
    table = {}
    for doc_type, members in sorted(groups.items()):
        if metric_names:
            table[doc_type] = {"n": len(members), **_group_metrics(metric_names, members)}
            continue
        scores = [row.get("scores", {}) for row in members]
        keys = sorted({k for s in scores for k in s})
        table[doc_type] = {
            "n": len(scores),
            **{k: statistics.fmean(s.get(k, 0.0) for s in scores) for k in keys},
        }
    return table


def _group_metrics(metric_names: Sequence[str], rows: list[dict[str, Any]]) -> dict[str, float]:
    metrics = build_metrics(list(metric_names), sync_on_compute=False)  # rank 0 alone writes reports
    references = [r["target"] if isinstance(r["target"], list) else [r["target"]] for r in rows]
    metrics.update([r["prediction"] for r in rows], references)
    return metrics.compute()


def latency_summary(
    rows: list[dict[str, Any]], batch_size: int | None, usd_per_gpu_hour: float | None
) -> dict:
    """Mean / p50 / p95 per-image latency, images per second and cost per 1,000 images."""
    lat = sorted(float(r["latency_ms"]) for r in rows if "latency_ms" in r)
    if not lat:
        return {}
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
    mean = statistics.fmean(lat)
    images_per_s = 1000.0 / mean if mean > 0 else float("inf")
    out = {
        "mean_ms": mean,
        "p50_ms": statistics.median(lat),
        "p95_ms": p95,
        "images_per_s": images_per_s,
        "batch_size": batch_size,
        # generation is batched: a sample's latency is its batch's time over the batch's samples
        "measured_as": "batch generation time / samples in the batch",
    }
    if usd_per_gpu_hour:
        out["usd_per_gpu_hour"] = usd_per_gpu_hour  # the price the cost is computed from
        out["usd_per_1000_images"] = usd_per_gpu_hour / 3600.0 * 1000.0 / images_per_s
    return out


def markdown_report(
    rows: list[dict[str, Any]],
    metrics: dict[str, float] | None,
    latency: dict,
    by_type: dict[str, dict[str, float]] | None = None,
) -> str:
    """A human-readable report of all the tables (``by_type``: ``per_document_type``'s table)."""
    lines = ["# Evaluation report", ""]
    if metrics:
        lines += (
            ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in metrics.items()] + [""]
        )
    fields = per_field_accuracy(rows)
    if fields:
        lines += ["## Per field", "", "| field | accuracy |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in fields.items()] + [""]
    by_type = per_document_type(rows) if by_type is None else by_type
    if by_type:
        keys = sorted({k for v in by_type.values() for k in v if k != "n"})
        lines += [
            "## Per document type",
            "",
            "| type | n | " + " | ".join(keys) + " |",
            "|---|---|" + "---|" * len(keys),
        ]
        for t, v in by_type.items():
            lines.append(f"| {t} | {v['n']} | " + " | ".join(f"{v.get(k, 0):.4f}" for k in keys) + " |")
        lines.append("")
    lines += ["## Failures", "", "| kind | count | example |", "|---|---|---|"]
    for kind, entry in failure_breakdown(rows).items():
        ex = json.dumps(entry["example"], ensure_ascii=False) if entry["example"] else ""
        lines.append(f"| {kind} | {entry['count']} | {ex.replace('|', '/')} |")
    if latency:
        lines += [
            "",
            "## Latency",
            "",
            "| " + " | ".join(latency) + " |",
            "|" + "---|" * len(latency),
            "| "
            + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in latency.values())
            + " |",
        ]
    return "\n".join(lines) + "\n"
