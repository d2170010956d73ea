"""Hugging Face datasets as Records: opening them and one adapter per known task layout.

``load_hf_records`` opens a dataset from the hub (``datasets.load_dataset``), from a folder written by
``save_to_disk`` (``load_from_disk``), from local parquet / arrow / json / csv files or from an image
folder, then turns every row into a :class:`Record` through an adapter of :data:`ADAPTERS`. Bad rows
are returned as :class:`RowProblem` (dataset + split, row index, column); configuration mistakes (an
unknown adapter, a column the dataset lacks, an unreachable hub) raise at once with a clear message.

One job per module: ``answers`` (answer decoders), ``images`` (a row's image value), ``adapters`` (the
adapters table and column resolution), ``opening`` (hub / saved folder / files), ``convert`` (rows ->
Records), ``spec`` (the YAML-friendly :class:`DatasetSpec` and ``load_spec``). This package re-exports
their public names.
"""

from vlm_lightning.data.sources.adapters import (
    ADAPTERS,
    QA_PROMPT,
    Adapter,
    RowContext,
    get_adapter,
    resolve_columns,
)
from vlm_lightning.data.sources.answers import (
    AnswerParser,
    cord_ground_truth,
    json_target,
    text_answers,
    text_or_json,
)
from vlm_lightning.data.sources.convert import JSONL_DEFAULT_PROMPT, load_hf_records, records_from_dataset
from vlm_lightning.data.sources.opening import (
    FILE_BUILDERS,
    HUB_TIMEOUT_S,
    PACKAGED_BUILDERS,
    DataFiles,
    HubUnreachableError,
    open_dataset,
)
from vlm_lightning.data.sources.row_errors import RowError, RowErrors
from vlm_lightning.data.sources.spec import DatasetSpec, load_spec

__all__ = [
    "ADAPTERS",
    "FILE_BUILDERS",
    "HUB_TIMEOUT_S",
    "JSONL_DEFAULT_PROMPT",
    "PACKAGED_BUILDERS",
    "QA_PROMPT",
    "Adapter",
    "AnswerParser",
    "DataFiles",
    "DatasetSpec",
    "HubUnreachableError",
    "RowContext",
    "RowError",
    "RowErrors",
    "cord_ground_truth",
    "get_adapter",
    "json_target",
    "load_hf_records",
    "load_spec",
    "open_dataset",
    "records_from_dataset",
    "resolve_columns",
    "text_answers",
    "text_or_json",
]
