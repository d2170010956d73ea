"""Write predictions (JSONL + CSV) and metrics from per-sample rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def write_reports(folder: Path, rows: list[dict[str, Any]], metrics: dict[str, float] | None) -> dict[str, Path]:
    """Write predictions.jsonl / .csv (sorted by id order of arrival) and metrics.json; return the paths."""
    written: dict[str, Path] = {}
    pred_path = folder / "predictions.jsonl"
    with pred_path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    written["predictions"] = pred_path
    csv_path = folder / "predictions.csv"
    score_keys = sorted({k for r in rows for k in r.get("scores", {})})
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt", "prediction", "target", "latency_ms", *score_keys])
        for r in rows:
            target = r["target"] if isinstance(r["target"], str) else json.dumps(r["target"], ensure_ascii=False)
            scores = r.get("scores", {})
            writer.writerow([r["id"], r["prompt"], r["prediction"], target, r["latency_ms"],
                             *[scores.get(k, "") for k in score_keys]])
    written["predictions_csv"] = csv_path
    if metrics is not None:
        metrics_path = folder / "metrics.json"
        payload = {"num_samples": len(rows), **dict(sorted(metrics.items()))}
        metrics_path.write_text(json.dumps(payload, indent=2) + "\n")
        written["metrics"] = metrics_path
    return written
