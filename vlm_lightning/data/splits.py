"""Reading one split's records (a JSONL file or a dataset spec) with its bad rows handled, and holding
out a validation share of the training records."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlm_lightning.data.records import DataValidationError, Record, RowProblem, read_jsonl
from vlm_lightning.data.sources import load_spec

log = logging.getLogger(__name__)


def read_split(
    path: str | dict | None, split: str, hparams: Mapping[str, Any], skipped: list[RowProblem]
) -> list[Record]:
    """The records of ``data.<split>`` (none without a path). Bad rows stop with every problem listed,
    or with ``on_bad_row: skip`` are left out and appended to ``skipped``."""
    if path is None:
        return []
    if isinstance(path, str) and path.endswith(".jsonl"):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"data file not found: {path} (data.{split}; a relative path is read from the working "
                f"directory {Path.cwd()})"
            )
        records, problems = read_jsonl(
            path,
            default_prompt=hparams["prompt"],
            default_system=hparams["system"],
            require_answer=split != "predict",
            restrict_to_root=hparams["restrict_image_paths"],
        )
    else:
        records, problems = load_spec(
            path,
            default_prompt=hparams["prompt"],
            default_system=hparams["system"],
            require_answer=split != "predict",
            restrict_to_root=hparams["restrict_image_paths"],
        )
    if problems:
        if not records:  # skipping would leave nothing to train / evaluate on
            hint = f"\nNo usable row is left in data.{split} ({path}): fix the rows above."
            raise DataValidationError(problems, hint=hint)
        if hparams["on_bad_row"] == "error":
            hint = "\nFix these rows, or set data.on_bad_row=skip to go on without them."
            raise DataValidationError(problems, hint=hint)
        skipped.extend(problems)
        log.warning("skipping %d bad row(s) of %s (list written to the run folder)", len(problems), path)
    return records


def hold_out(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Split ``records`` into (kept, held out): ``fraction`` of them (at least one) held out, chosen by
    ``seed``; both keep the original order."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(records) * fraction))
    val_idx = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in val_idx], [records[i] for i in sorted(val_idx)]
