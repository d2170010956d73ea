"""Hugging Face datasets as Records: loading and one adapter per known task layout.

``load_hf_records`` opens a dataset from the hub (``datasets.load_dataset``), from a folder written by
``save_to_disk`` (``load_from_disk``), from local parquet / arrow / json / csv files or from an image
folder, then turns every row into a :class:`Record` through an adapter of :data:`ADAPTERS`. Bad rows
are returned as :class:`RowProblem` (dataset + split, row index, column); configuration mistakes (an
unknown adapter, a column the dataset lacks, an unreachable hub) raise at once with a clear message.

Prompts: ``prompt`` (per dataset) wins, else the adapter's own default; only the ``generic`` adapter
falls back to ``default_prompt``. In question-answering adapters the prompt is a template where
``{question}`` is replaced by the row's question (a prompt without it is added after the question).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image

from vlm_lightning.data.image_modes import UnsupportedImageError, check_convertible
from vlm_lightning.data.records import (
    IMAGE_KEYS,
    QUESTION_KEYS,
    ImageLike,
    Record,
    RowProblem,
    compact_json,
    image_problem,
    read_jsonl,
    record_from_row,
)
from vlm_lightning.errors import SettingError, UserError

JSONL_DEFAULT_PROMPT = "Extract the information in this document as JSON."
QA_PROMPT = "{question}\nAnswer the question using a single word or phrase."
HUB_TIMEOUT_S = 5.0
PACKAGED_BUILDERS = ("parquet", "arrow", "json", "csv", "text", "imagefolder")
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}

DataFiles = str | Sequence[str] | Mapping[str, str | Sequence[str]]


class HubUnreachableError(UserError, ConnectionError):
    """A hub dataset was asked for but the Hugging Face hub cannot be reached."""


class RowError(ValueError):
    """One bad field of one row (``field`` is the adapter's logical field name)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


# --- answer parsers: raw column value -> (answers, target) ---------------------------------------
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
    if not isinstance(value, (dict, list)) or not value:
        raise RowError(fld, f"expected a non-empty JSON object, got {compact_json(value)[:60]}")
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


# --- adapters ------------------------------------------------------------------------------------
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
        images = _collect(errors, lambda: _images(values.get("image"), ctx.image_root))
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


class RowErrors(ValueError):
    """Every bad field of one row."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))
        self.errors = errors


def _collect(errors: list[RowError], fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RowError as exc:
        errors.append(exc)
        return None


def _usable(image: Image.Image, where: str) -> Image.Image:
    """``image`` if its mode maps to 8-bit RGB (deep greyscale of unknown range does not)."""
    try:
        check_convertible(image)
    except UnsupportedImageError as exc:
        raise RowError("image", f"unsupported image ({where}): {exc}") from exc
    return image


def _one_image(value: Any, root: Path | None = None) -> ImageLike:
    if isinstance(value, Image.Image):
        return _usable(value, "decoded image")
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        from datasets import Image as ImageFeature

        where = value.get("path") or "embedded bytes"
        try:  # decoded here, not by datasets, so that one corrupt image is a row problem
            decoded = ImageFeature().decode_example(value)
        except Exception as exc:
            raise RowError("image", f"unreadable image ({where}): {type(exc).__name__}: {exc}") from exc
        return _usable(decoded, where)
    if isinstance(value, (str, Path)) and str(value).strip():
        path = Path(value)
        if root is not None and not path.is_absolute():
            path = root / path  # as in JSONL files: relative to the data file, not the working directory
        if reason := image_problem(path):
            raise RowError("image", reason)
        return str(path)
    raise RowError("image", f"no image (got {type(value).__name__})")


def _images(value: Any, root: Path | None = None) -> list[ImageLike]:
    """The row's images: decoded ones checked, paths (relative ones joined to ``root``) checked to exist."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise RowError("image", "empty image list")
        return [_one_image(v, root) for v in value]
    return [_one_image(value, root)]


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


# --- opening datasets ----------------------------------------------------------------------------
def _hub_offline() -> bool:
    import datasets.config
    from huggingface_hub import constants

    return bool(datasets.config.HF_HUB_OFFLINE or constants.HF_HUB_OFFLINE)


def _check_hub(path: str) -> None:
    """Fail fast (a few seconds at most) when the hub cannot be reached or has no such dataset."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    hint = (
        "(There is no local file or folder of that name either.) Download it where the hub is reachable "
        "(save_to_disk or parquet) and point 'path' at the copy."
    )
    if _hub_offline():
        return  # load_dataset may still find it in the local cache; its failure is reworded below
    try:
        HfApi(endpoint=constants.ENDPOINT).dataset_info(path, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return
    except RepositoryNotFoundError as exc:
        raise FileNotFoundError(
            f"dataset '{path}' is neither a local path nor a dataset on the Hugging Face hub "
            f"(or it is private: log in with `hf auth login`)"
        ) from exc
    except HfHubHTTPError:
        return  # the hub answered; let load_dataset report the details
    except Exception as exc:
        raise HubUnreachableError(
            f"dataset '{path}': the Hugging Face hub ({constants.ENDPOINT}) is unreachable "
            f"({type(exc).__name__}: {exc}). {hint} If it is in your local cache, set HF_HUB_OFFLINE=1."
        ) from exc


def _load_hub(path: str, name: str | None, split: str, data_files: Any) -> Any:
    from datasets import load_dataset

    _check_hub(path)
    try:
        return load_dataset(path, name, split=split, data_files=data_files)
    except ConnectionError as exc:
        if not _hub_offline():
            raise
        raise HubUnreachableError(
            f"dataset '{path}' is not in the local cache and the Hugging Face hub is unreachable "
            f"(offline mode: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set), and there is no local file or "
            f"folder of that name. Download it where the hub is reachable (save_to_disk or parquet) and "
            f"point 'path' at the copy."
        ) from exc


def _pick_split(data: Any, split: str, path: str) -> Any:
    from datasets import DatasetDict

    if not isinstance(data, DatasetDict):
        return data
    if split not in data:
        raise SettingError(f"dataset '{path}' has no split '{split}'; its splits are: {', '.join(data)}")
    return data[split]


def _builder_for(file: str) -> str:
    suffix = Path(file).suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise SettingError(
            f"cannot tell the format of data file '{file}' (known: {', '.join(FILE_BUILDERS)})"
        )
    return FILE_BUILDERS[suffix]


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def open_dataset(
    path: str, *, name: str | None = None, split: str = "train", data_files: DataFiles | None = None
) -> Any:
    """Open one split as a ``datasets.Dataset``: hub, saved folder, data files or image folder."""
    from datasets import load_dataset, load_from_disk

    files = data_files if data_files is None or isinstance(data_files, Mapping) else {split: data_files}
    local = Path(path).expanduser()
    if path in PACKAGED_BUILDERS:
        if files is None:
            raise SettingError(
                f"dataset path '{path}' is a file format: give data_files (or use a folder path)"
            )
        return load_dataset(path, name, data_files=files, split=split)
    if local.is_dir() and files is None and _is_saved_dataset(local):
        return _pick_split(load_from_disk(str(local)), split, path)
    if local.is_file():
        return load_dataset(_builder_for(str(local)), data_files={split: str(local)}, split=split)
    if local.is_dir():
        return load_dataset(str(local), name, data_files=files, split=split)
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise FileNotFoundError(f"dataset path not found: {path}")
    return _load_hub(path, name, split, files)


def _local_root(path: str, data_files: DataFiles | None) -> Path | None:
    """The folder relative image paths of a local dataset are read from: the data file's folder (or the
    dataset folder); None for hub datasets (their paths, if any, stay as given)."""
    local = Path(path).expanduser()
    if local.is_file():
        return local.parent
    if local.is_dir():
        return local
    files = list(data_files.values()) if isinstance(data_files, Mapping) else data_files
    first = files[0] if isinstance(files, (list, tuple)) and files else files
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    if isinstance(first, (str, Path)) and Path(first).expanduser().is_file():
        return Path(first).expanduser().parent
    return None


# --- records -------------------------------------------------------------------------------------
def _source_name(path: str, name: str | None, split: str) -> str:
    return f"{path}[{name}]:{split}" if name else f"{path}:{split}"


def _id_prefix(source: str) -> str:
    """``cord-v2-train`` for ``naver-clova-ix/cord-v2:train``; ``cord_test`` for ``data/cord_test.parquet``."""
    location, _, split = source.rpartition(":")
    stem = Path(location.split("[")[0].rstrip("/")).name
    if Path(stem).suffix.lower() in FILE_BUILDERS:
        # a data file given as one split: its split name is datasets' label, not the user's (``cord_test-0``)
        return Path(stem).stem
    return f"{stem}-{split}"


def _resolve_prompt(
    adapter: Adapter, resolved: Mapping[str, str], prompt: str | None, default_prompt: str
) -> str:
    text = prompt if prompt is not None else adapter.default_prompt
    if text is None:  # generic adapter
        text = "{question}" if "question" in resolved else default_prompt
    if "{question}" in text and "question" not in resolved:
        raise SettingError(
            f"the prompt uses {{question}} but adapter '{adapter.name}' found no question column"
        )
    return text


def _undecoded_images(dataset: Any, column: str) -> Any:
    """Turn off datasets' image decoding for ``column`` (images are decoded row by row, with errors
    reported per row instead of stopping the whole load)."""
    from datasets import Image as ImageFeature
    from datasets import List, Sequence

    feature = dataset.features[column]
    if isinstance(feature, ImageFeature):
        return dataset.cast_column(column, ImageFeature(decode=False))
    if isinstance(feature, (List, Sequence)) and isinstance(feature.feature, ImageFeature):
        return dataset.cast_column(column, type(feature)(ImageFeature(decode=False)))
    return dataset


def _label_decoders(features: Mapping[str, Any], resolved: Mapping[str, str]) -> dict[str, Callable]:
    """ClassLabel columns (e.g. ChartQA's human_or_machine) are turned into their names."""
    from datasets import ClassLabel

    return {
        logical: features[col].int2str
        for logical, col in resolved.items()
        if logical in ("doc_type", "id") and isinstance(features.get(col), ClassLabel)
    }


def records_from_dataset(
    dataset: Any,
    *,
    adapter: str | Adapter = "generic",
    source: str,
    columns: Mapping[str, str] | None = None,
    prompt: str | None = None,
    default_prompt: str = JSONL_DEFAULT_PROMPT,
    default_system: str | None = None,
    limit: int | None = None,
    require_answer: bool = True,
    id_prefix: str | None = None,
    image_root: Path | None = None,
) -> tuple[list[Record], list[RowProblem]]:
    """Convert an opened ``datasets.Dataset`` into Records and the problems of its bad rows.

    Rows without an id column get ``{id_prefix}-{row}`` (default: dataset stem and split). Relative image
    paths are joined to ``image_root`` (the local data file's folder), as JSONL image paths are.
    """
    adapter = get_adapter(adapter) if isinstance(adapter, str) else adapter
    if adapter.name == "generic" and "messages" in dataset.column_names and not columns:
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        return _conversation_records(
            dataset,
            source,
            id_prefix or _id_prefix(source),
            default_prompt,
            default_system,
            require_answer,
            image_root,
        )
    resolved = resolve_columns(adapter, dataset.column_names, columns, source, require_answer)
    template = _resolve_prompt(adapter, resolved, prompt, default_prompt)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    dataset = _undecoded_images(dataset.select_columns(sorted(set(resolved.values()))), resolved["image"])
    decoders = _label_decoders(dataset.features, resolved)
    id_prefix = id_prefix or _id_prefix(source)
    records: list[Record] = []
    problems: list[RowProblem] = []
    for index, row in enumerate(dataset):
        values = {logical: row[col] for logical, col in resolved.items()}
        for logical, decode in decoders.items():
            if values[logical] is not None:
                values[logical] = decode(values[logical])
        ctx = RowContext(
            source, index, f"{id_prefix}-{index}", template, default_system, require_answer, image_root
        )
        try:
            records.append(adapter(values, ctx))
        except RowErrors as exc:
            problems.extend(
                RowProblem(source, index, resolved.get(e.field, e.field), e.reason) for e in exc.errors
            )
    if not records and not problems:
        problems.append(RowProblem(source, 0, "<dataset>", "no rows"))
    return records, problems


def _conversation_records(
    dataset: Any,
    source: str,
    id_prefix: str,
    default_prompt: str,
    default_system: str | None,
    require_answer: bool,
    image_root: Path | None = None,
) -> tuple[list[Record], list[RowProblem]]:
    """Rows holding a ``messages`` conversation, through the same ``record_from_row`` as JSONL lines."""
    image_column = next((c for c in IMAGE_KEYS if c in dataset.column_names), None)
    if image_column is None:
        raise SettingError(
            f"{source}: a 'messages' dataset needs an image column (one of {', '.join(IMAGE_KEYS)}); "
            f"its columns are: {', '.join(dataset.column_names)}"
        )
    dataset = _undecoded_images(dataset, image_column)
    records: list[Record] = []
    problems: list[RowProblem] = []
    for index, row in enumerate(dataset):
        try:
            images = _images(row[image_column], image_root)
        except RowError as exc:
            problems.append(RowProblem(source, index, image_column, exc.reason))
            continue
        fields_ = {k: v for k, v in row.items() if k != image_column and v is not None}
        record, row_problems = record_from_row(
            fields_,
            source=source,
            line=index,
            root=image_root or Path("."),
            default_prompt=default_prompt,
            default_system=default_system,
            require_answer=require_answer,
            images=images,
            position="row",
            default_id=f"{id_prefix}-{index}",
        )
        problems.extend(row_problems)
        if record is not None:
            records.append(record)
    if not records and not problems:
        problems.append(RowProblem(source, 0, "<dataset>", "no rows"))
    return records, problems


def load_hf_records(
    path: str,
    *,
    name: str | None = None,
    split: str = "train",
    data_files: DataFiles | None = None,
    adapter: str = "generic",
    columns: dict[str, str] | None = None,
    default_prompt: str = JSONL_DEFAULT_PROMPT,
    default_system: str | None = None,
    limit: int | None = None,
    prompt: str | None = None,
    require_answer: bool = True,
) -> tuple[list[Record], list[RowProblem]]:
    """Load one split of a Hugging Face dataset (hub name, saved folder, data files) as Records.

    Returns the records and every bad row found; nothing is dropped silently. Images stay in memory
    as PIL images. ``prompt`` overrides the adapter's default instruction; ``default_prompt`` is used
    only by the ``generic`` adapter when the dataset has no question column.
    """
    adapter_obj = get_adapter(adapter)  # fail on a typo before any download
    dataset = open_dataset(path, name=name, split=split, data_files=data_files)
    return records_from_dataset(
        dataset,
        image_root=_local_root(path, data_files),
        adapter=adapter_obj,
        source=_source_name(path, name, split),
        columns=columns,
        prompt=prompt,
        default_prompt=default_prompt,
        default_system=default_system,
        limit=limit,
        require_answer=require_answer,
    )


# --- YAML-friendly spec --------------------------------------------------------------------------
@dataclass
class DatasetSpec:
    """One dataset split as written in a config, e.g.::

    train: {path: naver-clova-ix/cord-v2, split: train, adapter: cord, limit: 200}
    """

    path: str
    name: str | None = None
    split: str = "train"
    adapter: str = "generic"
    columns: dict[str, str] | None = None
    data_files: Any = None
    limit: int | None = None
    prompt: str | None = None

    def __post_init__(self) -> None:
        get_adapter(self.adapter)
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise SettingError(f"dataset spec 'limit' must be a non-negative integer, got {self.limit!r}")
        if self.columns is not None and not all(isinstance(v, str) for v in self.columns.values()):
            raise SettingError(
                f"dataset spec 'columns' must map field names to column names: {self.columns!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSpec:
        """Build a spec from a config mapping; unknown keys are an error naming the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise SettingError(f"unknown dataset spec key(s) {unknown}; allowed: {', '.join(allowed)}")
        if "path" not in data:
            raise SettingError("dataset spec needs 'path' (hub name, saved folder or data file)")
        return cls(**data)


def load_spec(
    spec: DatasetSpec | Mapping[str, Any] | str | Path,
    *,
    default_prompt: str = JSONL_DEFAULT_PROMPT,
    default_system: str | None = None,
    require_answer: bool = True,
) -> tuple[list[Record], list[RowProblem]]:
    """Load a dataset spec: a ``.jsonl`` path (``read_jsonl``), a mapping / :class:`DatasetSpec`, or any
    other path string (a hub name or local dataset with the ``generic`` adapter)."""
    if isinstance(spec, (str, Path)):
        if str(spec).endswith(".jsonl"):
            return read_jsonl(
                spec,
                default_prompt=default_prompt,
                default_system=default_system,
                require_answer=require_answer,
            )
        spec = DatasetSpec(path=str(spec))
    elif isinstance(spec, Mapping):
        spec = DatasetSpec.from_dict(spec)
    return load_hf_records(
        spec.path,
        name=spec.name,
        split=spec.split,
        data_files=spec.data_files,
        adapter=spec.adapter,
        columns=spec.columns,
        default_prompt=default_prompt,
        default_system=default_system,
        limit=spec.limit,
        prompt=spec.prompt,
        require_answer=require_answer,
    )
