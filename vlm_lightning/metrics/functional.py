"""Pure metric functions on generated text, matching the public reference implementations.

* ``anls``: the DocVQA / InfographicsVQA evaluation script as used by lmms-eval.
* ``relaxed_correctness``: pix2struct ``metrics.relaxed_correctness`` (ChartQA).
* ``ted_accuracy`` / ``field_f1``: Donut ``JSONParseEvaluator.cal_acc`` / ``cal_f1``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import zss
from rapidfuzz.distance import Levenshtein

__all__ = [
    "anls",
    "canonical_json",
    "construct_tree_from_dict",
    "donut_flatten",
    "exact_match",
    "extract_json",
    "f1_from_counts",
    "field_f1",
    "field_f1_counts",
    "flatten_json",
    "normalize_dict",
    "normalized_edit_distance",
    "relaxed_correctness",
    "ted_accuracy",
    "tree_edit_distance",
]


# --- plain text -----------------------------------------------------------------------------------
def normalized_edit_distance(a: str, b: str) -> float:
    """Levenshtein distance divided by the longer length; 0.0 when both strings are empty."""
    length = max(len(a), len(b))
    return 0.0 if length == 0 else Levenshtein.distance(a, b) / length


def exact_match(prediction: str, target: str) -> bool:
    """Equality after collapsing whitespace runs and stripping the ends; case-sensitive."""
    return " ".join(prediction.split()) == " ".join(target.split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one question (official DocVQA rules).

    Both strings are lowercased and whitespace-collapsed before the Levenshtein distance, which is
    divided, as in the official script and lmms-eval, by the longer of the *raw* string lengths.
    The score is ``1 - min`` over the answers of that normalised distance, set to 0 when it is
    below ``threshold`` (a score of exactly ``threshold`` is kept). A prediction and an answer that
    are both empty give a distance of 0, hence a score of 1.0. A lone string counts as one answer.
    """
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("anls needs at least one answer")
    detected = " ".join(prediction.strip().lower().split())
    values = []
    for answer in answers:
        truth = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else Levenshtein.distance(truth, detected) / length)
    score = 1.0 - min(values)
    return 0.0 if score < threshold else score


