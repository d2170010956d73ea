"""A row's answer fields as text: the compact JSON of a ``target``, answers as strings, two answer fields as one."""

from __future__ import annotations

import json
from typing import Any


def compact_json(value: Any) -> str:
    """Render a target object as the compact JSON the model learns to emit."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def json_target_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a ``target`` (a non-empty JSON object or list), or None when it can."""
    if isinstance(value, (dict, list)) and value:
        try:
            compact_json(value)
        except (TypeError, ValueError) as exc:
            return f"not JSON-serialisable: {exc}"
        return None
    shown = (
        compact_json(value)[:60] if isinstance(value, (str, int, float, bool, dict, list)) else repr(value)
    )
    return f"expected a non-empty JSON object, got {shown}" + (
        ": give a text answer as 'answer'" if isinstance(value, (str, int, float)) and value != "" else ""
    )


def merge_answers(row: dict[str, Any], keys: list[str]) -> tuple[str, Any, str | None]:
    """One answer field from several: 'answer' first, then the other references of 'answers'.

    Allowed only when the single answer is one of the listed references (nothing is lost); anything
    else is a conflict to report.
    """
    single = [k for k in keys if not isinstance(row[k], list)]
    lists = [k for k in keys if isinstance(row[k], list)]
    if len(single) == 1 and len(lists) == 1 and row[single[0]] in row[lists[0]]:
        first = row[single[0]]
        return lists[0], [first, *(a for a in row[lists[0]] if a != first)], None
    return keys[0], row[keys[0]], f"given together with '{keys[0]}' and not one of its references: keep one"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_answers(key: str, value: Any) -> list[str]:
    """Answers as strings; numbers (alone or in a list) are written as text, as in the file."""
    if isinstance(value, str):
        return [value]
    if _is_number(value):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        if not value:
            raise TypeError("empty list: give at least one answer")
        for i, item in enumerate(value):
            if not (isinstance(item, str) or _is_number(item)):
                raise TypeError(
                    f"{key}[{i}] is a {type(item).__name__} ({json.dumps(item)[:40]}): answers are strings or numbers"
                )
        return list(dict.fromkeys(item if isinstance(item, str) else str(item) for item in value))
    raise TypeError(f"expected a string or number (or a list of them), got {type(value).__name__}")
