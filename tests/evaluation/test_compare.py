"""Baseline and fine-tuned runs are compared only when they were evaluated alike."""

from __future__ import annotations

import pytest

from vlm_lightning.evaluation.compare import check_same_evaluation, comparison_table


def _run(budget: int, n: int = 5, metrics: list[str] | None = None) -> dict:
    settings = {"generate_max_new_tokens": budget, "metrics": metrics or ["exact_match"]}
    return {"num_samples": n, "test/exact_match": 0.5, "settings": settings}


def test_same_budget_and_samples_pass() -> None:
    check_same_evaluation(_run(64), _run(64))
    assert "| exact_match | 0.5000 | 0.5000 | +0.0000 |" in comparison_table(_run(64), _run(64))


@pytest.mark.parametrize(
    ("tuned", "named"),
    [
        (_run(256), "generate_max_new_tokens: baseline 64, fine-tuned 256"),
        (_run(64, n=4), "samples: baseline 5, fine-tuned 4"),
        (_run(64, metrics=["anls"]), "metrics: baseline ['exact_match'], fine-tuned ['anls']"),
    ],
)
def test_runs_evaluated_differently_are_refused(tuned: dict, named: str) -> None:
    with pytest.raises(SystemExit, match="not evaluated alike") as info:
        check_same_evaluation(_run(64), tuned)
    assert named in str(info.value)
