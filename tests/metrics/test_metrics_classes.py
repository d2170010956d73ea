"""torchmetrics classes: accumulation, per-sample scores, hand-computed JSON/receipt values, registry."""

from __future__ import annotations

import json

import pytest
import sacrebleu
import torch
from torchmetrics.utilities import dim_zero_sum

from vlm_lightning.metrics import (
    ANLS,
    METRICS,
    ExactMatch,
    JSONMetrics,
    LatexMetrics,
    ReceiptFieldMetrics,
    RelaxedAccuracy,
    TreeEditAccuracy,
    build_metrics,
)
from vlm_lightning.metrics import functional as F

TEXT_PREDS = ["Hello world", "12%", "x^2 + y", "abc", ""]
TEXT_REFS = [["hello  world"], ["0.12", "twelve"], ["x^{2} + y", "x^2 + y"], ["abd"], ["nothing"]]


def receipt(store: str, total: object, n_items: int = 1, **extra: object) -> dict:
    items = [{"name": f"item{i}", "price": 1.0} for i in range(n_items)]
    return {
        "store_name": store,
        "date": "2024-01-02",
        "total": total,
        "currency": "EUR",
        "items": items,
        **extra,
    }


JSON_TARGETS = [receipt("Cafe Rio", 12.5), receipt("Shop", 3, 3), receipt("Deli", 7.25, 2), receipt("Bar", 1)]
JSON_PREDS = [
    "```json\n" + json.dumps(receipt("cafe  rio", "12.50")) + "\n```",
    json.dumps(receipt("Shop", 3.004, 1)),
    "not json at all",
    json.dumps(receipt("Bar", 1)),
]
JSON_REFS = [[json.dumps(t, separators=(",", ":"))] for t in JSON_TARGETS]


def _data(name: str) -> tuple[list[str], list[list[str]]]:
    return (JSON_PREDS, JSON_REFS) if name in ("json", "receipt", "tree") else (TEXT_PREDS, TEXT_REFS)


def _values(metric: torch.nn.Module) -> dict[str, float]:
    return {k: float(v) for k, v in metric.compute().items()}


# --- accumulation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRICS))
def test_two_updates_equal_one(name: str) -> None:
    preds, refs = _data(name)
    split, whole = METRICS[name](), METRICS[name]()
    split.update(preds[:2], refs[:2])
    split.update(preds[2:], refs[2:])
    whole.update(preds, refs)
    a, b = _values(split), _values(whole)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-12), key


@pytest.mark.parametrize("name", sorted(METRICS))
def test_single_sample_compute_equals_score_sample(name: str) -> None:
    preds, refs = _data(name)
    for pred, ref in zip(preds, refs):
        metric = METRICS[name]()
        metric.update([pred], [ref])
        computed = _values(metric)
        scored = metric.score_sample(pred, ref)
        if name == "latex":  # per-sample BLEU is sentence BLEU (effective order)
            computed.pop("bleu"), scored.pop("sentence_bleu")
        assert computed == pytest.approx(scored, abs=1e-12)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_mean_of_score_sample_for_mean_metrics(name: str) -> None:
    preds, refs = _data(name)
    metric = METRICS[name]()
    metric.update(preds, refs)
    computed = _values(metric)
    per_sample = [metric.score_sample(p, r) for p, r in zip(preds, refs)]
    micro = {"bleu", "field_f1", "json_field_precision", "json_field_recall", "json_field_f1", "cer"}
    for key in computed.keys() - micro:
        assert computed[key] == pytest.approx(sum(s[key] for s in per_sample) / len(preds)), key


def test_update_rejects_mismatched_batch_and_empty_references() -> None:
    with pytest.raises(ValueError):
        ExactMatch().update(["a", "b"], [["a"]])
    with pytest.raises(ValueError):
        ExactMatch().update(["a"], [[]])


def test_reset_clears_states() -> None:
    metric = ExactMatch()
    metric.update(["a"], [["a"]])
    metric.reset()
    metric.update(["a"], [["b"]])
    assert _values(metric) == {"exact_match": 0.0}


# --- consistency with the functional API ----------------------------------------------------------------


def test_text_score_sample_matches_functional() -> None:
    for pred, refs in zip(TEXT_PREDS, TEXT_REFS):
        assert ANLS().score_sample(pred, refs) == {"anls": F.anls(pred, refs)}
        relaxed = float(any(F.relaxed_correctness(pred, r) for r in refs))
        assert RelaxedAccuracy().score_sample(pred, refs) == {"relaxed_accuracy": relaxed}
        exact = float(any(F.exact_match(pred, r) for r in refs))
        assert ExactMatch().score_sample(pred, refs) == {"exact_match": exact}


