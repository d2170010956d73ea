"""The record schema every source is turned into, and the JSONL loader that validates rows.

A record is one training / evaluation sample: images, a conversation and the accepted answers for
its last assistant turn. Every problem found in a file is collected and reported together, naming
the file, line and field. Image files are checked by ``image_files`` (shared with dataset sources).
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from vlm_lightning.data.answer_fields import as_answers, compact_json, json_target_problem, merge_answers
from vlm_lightning.data.image_files import escape_problem, image_problem
from vlm_lightning.errors import UserError

log = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]
ImageLike = str | Path | Image.Image

# the one alias table of every source (JSONL rows and dataset columns)
IMAGE_KEYS = ("image", "image_path", "images", "img")
QUESTION_KEYS = ("question", "query", "prompt")
ANSWER_KEYS = ("answer", "response", "answers")
DOC_TYPE_KEYS = ("doc_type", "document_type", "question_type")
KNOWN_KEYS = frozenset(
    {"id", "target", "messages", "system", *IMAGE_KEYS, *QUESTION_KEYS, *ANSWER_KEYS, *DOC_TYPE_KEYS}
)


@dataclass
class Record:
    """One sample: images, a conversation and the accepted answers of its final assistant turn.

    ``messages`` ends with the assistant turn to learn / predict; images are attached to the first
    user turn. ``answers[0]`` is the training target text; all of ``answers`` count for metrics.
    """

    id: str
    images: list[ImageLike]
    messages: list[dict[str, str]]
    answers: list[str]
    target: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """Where the sample came from, for messages: ``file.jsonl:LINE`` or ``dataset:split row N``."""
        source = self.meta.get("source", "?")
        if "line" in self.meta:
            return f"{source}:{self.meta['line']}"
        if "row" in self.meta:
            return f"{source} row {self.meta['row']}"
        return str(source)

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation without its final assistant turn (what generation starts from)."""
        return self.messages[:-1]

    @property
    def prompt_text(self) -> str:
        """The last user instruction, for reports."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""


@dataclass
class RowProblem:
    """A problem with one field of one row of a data file."""

    source: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: field '{self.field}': {self.reason}"


class DataValidationError(UserError, ValueError):
    """Raised with every problem of a data file listed, one per line."""

    def __init__(self, problems: Sequence[RowProblem], hint: str = "") -> None:
        self.problems = list(problems)
        shown = "\n  ".join(str(p) for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{len(self.problems)} bad row(s):\n  {shown}{more}{hint}")


def _first(row: dict[str, Any], keys: Iterable[str]) -> tuple[str | None, Any]:
    for key in keys:
        if key in row and row[key] is not None:
            return key, row[key]
    return None, None


def _invalid_text_field(row: Any) -> str | None:
    """The field of a parsed row holding a string that is not valid text (a lone ``\\udXXX`` escape)."""
    stack: list[tuple[str, Any]] = [("<row>", row)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key if where == "<row>" else f"{where}.{key}", item))
                stack.append((where, key))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return None


def record_from_row(
    row: Any,
    *,
    source: str,
    line: int,
    root: Path,
    default_prompt: str,
    default_system: str | None,
    check_images: bool = True,
    restrict_to_root: bool = False,
    require_answer: bool = True,
    images: list[ImageLike] | None = None,
    position: Literal["line", "row"] = "line",
    default_id: str | None = None,
) -> tuple[Record | None, list[RowProblem]]:
    """Turn one row into a Record, or return every problem found in it.

    The one row -> Record path: JSONL lines call it directly; dataset rows whose conversation is a
    ``messages`` column call it with their already decoded ``images`` and ``position="row"``.
    """
    problems: list[RowProblem] = []

    def bad(fld: str, reason: str) -> None:
        problems.append(RowProblem(source, line, fld, reason))

    if not isinstance(row, dict):
        bad("<row>", f"expected a JSON object, got {type(row).__name__}")
        return None, problems

    rid = row.get("id", default_id or f"{Path(source).stem}-{line}")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        bad("id", f"expected a string or integer, got {type(rid).__name__}")
    rid = str(rid)

    # images (already decoded ones come from a dataset's image column)
    given = images
    images = []
    given_images = [k for k in IMAGE_KEYS if row.get(k) is not None] if given is None else []
    for extra in given_images[1:]:
        bad(extra, f"given together with '{given_images[0]}': keep one image field (a list goes in 'images')")
    ikey, ival = _first(row, IMAGE_KEYS) if given is None else ("<decoded>", None)
    if given is not None:
        images = list(given)
    elif ikey is None:
        bad("image", f"missing (one of {', '.join(repr(k) for k in IMAGE_KEYS)})")
    else:
        values = ival if isinstance(ival, list) else [ival]
        if not values:
            bad(ikey, "empty image list")
        for i, value in enumerate(values):
            fld = f"{ikey}[{i}]" if isinstance(ival, list) else ikey
            if not isinstance(value, str) or not value.strip():
                bad(fld, f"expected a file path string, got {type(value).__name__}")
                continue
            if restrict_to_root and (reason := escape_problem(value, root)):
                bad(fld, reason)
                continue
            path = Path(value)
            path = path if path.is_absolute() else root / path
            if check_images and (reason := image_problem(path)):
                bad(fld, reason)
                continue
            images.append(str(path))

    system = row.get("system", default_system)
    if system is not None and not isinstance(system, str):
        bad("system", f"expected a string, got {type(system).__name__}")
        system = None

    messages: list[dict[str, str]] = []
    answers: list[str] = []
    target = None
    if "messages" in row:
        mixed = [k for k in (*QUESTION_KEYS, *ANSWER_KEYS, "target") if row.get(k) is not None]
        if mixed:
            bad("messages", f"given together with {mixed}: use either 'messages' or a question + answer")
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            bad("messages", "expected a non-empty list of {role, content} objects")
        else:
            for i, m in enumerate(msgs):
                if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                    bad(f"messages[{i}].role", "expected role system, user or assistant")
                    continue
                content = m.get("content")
                if not isinstance(content, str) or (m["role"] == "assistant" and not content.strip()):
                    bad(f"messages[{i}].content", "expected a non-empty string")
                    continue
                messages.append({"role": m["role"], "content": content})
            if require_answer and messages and messages[-1]["role"] != "assistant":
                bad("messages", "the last turn must be the assistant's answer")
            if not any(m["role"] == "user" for m in messages):
                bad("messages", "no user turn")
            if messages and messages[-1]["role"] == "assistant":
                answers = [messages[-1]["content"]]
            if system is not None and messages and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": system})
    else:
        qkey, question = _first(row, QUESTION_KEYS)
        differing = [k for k in QUESTION_KEYS if row.get(k) is not None and row[k] != question]
        if differing:
            bad(differing[0], f"given together with '{qkey}' and with another text: keep one question field")
        if question is None:
            question = default_prompt
        elif not isinstance(question, str) or not question.strip():
            bad(qkey or "question", "expected a non-empty string")
            question = ""
        akey, answer = _first(row, ANSWER_KEYS)
        given_answers = [k for k in ANSWER_KEYS if row.get(k) is not None]
        if row.get("target") is not None and given_answers:
            bad("target", f"given together with '{given_answers[0]}': keep one answer field")
        elif len(given_answers) > 1:
            akey, answer, reason = merge_answers(row, given_answers)
            if reason:
                bad(given_answers[1], reason)
        if "target" in row and row["target"] is not None:
            target = row["target"]
            problem = json_target_problem(target)
            if problem:
                bad("target", problem)
            else:
                answers = [compact_json(target)]
        elif akey is None and not require_answer:
            pass
        elif akey is None:
            bad("answer", "missing (one of 'answer', 'response', 'answers', 'target' or 'messages')")
        else:
            try:
                answers = as_answers(akey, answer)
            except TypeError as exc:
                bad(akey, str(exc))
            if answers and not answers[0].strip():
                bad(akey, "empty answer")
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": question})
        if answers:
            messages.append({"role": "assistant", "content": answers[0]})

    if problems:
        return None, problems
    meta: dict[str, Any] = {"source": source, position: line}
    for key in DOC_TYPE_KEYS:
        if key in row:
            meta["doc_type"] = row[key]
    return Record(rid, images, messages, answers, target, meta), []


_JSON_WHITESPACE = " \t\r\n"


def read_jsonl(
    path: str | Path,
    *,
    default_prompt: str = "Extract the information in this document as JSON.",
    default_system: str | None = None,
    check_images: bool = True,
    restrict_to_root: bool = False,
    require_answer: bool = True,
) -> tuple[list[Record], list[RowProblem]]:
    """Read a JSONL file into Records; return them with every problem found (nothing is dropped silently)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    records: list[Record] = []
    problems: list[RowProblem] = []
    unknown: dict[str, list[int]] = {}  # key -> the lines that hold it
    root = path.parent
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # tolerate a byte-order mark
            except UnicodeDecodeError as exc:
                problems.append(RowProblem(str(path), line_no, "<row>", f"invalid UTF-8: {exc}"))
                continue
            if not text.strip(_JSON_WHITESPACE):  # str.strip() would also eat \x1c-\x1f: not blank in JSON
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:  # its own "line 2" would count the row's newline as a line
                content = text.rstrip("\r\n")
                where = (
                    f"column {exc.pos + 1}" if exc.pos < len(content) else "the end of the row (unclosed?)"
                )
                problems.append(
                    RowProblem(str(path), line_no, "<row>", f"JSON syntax error: {exc.msg} at {where}")
                )
                continue
            except (ValueError, RecursionError) as exc:  # integers over 4300 digits, absurdly deep nesting
                reason = f"unparseable JSON: {type(exc).__name__}: {str(exc)[:200]}"
                problems.append(RowProblem(str(path), line_no, "<row>", reason))
                continue
            if (where := _invalid_text_field(row)) is not None:
                reason = "invalid Unicode: a lone surrogate escape (such as \\ud800) is not text"
                problems.append(RowProblem(str(path), line_no, where, reason))
                continue
            record, row_problems = record_from_row(
                row,
                source=str(path),
                line=line_no,
                root=root,
                default_prompt=default_prompt,
                default_system=default_system,
                check_images=check_images,
                restrict_to_root=restrict_to_root,
                require_answer=require_answer,
            )
            problems.extend(row_problems)
            if isinstance(row, dict):
                for key in row.keys() - KNOWN_KEYS:
                    unknown.setdefault(key, []).append(line_no)
            if record is not None:
                records.append(record)
    if not records and not problems:
        problems.append(RowProblem(str(path), 0, "<file>", "no rows"))
    _warn_unused(path, unknown, records)
    return records, problems


