"""Batch-mode files of ``infer``: the images of a folder as prompt-only Records, predictions JSONL + CSV."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from vlm_lightning.data.records import Record, record_from_row
from vlm_lightning.evaluation.report import write_reports

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def records_from_folder(
    folder: str | Path, prompt: str, system: str | None = None
) -> tuple[list[Record], list[Any]]:
    """One prompt-only Record per image file of ``folder`` (sorted by name); problems listed, not raised."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such image folder: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    records, problems = [], []
    for line, path in enumerate(paths, start=1):
        record, row_problems = record_from_row(
            {"id": path.stem, "image": path.name, "prompt": prompt},
            source=str(folder),
            line=line,
            root=folder,
            default_prompt=prompt,
            default_system=system,
            require_answer=False,
        )
        problems.extend(row_problems)
        if record is not None:
            record.meta["image"] = str(path)
            records.append(record)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return records, problems


def write_predictions(rows: list[dict[str, Any]], out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` (JSONL) and the CSV next to it with the evaluation report writer; an ``out`` that is a
    folder gets ``predictions.jsonl`` and ``predictions.csv`` inside it."""
    out = Path(out)
    if out.is_dir():
        out = out / "predictions.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_out = out.with_suffix(".csv")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        written = write_reports(Path(tmp), rows, None)
        shutil.move(written["predictions"], out)
        shutil.move(written["predictions_csv"], csv_out)
    return out, csv_out


__all__ = ["IMAGE_SUFFIXES", "records_from_folder", "write_predictions"]
