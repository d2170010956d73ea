"""Answer decoders: one dataset column value -> (accepted answers, JSON target or None)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from vlm_lightning.data.answer_fields import compact_json, json_target_problem
from vlm_lightning.data.sources.row_errors import RowError


def _clean_answers(values: list[Any], fld: str) -> list[str]:
    answers: list[str] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise RowError(fld, f"expected strings, got {type(value).__name__}")
        text = str(value).strip()
        if text and text not in answers:
            answers.append(text)
    if not answers:
        raise RowError(fld, "empty answer")
    return answers


def text_answers(value: Any, fld: str) -> tuple[list[str], Any]:
    """A string, number or list of strings: every distinct non-empty answer is kept, in order."""
    if value is None:
        raise RowError(fld, "missing answer")
    if isinstance(value, (list, tuple)):
        return _clean_answers(list(value), fld), None
    return _clean_answers([value], fld), None


def json_target(value: Any, fld: str) -> tuple[list[str], Any]:
    """A JSON object (or its string); a Donut-style ``{"gt_parse": ...}`` wrapper is unwrapped."""
    if value is None:
        raise RowError(fld, "missing target")
    if isinstance(value, str):
        if not value.strip():
            raise RowError(fld, "empty target")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(fld, f"not valid JSON: {exc}") from exc
    if isinstance(value, dict) and "gt_parses" in value:
        parses = value["gt_parses"]
        if not isinstance(parses, list) or not parses:
            raise RowError(fld, "'gt_parses' must be a non-empty list")
        return [compact_json(p) for p in parses], parses[0]
    if isinstance(value, dict) and "gt_parse" in value:
        value = value["gt_parse"]
    problem = json_target_problem(value)
    if problem:
        raise RowError(fld, problem)
    return [compact_json(value)], value


def cord_ground_truth(value: Any, fld: str) -> tuple[list[str], Any]:
    """CORD's ``ground_truth``: a JSON string whose ``gt_parse`` is the target."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(fld, f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict) or not ({"gt_parse", "gt_parses"} & value.keys()):
        raise RowError(fld, "no 'gt_parse' in the ground truth")
    return json_target(value, fld)


def text_or_json(value: Any, fld: str) -> tuple[list[str], Any]:
    """Text answers, or a JSON target when the value is an object / list of objects."""
    if isinstance(value, dict) or (isinstance(value, list) and value and not isinstance(value[0], str)):
        return json_target(value, fld)
    return text_answers(value, fld)


AnswerParser = Callable[[Any, str], tuple[list[str], Any]]
