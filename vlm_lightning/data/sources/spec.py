"""The YAML-friendly dataset spec (:class:`DatasetSpec`) and loading one (:func:`load_spec`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vlm_lightning.data.records import Record, RowProblem, read_jsonl
from vlm_lightning.data.sources.adapters import get_adapter
from vlm_lightning.data.sources.convert import JSONL_DEFAULT_PROMPT, load_hf_records
from vlm_lightning.errors import SettingError


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
    restrict_to_root: bool = False,
) -> tuple[list[Record], list[RowProblem]]:
    """Load a dataset spec: a ``.jsonl`` path (``read_jsonl``), a mapping / :class:`DatasetSpec`, or any
    other path string (a hub name or local dataset with the ``generic`` adapter). ``restrict_to_root``
    refuses image paths that leave the data file's (or dataset's) folder, for every kind of spec."""
    if isinstance(spec, (str, Path)):
        if str(spec).endswith(".jsonl"):
            return read_jsonl(
                spec,
                default_prompt=default_prompt,
                default_system=default_system,
                require_answer=require_answer,
                restrict_to_root=restrict_to_root,
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
        restrict_to_root=restrict_to_root,
    )