def _unused_key(key: str, lines: list[int]) -> str:
    """``'qestion' (2 rows: lines 3, 9; did you mean 'question'?)``."""
    shown = ", ".join(map(str, lines[:3])) + (", ..." if len(lines) > 3 else "")
    close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    rows = f"{len(lines)} row{'s' * (len(lines) > 1)}"
    return f"'{key}' ({rows}: line{'s' * (len(lines) > 1)} {shown}{hint})"


def _warn_unused(path: Path, unknown: dict[str, list[int]], records: list[Record]) -> None:
    """Log the keys no row field reads (a typo such as 'qestion' falls back to the default prompt)."""
    if unknown:
        listed = ", ".join(_unused_key(k, lines) for k, lines in sorted(unknown.items()))
        log.warning(
            "%s: keys not read by vlm_lightning (ignored): %s. Known keys: %s",
            path,
            listed,
            ", ".join(sorted(KNOWN_KEYS)),
        )
    counts: dict[str, int] = {}
    for record in records:
        counts[record.id] = counts.get(record.id, 0) + 1
    repeated = [rid for rid, n in counts.items() if n > 1]
    if repeated:
        log.warning(
            "%s: %d id(s) used by more than one row (e.g. %s): predictions and reports are per row, "
            "but ids no longer tell the rows apart",
            path,
            len(repeated),
            ", ".join(repeated[:5]),
        )