def test_text_metric_values() -> None:
    metric = build_metrics(["anls", "relaxed_accuracy", "exact_match"])
    metric.update(TEXT_PREDS, TEXT_REFS)
    values = metric.compute()
    # anls: 1, 0 ("12%"), 1 ("x^2 + y"), 2/3 ("abc" vs "abd"), 0 (empty)
    assert values["anls"] == pytest.approx((1 + 0 + 1 + 2 / 3 + 0) / 5)
    # relaxed: "12%" and "x^2 + y"; "Hello world" vs "hello  world" differs by a space (no normalising)
    assert values["relaxed_accuracy"] == pytest.approx(2 / 5)
    assert values["exact_match"] == pytest.approx(1 / 5)  # only "x^2 + y"


def test_threshold_and_tolerance_are_passed() -> None:
    assert ANLS(threshold=0.7).score_sample("abc", ["abd"]) == {"anls": 0.0}
    assert RelaxedAccuracy(tolerance=0.2).score_sample("115", ["100"]) == {"relaxed_accuracy": 1.0}


def test_latex_bleu_equals_sacrebleu_corpus() -> None:
    preds = ["\\frac { a } { b }", "x ^ { 2 } + y", "\\sqrt { x }", "a + b = c"]
    first = ["\\frac { a } { b }", "x ^ 2 + y", "\\sqrt { y }", "a - b = c"]
    second = ["\\frac a b", "x ^ { 2 } + y", "\\sqrt x", "a + b = d"]
    expected = sacrebleu.corpus_bleu(preds, [first, second], tokenize="13a").score
    metric = LatexMetrics()
    metric.update(preds[:1], [[first[0], second[0]]])
    metric.update(preds[1:], [[f, s] for f, s in zip(first[1:], second[1:])])
    values = _values(metric)
    assert values["bleu"] == pytest.approx(expected)
    assert values["exact_match"] == pytest.approx(2 / 4)
    best = [
        min(F.normalized_edit_distance(p, f), F.normalized_edit_distance(p, s))
        for p, f, s in zip(preds, first, second)
    ]
    assert values["normalized_edit_distance"] == pytest.approx(sum(best) / 4)
    sentence = sacrebleu.sentence_bleu(preds[2], [first[2], second[2]], tokenize="13a").score
    assert metric.score_sample(preds[2], [first[2], second[2]])["sentence_bleu"] == pytest.approx(sentence)


def test_tree_matches_functional() -> None:
    metric = TreeEditAccuracy()
    metric.update(JSON_PREDS, JSON_REFS)
    parsed = [F.extract_json(p) or {} for p in JSON_PREDS]
    values = _values(metric)
    assert values["ted_accuracy"] == pytest.approx(
        sum(F.ted_accuracy(p, t) for p, t in zip(parsed, JSON_TARGETS)) / len(parsed)
    )
    assert values["field_f1"] == pytest.approx(F.field_f1(parsed, JSON_TARGETS))
    assert metric.score_sample(JSON_PREDS[3], JSON_REFS[3]) == {"ted_accuracy": 1.0, "field_f1": 1.0}


def test_tree_uses_best_reference() -> None:
    refs = [json.dumps({"a": "zzz"}), json.dumps({"a": "xyz"})]
    assert TreeEditAccuracy().score_sample('{"a": "xyz"}', refs) == {"ted_accuracy": 1.0, "field_f1": 1.0}


# --- JSON metrics -----------------------------------------------------------------------------------------


def test_json_metrics_hand_computed() -> None:
    scores = JSONMetrics().score_sample('{"a": 1, "b": "x"}', ['{"a":1,"b":"y","c":2}'])
    # key paths: pred {a, b}, target {a, b, c}; equal values on "a" only
    # canonical dumps {"a":1,"b":"x"} vs {"a":1,"b":"y","c":2}: 1 substitution + 6 insertions over 21
    assert scores == pytest.approx(
        {
            "json_valid_rate": 1.0,
            "json_structure_similarity": 2 / 3,
            "json_value_accuracy": 1 / 2,
            "json_field_precision": 1 / 2,
            "json_field_recall": 1 / 3,
            "json_field_f1": 2 / 5,
            "json_value_similarity": (1 + 0) / 2,
            "json_edit_distance": 7 / 21,
            "json_score": 0.5 * 2 / 5 + 0.25 * 2 / 3 + 0.25 * (1 - 7 / 21),
        }
    )


def test_json_invalid_prediction_counts_zero() -> None:
    target = '{"a":1,"b":"y"}'
    scores = JSONMetrics().score_sample("not json", [target])
    assert scores["json_edit_distance"] == pytest.approx(F.normalized_edit_distance("not json", target))
    assert {k: v for k, v in scores.items() if k != "json_edit_distance"} == dict.fromkeys(
        [k for k in scores if k != "json_edit_distance"], 0.0
    )


def test_json_micro_f1_counts_misses_of_invalid_predictions() -> None:
    metric = JSONMetrics()
    metric.update(['{"a": 1}', "oops"], [['{"a":1}'], ['{"a":1,"b":2,"c":3}']])
    values = _values(metric)
    assert values["json_valid_rate"] == 0.5
    assert values["json_field_precision"] == 1.0
    assert values["json_field_recall"] == pytest.approx(1 / 4)
    assert values["json_field_f1"] == pytest.approx(2 * 1 / (1 + 4))


