"""The adapters table: one :class:`Adapter` per known task layout, turning a dataset row into a Record.

Prompts: ``prompt`` (per dataset) wins, else the adapter's own default; only the ``generic`` adapter
falls back to ``default_prompt``. In question-answering adapters the prompt is a template where
``{question}`` is replaced by the row's question (a prompt without it is added after the question).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm_lightning.data.records import IMAGE_KEYS, QUESTION_KEYS, Record
from vlm_lightning.data.sources.answers import (
    AnswerParser,
    cord_ground_truth,
    json_target,
    text_answers,
    text_or_json,
)
from vlm_lightning.data.sources.images import row_images
from vlm_lightning.data.sources.row_errors import RowError, RowErrors
from vlm_lightning.errors import SettingError

QA_PROMPT = "{question}\nAnswer the question using a single word or phrase."


@dataclass(frozen=True)
class RowContext:
    """What an adapter needs besides the row: where it comes from and how to prompt."""

    source: str
    row: int
    default_id: str
    prompt: str
    system: str | None
    require_answer: bool = True
    image_root: Path | None = None  # relative image paths are read from here (the data file's folder)
    restrict_to_root: bool = False  # refuse image paths that leave image_root (data.restrict_image_paths)


@dataclass(frozen=True)
class Adapter:
    """Turns one dataset row (keyed by logical field names) into a Record.

    ``fields`` maps each logical field to the column names tried in order (the first one present
    wins; ``columns`` in the config overrides). ``answers`` maps the answer field(s) to their parser;
    the first one the dataset has is used.
    """

    name: str
    fields: dict[str, tuple[str, ...]]
    answers: dict[str, AnswerParser]
    default_prompt: str | None
    required: tuple[str, ...] = ("image",)
    doc_type: str | None = None

    def __call__(self, values: dict[str, Any], ctx: RowContext) -> Record:
        """Build the Record of one row; raises :class:`RowErrors` listing every bad field."""
        errors: list[RowError] = []
        images = _collect(
            errors, lambda: row_images(values.get("image"), ctx.image_root, ctx.restrict_to_root)
        )
        question = _collect(errors, lambda: _question(values)) if "question" in values else None
        answer_field = next((f for f in self.answers if f in values), None)
        answers, target = [], None
        if answer_field is not None:
            parsed = _collect(errors, lambda: self.answers[answer_field](values[answer_field], answer_field))
            if parsed is None and not ctx.require_answer and values[answer_field] is None:
                errors = [e for e in errors if e.field != answer_field]
            elif parsed is not None:
                answers, target = parsed
        if errors:
            raise RowErrors(errors)
        messages = [{"role": "system", "content": ctx.system}] if ctx.system else []
        messages.append({"role": "user", "content": _prompt_text(ctx.prompt, question)})
        if answers:
            messages.append({"role": "assistant", "content": answers[0]})
        meta: dict[str, Any] = {"source": ctx.source, "row": ctx.row}
        doc_type = values.get("doc_type", self.doc_type)
        if doc_type is not None:
            meta["doc_type"] = ", ".join(map(str, doc_type)) if isinstance(doc_type, list) else doc_type
        rid = values.get("id")
        rid = ctx.default_id if rid is None or rid == "" else str(rid)
        return Record(rid, images or [], messages, answers, target, meta)


def _collect(errors: list[RowError], fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RowError as exc:
        errors.append(exc)
        return None


def _question(values: dict[str, Any]) -> str:
    question = values.get("question")
    if isinstance(question, dict):  # multilingual variants, e.g. {"en": ..., "de": ...}
        question = question.get("en") or next(iter(question.values()), None)
    if not isinstance(question, str) or not question.strip():
        raise RowError("question", "missing or empty question")
    return question.strip()


def _prompt_text(template: str, question: str | None) -> str:
    if question is None:
        return template
    if "{question}" in template:
        return template.replace("{question}", question)
    return f"{question}\n{template}" if template.strip() else question


_IMAGE = IMAGE_KEYS  # the one alias table (records.py), shared with JSONL rows
_QA_ID = ("questionId", "question_id", "qid", "id")

ADAPTERS: dict[str, Adapter] = {
    "generic": Adapter(
        "generic",
        fields={
            "image": _IMAGE,
            "question": QUESTION_KEYS,
            "answer": ("answer", "answers", "label", "response", "text"),
            "target": ("target", "ground_truth"),
            "id": ("id",),
            "doc_type": ("doc_type", "document_type", "question_type", "question_types"),
        },
        answers={"target": json_target, "answer": text_or_json},
        default_prompt=None,
    ),
    "cord": Adapter(
        "cord",
        fields={"image": ("image",), "ground_truth": ("ground_truth",), "id": ()},
        answers={"ground_truth": cord_ground_truth},
        default_prompt="Extract the information in this receipt as JSON.",
        doc_type="receipt",
    ),
    "docvqa": Adapter(
        "docvqa",
        fields={
            "image": _IMAGE,
            "question": ("question", "query"),
            "answers": ("answers", "answer"),
            "id": _QA_ID,
            "doc_type": ("doc_type", "document_type", "question_types", "question_type"),
        },
        answers={"answers": text_answers},
        default_prompt=QA_PROMPT,
        required=("image", "question"),
    ),
    "infovqa": Adapter(
        "infovqa",
        fields={
            "image": _IMAGE,
            "question": ("question", "query"),
            "answers": ("answers", "answer"),
            "id": _QA_ID,
            "doc_type": ("doc_type", "document_type", "question_types", "answer_type"),
        },
        answers={"answers": text_answers},
        default_prompt=QA_PROMPT,
        required=("image", "question"),
    ),
    "chartqa": Adapter(
        "chartqa",
        fields={
            "image": _IMAGE,
            "question": ("query", "question"),
            "answer": ("label", "answer", "answers"),
            "id": ("id",),
            "doc_type": ("human_or_machine",),
        },
        answers={"answer": text_answers},
        default_prompt=QA_PROMPT,
        required=("image", "question"),
    ),
    "latex_ocr": Adapter(
        "latex_ocr",
        fields={"image": _IMAGE, "answer": ("text", "latex", "formula"), "id": ("id",)},
        answers={"answer": text_answers},
        default_prompt="Write the LaTeX representation of this formula.",
        doc_type="formula",
    ),
    "captcha": Adapter(
        "captcha",
        fields={"image": _IMAGE, "answer": ("solution", "text", "label"), "id": ("id",)},
        answers={"answer": text_answers},
        default_prompt="Read the characters in this captcha image. Answer with the characters only.",
        doc_type="captcha",
    ),
    "receipts_json": Adapter(
        "receipts_json",
        fields={
            "image": _IMAGE,
            "target": ("ground_truth", "json", "target", "label", "annotation", "text"),
            "id": ("id",),
        },
        answers={"target": json_target},
        default_prompt="Extract the information in this receipt as JSON.",
        doc_type="receipt",
    ),
}


def get_adapter(name: str) -> Adapter:
    """The adapter registered under ``name`` (clear error listing the known ones)."""
    if name not in ADAPTERS:
        raise SettingError(f"unknown dataset adapter '{name}'; known adapters: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]


def resolve_columns(
    adapter: Adapter,
    available: Sequence[str],
    columns: Mapping[str, str] | None,
    source: str,
    require_answer: bool = True,
) -> dict[str, str]:
    """Map the adapter's logical fields to the dataset's columns (config ``columns`` first)."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(adapter.fields))
    if unknown:
        raise SettingError(
            f"{source}: adapter '{adapter.name}' has no field(s) {unknown} in 'columns'; "
            f"its fields are: {', '.join(adapter.fields)}"
        )
    resolved: dict[str, str] = {}
    for logical, candidates in adapter.fields.items():
        if logical in columns:
            if columns[logical] not in available:
                raise SettingError(
                    f"{source}: column '{columns[logical]}' (columns.{logical}) is not in the dataset; "
                    f"its columns are: {', '.join(available)}"
                )
            resolved[logical] = columns[logical]
        elif found := next((c for c in candidates if c in available), None):
            resolved[logical] = found
    missing = [f for f in adapter.required if f not in resolved]
    if require_answer and not any(f in resolved for f in adapter.answers):
        missing.append(" or ".join(adapter.answers))
    if missing and set(available) <= {"image", "label"}:
        raise SettingError(
            f"{source}: an image folder without answers (its only columns: {', '.join(available)}): put a "
            "metadata.jsonl next to the images with one row per image, e.g. "
            '{"file_name": "0001.png", "answer": "..."} (datasets imagefolder format), or use a JSONL file'
        )
    if missing:
        raise SettingError(
            f"{source}: adapter '{adapter.name}' needs field(s) {missing} but no matching column was found; "
            f"the dataset's columns are: {', '.join(available)}. "
            f"Map them in the dataset spec, e.g. columns: {{{missing[0].split(' or ')[0]}: <column>}}"
        )
    return resolved
