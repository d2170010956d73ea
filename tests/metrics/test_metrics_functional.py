"""Hand-computed cases for the pure metric functions (references: DocVQA/lmms-eval, pix2struct, Donut)."""

from __future__ import annotations

import pytest

from vlm_lightning.metrics import functional as F

# --- ANLS ---------------------------------------------------------------------------------------------


def test_anls_ignores_case_and_whitespace() -> None:
    assert F.anls("  Hello   WORLD ", ["hello world"]) == 1.0


def test_anls_takes_best_answer() -> None:
    # "abcd" vs "abce": distance 1 over length 4
    assert F.anls("abcd", ["xyz", "abce"]) == pytest.approx(0.75)


def test_anls_exact_threshold_is_kept() -> None:
    assert F.anls("ab", ["ac"]) == pytest.approx(0.5)


def test_anls_below_threshold_is_zero() -> None:
    # distance 2 over 3 -> similarity 1/3 < 0.5
    assert F.anls("abc", ["axy"]) == 0.0
    assert F.anls("abc", ["axc"], threshold=0.7) == 0.0
    assert F.anls("abc", ["axc"], threshold=0.6) == pytest.approx(2 / 3)


def test_anls_denominator_uses_raw_lengths() -> None:
    # official script / lmms-eval: distance on normalised strings ("ab" vs "ac" = 1),
    # divided by the longer *raw* length (6 for "  ab  ")
    assert F.anls("  ab  ", ["ac"]) == pytest.approx(1 - 1 / 6)


def test_anls_empty_strings() -> None:
    assert F.anls("", [""]) == 1.0
    assert F.anls("", ["abc"]) == 0.0
    assert F.anls("abc", [""]) == 0.0


def test_anls_needs_an_answer() -> None:
    with pytest.raises(ValueError):
        F.anls("abc", [])


# --- relaxed correctness --------------------------------------------------------------------------------


def test_relaxed_percentage_equals_fraction() -> None:
    assert F.relaxed_correctness("12%", "0.12")
    assert F.relaxed_correctness("0.12", "12%")
    assert not F.relaxed_correctness("12", "0.12")


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [("100", True), ("104", True), ("105", True), ("95", True), ("105.1", False), ("94.9", False)],
)
def test_relaxed_tolerance_boundaries(prediction: str, expected: bool) -> None:
    assert F.relaxed_correctness(prediction, "100") is expected


def test_relaxed_custom_tolerance() -> None:
    assert F.relaxed_correctness("110", "100", tolerance=0.1)
    assert not F.relaxed_correctness("110", "100")


def test_relaxed_strings_case_insensitive_unstripped() -> None:
    assert F.relaxed_correctness("Yes", "yes")
    assert not F.relaxed_correctness("yes ", "yes")
    assert not F.relaxed_correctness("abc", "12")


def test_relaxed_target_zero_falls_back_to_string_equality() -> None:
    assert F.relaxed_correctness("0", "0")
    assert not F.relaxed_correctness("0.0", "0")
    assert not F.relaxed_correctness("0.001", "0")


# --- edit distance, exact match -------------------------------------------------------------------------


def test_normalized_edit_distance() -> None:
    assert F.normalized_edit_distance("", "") == 0.0
    assert F.normalized_edit_distance("", "ab") == 1.0
    assert F.normalized_edit_distance("abc", "abd") == pytest.approx(1 / 3)
    assert F.normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)


def test_exact_match_whitespace_but_not_case() -> None:
    assert F.exact_match(" a  b\n", "a b")
    assert not F.exact_match("A b", "a b")
    assert not F.exact_match("ab", "a b")


# --- JSON extraction and flattening ---------------------------------------------------------------------


def test_extract_json_from_fence() -> None:
    text = 'Sure:\n```json\n{"total": 12.5, "items": [1, 2]}\n```\nDone.'
    assert F.extract_json(text) == {"total": 12.5, "items": [1, 2]}


def test_extract_json_fence_wins_over_earlier_brackets() -> None:
    assert F.extract_json('see [1]\n```\n{"a": 1}\n```') == {"a": 1}


def test_extract_json_with_surrounding_text() -> None:
    assert F.extract_json('The answer is {"a": {"b": [1, {"c": null}]}} as requested.') == {
        "a": {"b": [1, {"c": None}]}
    }


def test_extract_json_skips_brackets_that_do_not_parse() -> None:
    assert F.extract_json('[note] here: [{"x": [1, [2, 3]]}, []] end') == [{"x": [1, [2, 3]]}, []]


@pytest.mark.parametrize("text", ["", "no json here", "{'a': 1}", '{"a": 1', "42", "null", '"s"'])
def test_extract_json_invalid_is_none(text: str) -> None:
    assert F.extract_json(text) is None