def test_json_reference_must_be_json() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        JSONMetrics().update(['{"a": 1}'], [["plain text"]])


# --- receipts -------------------------------------------------------------------------------------------


def test_receipt_fields_hand_computed() -> None:
    metric = ReceiptFieldMetrics()
    metric.update(JSON_PREDS, JSON_REFS)
    values = _values(metric)
    # sample 0: all four fields match ("cafe  rio" ~ "Cafe Rio", "12.50" ~ 12.5), items 1 vs 1
    # sample 1: total 3.004 ~ 3 within 0.01; items 1 vs 3 -> count wrong; object differs
    # sample 2: invalid -> 0 everywhere; sample 3: identical
    assert values["field_acc/store_name"] == pytest.approx(3 / 4)
    assert values["field_acc/total"] == pytest.approx(3 / 4)
    assert values["field_acc/date"] == pytest.approx(3 / 4)
    assert values["items_count_acc"] == pytest.approx(2 / 4)
    assert values["partial_match"] == pytest.approx(3 / 4)
    assert values["object_exact_match"] == pytest.approx(1 / 4)


def test_receipt_partial_match_and_numbers() -> None:
    target = json.dumps(receipt("Shop", 1234, 2))
    two_wrong = json.dumps(receipt("Other", 99, 3) | {"date": "2024-01-02"})
    one_wrong = json.dumps(receipt("Shop", "$1,234.00", 3) | {"currency": "USD"})
    assert ReceiptFieldMetrics().score_sample(two_wrong, [target])["partial_match"] == 0.0
    scores = ReceiptFieldMetrics().score_sample(one_wrong, [target])
    assert scores["field_acc/total"] == 1.0
    assert scores["partial_match"] == 1.0
    assert scores["items_count_acc"] == 1.0
    assert scores["object_exact_match"] == 0.0
    far = json.dumps(receipt("Shop", 1234.02, 2))
    assert ReceiptFieldMetrics().score_sample(far, [target])["field_acc/total"] == 0.0


def test_receipt_custom_fields() -> None:
    metric = ReceiptFieldMetrics(fields=("total",))
    scores = metric.score_sample('{"total": "7.25"}', [json.dumps({"total": 7.25, "items": []})])
    assert scores == {
        "field_acc/total": 1.0,
        "items_count_acc": 1.0,
        "partial_match": 1.0,
        "object_exact_match": 0.0,
    }


# --- registry -------------------------------------------------------------------------------------------


def test_build_metrics_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="relaxed_accuracy"):
        build_metrics(["anls", "bogus"])


def test_build_metrics_routes_kwargs_and_rejects_unused() -> None:
    metrics = build_metrics(["anls", "receipt"], threshold=0.9, fields=("total",))
    assert metrics.metrics["anls"].threshold == 0.9
    assert metrics.metrics["receipt"].fields == ("total",)
    with pytest.raises(TypeError, match="nonsense"):
        build_metrics(["anls"], nonsense=1)


def test_document_metrics_merges_and_renames_collisions() -> None:
    metrics = build_metrics(["exact_match", "latex"])
    metrics.update(["a b"], [["a  b"]])
    values = metrics.compute()
    assert values["exact_match"] == 1.0 and values["latex/exact_match"] == 1.0
    assert all(isinstance(v, float) for v in values.values())
    assert metrics.score_sample("a b", ["c"])["latex/exact_match"] == 0.0
    metrics.reset()
    metrics.update(["a"], [["b"]])
    assert metrics.compute()["exact_match"] == 0.0


def test_states_are_scalar_sums() -> None:
    for name, cls in METRICS.items():
        metric = cls()
        assert metric.metric_state, name
        for state, value in metric.metric_state.items():
            assert isinstance(value, torch.Tensor) and value.ndim == 0, (name, state)
            assert metric._reductions[state] is dim_zero_sum, (name, state)


def test_build_metrics_passes_torchmetrics_kwargs() -> None:
    metrics = build_metrics(["exact_match", "receipt"], sync_on_compute=False)
    assert all(not m.sync_on_compute for m in metrics.metrics.values())


def test_character_error_rate_is_corpus_edits_over_reference_chars() -> None:
    metric = METRICS["cer"]()
    metric.update(["abcd", "xyz", "Q7"], [["abce"], ["xy", "zzz"], ["q7"]])
    # abcd/abce: 1 edit of 4; xyz: the closest reference is "xy" (1 edit of 2); Q7/q7: case counts, 1 of 2
    assert _values(metric)["cer"] == pytest.approx(3 / 8)
    assert metric.score_sample("xyz", ["xy", "zzz"])["cer"] == pytest.approx(0.5)
    try:
        from torchmetrics.text import CharErrorRate
    except ImportError:  # pragma: no cover - torchmetrics is a dependency
        return
    reference = CharErrorRate()(["abcd", "xyz", "Q7"], ["abce", "xy", "q7"])
    assert _values(metric)["cer"] == pytest.approx(float(reference))