def _to_float(text: str) -> float | None:
    """pix2struct's parser: ``float()``, a trailing ``%`` divides by 100, anything else is None."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, tolerance: float = 0.05) -> bool:
    """ChartQA relaxed correctness, exactly as pix2struct.

    When the target parses as a non-zero float and the prediction parses too, the relative change
    ``|pred - target| / |target|`` must be ``<= tolerance``. Otherwise (a target of 0 included) it is
    case-insensitive string equality, without stripping.
    """
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= tolerance
    return prediction.lower() == target.lower()


# --- JSON parsing -------------------------------------------------------------------------------
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


def _top_level_openings(text: str) -> list[int]:
    """Positions of ``{`` / ``[`` not nested inside an earlier bracket (strings are skipped)."""
    positions: list[int] = []
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"' and depth > 0:
            in_string = True
        elif ch in "{[":
            if depth == 0:
                positions.append(i)
            depth += 1
        elif ch in "}]" and depth > 0:
            depth -= 1
    return positions


def _first_json_in(text: str) -> dict | list | None:
    """The first top-level JSON object or array of ``text`` that decodes.

    A fragment nested inside a broken object (``{"a": "x" {"b": 1}``) does not count: only brackets
    at nesting depth 0 are candidates, so a truncated or malformed answer is invalid JSON.
    """
    for start in _top_level_openings(text):
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            continue
        return value
    return None


def extract_json(text: str) -> dict | list | None:
    """Parse the first JSON object/array of ``text``; None when there is none.

    Code fences (```json ... ```) are searched first, then the whole text, so that prose before or
    after the object is ignored. Bare scalars (``"5"``, ``"null"``) are not accepted.
    """
    if not isinstance(text, str):
        return None
    for block in _FENCE.findall(text):
        value = _first_json_in(block)
        if value is not None:
            return value
    return _first_json_in(text)


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys, the form compared by the JSON edit distance."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _leaf_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def flatten_json(obj: Any) -> dict[str, str]:
    """Map key paths (``items.0.price``) to leaf value strings.

    Strings are kept as they are, other scalars are JSON-encoded (``12.5``, ``true``, ``null``), so
    ``"12.5"`` and ``12.5`` flatten to the same value. Empty containers are leaves (``{}``, ``[]``);
    a top-level scalar or empty container has the path ``""``.
    """
    flat: dict[str, str] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and value:
            items = value.items()
        elif isinstance(value, list) and value:
            items = enumerate(value)
        else:
            flat[path] = _leaf_text(value)
            return
        for key, child in items:
            walk(child, f"{path}.{key}" if path else str(key))

    walk(obj, "")
    return flat


# --- Donut JSONParseEvaluator ------------------------------------------------------------------------
def normalize_dict(data: Any) -> Any:
    """Donut's ``normalize_dict``: keys sorted by (length, key), leaves as lists of stripped strings.

    Falsy values (``0``, ``""``, ``[]``, ``None``) and list items that are not str/int/float are
    dropped, exactly as Donut does.
    """
    if not data:
        return {}
    if isinstance(data, dict):
        new_data: Any = {}
        for key in sorted(data.keys(), key=lambda k: (len(k), k)):
            value = normalize_dict(data[key])
            if value:
                new_data[key] = value if isinstance(value, list) else [value]
    elif isinstance(data, list):
        if all(isinstance(item, dict) for item in data):
            new_data = [item for item in (normalize_dict(item) for item in data) if item]
        else:
            new_data = [str(i).strip() for i in data if type(i) in {str, int, float} and str(i).strip()]
    else:
        new_data = [str(data).strip()]
    return new_data


def donut_flatten(data: Any) -> list[tuple[str, Any]]:
    """Donut's ``flatten``: (dotted key, leaf) pairs; list items share their parent's key."""
    pairs: list[tuple[str, Any]] = []

    def walk(value: Any, key: str = "") -> None:
        if type(value) is dict:
            for child_key, child in value.items():
                walk(child, f"{key}.{child_key}" if key else child_key)
        elif type(value) is list:
            for item in value:
                walk(item, key)
        else:
            pairs.append((key, value))

    walk(data)
    return pairs


def construct_tree_from_dict(data: dict | list, node_name: str | None = None) -> zss.Node:
    """Donut's tree: dict keys are nodes, lists of dicts give ``<subtree>`` nodes, leaves ``<leaf>x``."""
    node = zss.Node("<root>" if node_name is None else node_name)
    if isinstance(data, dict):
        for key, value in data.items():
            node.addkid(construct_tree_from_dict(value, key))
    elif isinstance(data, list):
        if all(isinstance(item, dict) for item in data):
            for item in data:
                node.addkid(construct_tree_from_dict(item, "<subtree>"))
        else:
            for item in data:
                node.addkid(zss.Node(f"<leaf>{item}"))
    else:
        raise TypeError(f"cannot build a tree from {data!r} at node {node_name!r}")
    return node


def _update_cost(node1: zss.Node, node2: zss.Node) -> int:
    """Leaf/leaf: string edit distance; leaf/non-leaf: 1 + leaf length; else 0/1 label mismatch."""
    label1, label2 = node1.label, node2.label
    leaf1, leaf2 = "<leaf>" in label1, "<leaf>" in label2
    if leaf1 and leaf2:
        return Levenshtein.distance(label1.replace("<leaf>", ""), label2.replace("<leaf>", ""))
    if leaf2:
        return 1 + len(label2.replace("<leaf>", ""))
    if leaf1:
        return 1 + len(label1.replace("<leaf>", ""))
    return int(label1 != label2)


def _insert_remove_cost(node: zss.Node) -> int:
    """A leaf costs its text length, any other node 1."""
    label = node.label
    return len(label.replace("<leaf>", "")) if "<leaf>" in label else 1


def tree_edit_distance(a: zss.Node, b: zss.Node) -> float:
    """Zhang-Shasha distance with Donut's insert/remove/update costs."""
    distance = zss.distance(
        a,
        b,
        get_children=zss.Node.get_children,
        insert_cost=_insert_remove_cost,
        remove_cost=_insert_remove_cost,
        update_cost=_update_cost,
        return_operations=False,
    )
    return float(distance)


def ted_accuracy(prediction: dict | list, target: dict | list) -> float:
    """Donut ``cal_acc``: ``max(0, 1 - TED(pred, gt) / TED(empty, gt))`` on normalised trees.

    A target that normalises to nothing (``{}``, only falsy values) gives 0.0, as Donut does (its
    numpy ``0/0`` or ``x/0`` ends in ``max(0, nan or -inf)``), here without the RuntimeWarning.
    """
    pred_tree = construct_tree_from_dict(normalize_dict(prediction))
    gt_tree = construct_tree_from_dict(normalize_dict(target))
    size = tree_edit_distance(construct_tree_from_dict(normalize_dict({})), gt_tree)
    distance = tree_edit_distance(pred_tree, gt_tree)
    if size == 0:
        return 0.0
    return max(0.0, 1.0 - distance / size)


def field_f1_counts(prediction: dict | list, target: dict | list) -> tuple[int, int]:
    """Donut's per-sample counts ``(true positives, false negatives + false positives)``."""
    pred = donut_flatten(normalize_dict(prediction))
    answer = donut_flatten(normalize_dict(target))
    tp = fn_or_fp = 0
    for field in pred:
        if field in answer:
            tp += 1
            answer.remove(field)
        else:
            fn_or_fp += 1
    return tp, fn_or_fp + len(answer)


def f1_from_counts(tp: float, fn_or_fp: float) -> float:
    """``tp / (tp + (fn + fp) / 2)``; 0.0 when there are no fields at all (Donut divides by zero)."""
    denominator = tp + fn_or_fp / 2
    return 0.0 if denominator == 0 else tp / denominator


def field_f1(predictions: Sequence[dict | list], targets: Sequence[dict | list]) -> float:
    """Donut ``cal_f1``: field-level F1 micro-averaged over all (key, value) pairs of the corpus."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    tp = fn_or_fp = 0
    for prediction, target in zip(predictions, targets):
        sample_tp, sample_other = field_f1_counts(prediction, target)
        tp += sample_tp
        fn_or_fp += sample_other
    return f1_from_counts(tp, fn_or_fp)