def test_flatten_json_paths() -> None:
    obj = {"items": [{"price": 1.5, "name": "tea"}], "meta": {"ok": True, "note": None}, "tags": []}
    assert F.flatten_json(obj) == {
        "items.0.price": "1.5",
        "items.0.name": "tea",
        "meta.ok": "true",
        "meta.note": "null",
        "tags": "[]",
    }
    assert F.flatten_json({}) == {"": "{}"}
    assert F.flatten_json(["a"]) == {"0": "a"}


# --- Donut tree edit distance and F1 --------------------------------------------------------------------

GT = {"menu": [{"nm": "cake", "cnt": "2"}, {"nm": "juice", "cnt": "1"}]}
# Tree size TED(empty, GT): menu 1 + two <subtree> 2 + four keys 4 + leaves cake 4, 2 1, juice 5, 1 1 = 18


def test_ted_perfect_and_key_order() -> None:
    reordered = {"menu": [{"cnt": "2", "nm": "cake"}, {"cnt": "1", "nm": "juice"}]}
    assert F.ted_accuracy(reordered, GT) == 1.0


def test_ted_one_leaf_changed() -> None:
    pred = {"menu": [{"nm": "cake", "cnt": "2"}, {"nm": "juice", "cnt": "3"}]}
    assert F.ted_accuracy(pred, GT) == pytest.approx(1 - 1 / 18)
    # fields: 3 shared, ("menu.cnt", "3") false positive, ("menu.cnt", "1") false negative
    assert F.field_f1([pred], [GT]) == pytest.approx(3 / (3 + 2 / 2))


def test_ted_missing_list_item() -> None:
    pred = {"menu": [{"nm": "cake", "cnt": "2"}]}
    # delete <subtree> 1 + nm 1 + cnt 1 + "juice" 5 + "1" 1 = 9
    assert F.ted_accuracy(pred, GT) == pytest.approx(1 - 9 / 18)
    assert F.field_f1([pred], [GT]) == pytest.approx(2 / (2 + 2 / 2))


def test_ted_nested_list_in_list() -> None:
    gt = {"menu": [{"nm": "tea", "sub": [{"nm": "milk"}, {"nm": "ice"}]}]}
    pred = {"menu": [{"nm": "tea", "sub": [{"nm": "milk"}]}]}
    # size: menu, <subtree>, nm, "tea" 3, sub, 2 x (<subtree>, nm), "milk" 4, "ice" 3 = 4 + 3 + 4 + 4 + 3 = 18
    # missing: <subtree> 1 + nm 1 + "ice" 3 = 5
    assert F.ted_accuracy(pred, gt) == pytest.approx(1 - 5 / 18)
    assert F.field_f1([pred], [gt]) == pytest.approx(2 / (2 + 1 / 2))


def test_ted_clipped_at_zero_and_empty_prediction() -> None:
    assert F.ted_accuracy({"other": "x" * 50}, GT) == 0.0
    assert F.ted_accuracy({}, GT) == 0.0


def test_ted_empty_target_is_zero_like_donut() -> None:
    assert F.ted_accuracy({}, {}) == 0.0
    assert F.ted_accuracy({"a": "b"}, {"a": 0}) == 0.0


def test_donut_normalisation_quirks() -> None:
    # falsy values and non-scalar list items are dropped; numbers become stripped strings
    assert F.normalize_dict({"b": 0, "a": [1, " x ", None, [2]], "cc": ""}) == {"a": ["1", "x"]}
    assert F.ted_accuracy({"total": 12}, {"total": "12"}) == 1.0


def test_field_f1_is_micro_over_corpus() -> None:
    pred_a = {"menu": [{"nm": "cake", "cnt": "2"}, {"nm": "juice", "cnt": "3"}]}  # tp 3, other 2
    pred_b = {"x": "1"}  # vs {"x": "1", "y": "2"}: tp 1, other 1
    gt_b = {"x": "1", "y": "2"}
    assert F.field_f1([pred_a, pred_b], [GT, gt_b]) == pytest.approx(4 / (4 + 3 / 2))
    assert F.field_f1([{}], [{}]) == 0.0
    with pytest.raises(ValueError):
        F.field_f1([{}], [])


def test_extract_json_ignores_fragments_nested_in_a_broken_object() -> None:
    from vlm_lightning.metrics.functional import extract_json

    broken = '{"store_name": "Coo", "items": [{"name": "Tea", "price": 1.0}'
    assert extract_json(broken) is None
    assert extract_json('{"a": "x" {"b": 1}') is None
    assert extract_json('Sure: {"a": [1, {"b": "}"}]} bye') == {"a": [1, {"b": "}"}]}
