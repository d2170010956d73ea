"""Rows of an opened dataset -> Records (through an adapter, or ``record_from_row`` for ``messages`` rows).

Bad rows are returned as :class:`RowProblem` (dataset + split, row index, column); nothing is dropped
silently. Configuration mistakes (an unknown adapter, a column the dataset lacks) raise at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vlm_lightning.data.records import IMAGE_KEYS, Record, RowProblem, record_from_row
from vlm_lightning.data.sources.adapters import Adapter, RowContext, get_adapter, resolve_columns
from vlm_lightning.data.sources.images import row_images
from vlm_lightning.data.sources.opening import FILE_BUILDERS, DataFiles, local_root, open_dataset
from vlm_lightning.data.sources.row_errors import RowError, RowErrors
from vlm_lightning.errors import SettingError

JSONL_DEFAULT_PROMPT = "Extract the information in this document as JSON."


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
    from datasets import Image as ImageFeature  # heavy: datasets (~0.5 s at CLI start)
    from datasets import List, Sequence  # heavy: datasets

    feature = dataset.features[column]
    if isinstance(feature, ImageFeature):
        return dataset.cast_column(column, ImageFeature(decode=False))
    if isinstance(feature, (List, Sequence)) and isinstance(feature.feature, ImageFeature):
        return dataset.cast_column(column, type(feature)(ImageFeature(decode=False)))
    return dataset


def _label_decoders(features: Mapping[str, Any], resolved: Mapping[str, str]) -> dict[str, Callable]:
    """ClassLabel columns (e.g. ChartQA's human_or_machine) are turned into their names."""
    from datasets import ClassLabel  # heavy: datasets

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
    restrict_to_root: bool = False,
) -> tuple[list[Record], list[RowProblem]]:
    """Convert an opened ``datasets.Dataset`` into Records and the problems of its bad rows.

    Rows without an id column get ``{id_prefix}-{row}`` (default: dataset stem and split). Relative image
    paths are joined to ``image_root`` (the local data file's folder), as JSONL image paths are; with
    ``restrict_to_root`` a path leaving it (absolute, ``..``) is a row problem, as in JSONL files.
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
            restrict_to_root,
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
            source,
            index,
            f"{id_prefix}-{index}",
            template,
            default_system,
            require_answer,
            image_root,
            restrict_to_root,
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
    restrict_to_root: bool = False,
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
            images = row_images(row[image_column], image_root, restrict_to_root)
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
    restrict_to_root: bool = False,
) -> tuple[list[Record], list[RowProblem]]:
    """Load one split of a Hugging Face dataset (hub name, saved folder, data files) as Records.

    Returns the records and every bad row found; nothing is dropped silently. Images stay in memory
    as PIL images. ``prompt`` overrides the adapter's default instruction; ``default_prompt`` is used
    only by the ``generic`` adapter when the dataset has no question column. ``restrict_to_root``
    refuses image paths that leave the local dataset's folder (``data.restrict_image_paths``).
    """
    adapter_obj = get_adapter(adapter)  # fail on a typo before any download
    dataset = open_dataset(path, name=name, split=split, data_files=data_files)
    return records_from_dataset(
        dataset,
        image_root=local_root(path, data_files),
        adapter=adapter_obj,
        source=_source_name(path, name, split),
        columns=columns,
        prompt=prompt,
        default_prompt=default_prompt,
        default_system=default_system,
        limit=limit,
        require_answer=require_answer,
        restrict_to_root=restrict_to_root,
    )
