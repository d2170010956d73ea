"""``infer``'s batch-mode files: a JSONL path, or a folder that gets both files inside it."""

from __future__ import annotations

import json
from pathlib import Path

from vlm_lightning.deploy.prediction_files import write_predictions

ROWS = [{"id": "a", "prompt": "P", "prediction": "x", "target": None, "latency_ms": 1.0}]


def test_a_file_path_gets_the_csv_beside_it(tmp_path: Path) -> None:
    jsonl, csv_path = write_predictions(ROWS, tmp_path / "out" / "preds.jsonl")
    assert jsonl == tmp_path / "out" / "preds.jsonl" and csv_path == tmp_path / "out" / "preds.csv"
    assert [json.loads(line)["id"] for line in jsonl.read_text().splitlines()] == ["a"]


def test_an_existing_folder_gets_both_files_inside_it(tmp_path: Path) -> None:
    folder = tmp_path / "outdir"
    folder.mkdir()
    jsonl, csv_path = write_predictions(ROWS, folder)
    assert (jsonl, csv_path) == (folder / "predictions.jsonl", folder / "predictions.csv")
    assert jsonl.is_file() and csv_path.is_file() and not (tmp_path / "outdir.csv").exists()
