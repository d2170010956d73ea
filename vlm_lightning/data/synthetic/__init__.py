"""Deterministic synthetic datasets: receipts -> JSON, captchas -> text, formulas -> LaTeX, boxes -> colour.

Every generator writes PNGs under ``OUT/images/`` and JSONL rows whose image paths are relative to
the JSONL file's folder. The same ``seed`` gives byte-identical JSONL and pixel-identical images;
sample ``i`` depends only on ``(kind, seed, i)``. From the command line::

    python -m vlm_lightning.data.synthetic receipts --out data/generated/receipts --n 200 --seed 0 \\
        --split train=0.8,val=0.1,test=0.1
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import captchas, formulas, receipts
from ._common import parse_split, sample_rng, split_counts, write_samples
from .captchas import generate_captcha, render_captcha, write_captchas
from .formulas import FormulaRenderError, generate_formula, random_formula, render_formula, write_formulas
from .receipts import DATE_FORMATS, format_date, generate_receipt, parse_date, receipt_target, write_receipts
from .visual import write_boxes

#: Dataset kind -> its module (each has KIND, ID_PREFIX and a ``_row(rng, options)`` sample builder).
KINDS = {"receipts": receipts, "captchas": captchas, "formulas": formulas}


def write_dataset(
    kind: str,
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    split: str | Mapping[str, float] | None = None,
    **options: Any,
) -> dict[str, Path]:
    """Write ``n`` samples of ``kind`` (receipts, captchas, formulas) to ``out_dir``.

    Returns ``{"data": out_dir/data.jsonl}`` without ``split``, else ``{name: out_dir/name.jsonl}``
    for each split (e.g. ``"train=0.8,val=0.1,test=0.1"``; consecutive ids, no overlap, one shared
    ``images/`` folder). ``options`` go to the kind's ``generate_*`` function.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")
    module = KINDS[kind]
    return write_samples(
        out_dir,
        n,
        seed,
        kind=module.KIND,
        prefix=module.ID_PREFIX,
        make=lambda rng: module._row(rng, options),
        split=split,
    )


__all__ = [
    "DATE_FORMATS",
    "KINDS",
    "FormulaRenderError",
    "format_date",
    "generate_captcha",
    "generate_formula",
    "generate_receipt",
    "parse_date",
    "parse_split",
    "random_formula",
    "receipt_target",
    "render_captcha",
    "render_formula",
    "sample_rng",
    "split_counts",
    "write_boxes",
    "write_captchas",
    "write_dataset",
    "write_formulas",
    "write_receipts",
]
