"""Write predictions (JSONL + CSV) and metrics from per-sample rows."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlm_lightning.evaluation.breakdown import (
    failure_breakdown,
    latency_summary,
    markdown_report,
    per_document_type,
    per_field_accuracy,
)
from vlm_lightning.metrics.functional import extract_json


def write_reports(
    folder: Path,
    rows: list[dict[str, Any]],
    metrics: dict[str, float] | None,
    batch_size: int | None = None,
    usd_per_gpu_hour: float | None = None,
    settings: dict[str, Any] | None = None,
    metric_names: Sequence[str] | None = None,
    skipped_rows: int = 0,
) -> dict[str, Path]:
    """Write predictions.jsonl / .csv, metrics.json and report.md (breakdowns, latency); return the paths.

    ``metric_names`` (the run's metrics) score each document type with the split's own definitions;
    ``skipped_rows``: rows of the split that ``data.on_bad_row: skip`` left out (said in both reports).
    """
    written: dict[str, Path] = {}
    for row in rows:
        if isinstance(row.get("target"), str) and row["target"].lstrip().startswith(("{", "[")):
            row["parsed"] = extract_json(row["prediction"])
    pred_path = folder / "predictions.jsonl"
    with pred_path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    written["predictions"] = pred_path
    csv_path = folder / "predictions.csv"
    score_keys = sorted({k for r in rows for k in r.get("scores", {})})
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt", "prediction", "target", "parsed", "latency_ms", *score_keys])
        for r in rows:
            target = (
                r["target"] if isinstance(r["target"], str) else json.dumps(r["target"], ensure_ascii=False)
            )
            scores = r.get("scores", {})
            parsed = json.dumps(r["parsed"], ensure_ascii=False) if r.get("parsed") is not None else ""
            writer.writerow(
                [
                    r["id"],
                    r["prompt"],
                    r["prediction"],
                    target,
                    parsed,
                    r["latency_ms"],
                    *[scores.get(k, "") for k in score_keys],
                ]
            )
    written["predictions_csv"] = csv_path
    if metrics is not None:
        metrics_path = folder / "metrics.json"
        latency = latency_summary(rows, batch_size, usd_per_gpu_hour)
        by_type = per_document_type(rows, metric_names)
        payload = {
            "num_samples": len(rows),
            "skipped_rows": skipped_rows,
            **dict(sorted(metrics.items())),
            "per_field": per_field_accuracy(rows),
            "per_document_type": by_type,
            "failures": {k: v["count"] for k, v in failure_breakdown(rows).items()},
            "latency": latency,
            "settings": settings or {},
        }
        metrics_path.write_text(json.dumps(payload, indent=2) + "\n")
        written["metrics"] = metrics_path
        report = folder / "report.md"
        text = markdown_report(rows, metrics, latency, by_type)
        notes = []
        if settings and "checkpoint" in settings:
            notes.append(f"checkpoint: {settings['checkpoint'] or 'none (the base model as loaded)'}")
        if skipped_rows:
            notes.append(
                f"{len(rows)} samples scored; {skipped_rows} bad rows skipped (listed in skipped_rows.txt)"
            )
        if notes:
            text = text.replace(
                "# Evaluation report\n", "# Evaluation report\n\n" + "\n\n".join(notes) + "\n", 1
            )
        report.write_text(text)
        written["report"] = report
    return written
