"""Per-document-type tables use the split's own metric definitions (one BLEU, not two)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_lightning.evaluation.breakdown import per_document_type
from vlm_lightning.evaluation.report import write_reports
from vlm_lightning.metrics import build_metrics

PREDICTIONS = [r"\frac{a}{b}", r"x^{2} + y", r"\sum_{i=1}^{n} i", r"\alpha"]
TARGETS = [r"\frac{a}{b}", r"x^{2} + z", r"\sum_{i=0}^{n} i", r"\beta"]


def _rows(doc_types: list[str]) -> list[dict]:
    metric = build_metrics(["latex"], sync_on_compute=False)
    return [
        {
            "id": f"s{i}",
            "prompt": "p",
            "prediction": p,
            "target": t,
            "latency_ms": 1.0,
            "meta": {"doc_type": d},
            "scores": metric.score_sample(p, [t]),
        }
        for i, (p, t, d) in enumerate(zip(PREDICTIONS, TARGETS, doc_types))
    ]


def _split_values() -> dict[str, float]:
    metric = build_metrics(["latex"], sync_on_compute=False)
    metric.update(PREDICTIONS, [[t] for t in TARGETS])
    return metric.compute()


def test_one_group_holding_every_sample_shows_the_split_values(tmp_path: Path) -> None:
    rows = _rows(["formula"] * 4)
    split = _split_values()
    table = per_document_type(rows, ["latex"])["formula"]
    assert table["n"] == 4
    for key in ("bleu", "normalized_edit_distance", "exact_match"):
        assert table[key] == pytest.approx(split[key]), key
    # the per-sample score is named sentence_bleu: it is not the corpus bleu
    assert "bleu" not in rows[0]["scores"] and "sentence_bleu" in rows[0]["scores"]
    mean_sentence = sum(r["scores"]["sentence_bleu"] for r in rows) / 4
    assert mean_sentence != pytest.approx(split["bleu"])  # why the two must not share a name
    metrics = {f"test/{k}": v for k, v in split.items()}
    write_reports(tmp_path, rows, metrics, metric_names=["latex"])
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["per_document_type"]["formula"]["bleu"] == pytest.approx(written["test/bleu"])
    report = (tmp_path / "report.md").read_text()
    assert f"| test/bleu | {split['bleu']:.4f} |" in report
    assert f"| formula | 4 | {split['bleu']:.4f} |" in report


def test_groups_are_scored_on_their_own_samples() -> None:
    rows = _rows(["a", "a", "b", "b"])
    table = per_document_type(rows, ["latex"])
    assert table["a"]["n"] == table["b"]["n"] == 2
    assert table["a"]["exact_match"] == pytest.approx(0.5) and table["b"]["exact_match"] == 0.0
