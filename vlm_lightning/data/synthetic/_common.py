"""Shared helpers of the synthetic generators: per-sample seeding, split parsing and the JSONL writer."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

#: Builds one sample from its own random generator: the image and the row fields besides id / image.
SampleFn = Callable[[random.Random], tuple[Image.Image, dict[str, Any]]]

IMAGES_DIR = "images"
DEFAULT_FILE = "data"
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def sample_rng(seed: int, kind: str, index: int) -> random.Random:
    """The random generator of sample ``index`` of a ``kind`` dataset.

    Each sample gets its own generator (string seeds are hashed with SHA-512 by :mod:`random`, so
    this does not depend on ``PYTHONHASHSEED``): sample ``i`` is the same whatever ``n`` or split.
    """
    return random.Random(f"vlm_lightning.synthetic/{kind}/{seed}/{index}")


def sample_id(prefix: str, index: int) -> str:
    """The id of 1-based sample ``index``, e.g. ``receipt-00001``."""
    return f"{prefix}-{index:05d}"


def parse_split(spec: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """Parse ``"train=0.8,val=0.1,test=0.1"`` (or a mapping) into ordered fractions summing to 1."""
    if spec is None:
        return None
    if isinstance(spec, str):
        parts: dict[str, float] = {}
        for chunk in spec.split(","):
            chunk = chunk.strip()
            if not chunk:
                continue
            name, sep, value = chunk.partition("=")
            if not sep:
                raise ValueError(f"bad split entry {chunk!r}: expected NAME=FRACTION")
            name = name.strip()
            if name in parts:
                raise ValueError(f"split name {name!r} given twice")
            try:
                parts[name] = float(value)
            except ValueError:
                raise ValueError(f"bad fraction in split entry {chunk!r}") from None
    else:
        parts = {str(k): float(v) for k, v in spec.items()}
    if not parts:
        raise ValueError("empty split specification")
    for name, frac in parts.items():
        if not _SPLIT_NAME.match(name):
            raise ValueError(f"bad split name {name!r}: use letters, digits, '_' or '-'")
        if not math.isfinite(frac) or frac < 0:
            raise ValueError(f"split fraction of {name!r} must be >= 0, got {frac}")
    total = sum(parts.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {total:g}")
    return parts


def split_counts(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Split ``n`` samples by ``fractions`` (largest remainder: counts sum to ``n``, ties go first)."""
    raw = {name: n * frac for name, frac in fractions.items()}
    counts = {name: int(math.floor(value + 1e-9)) for name, value in raw.items()}
    left = n - sum(counts.values())
    order = sorted(raw, key=lambda name: -(raw[name] - counts[name]))  # stable: earlier names win ties
    for name in order[:left]:
        counts[name] += 1
    return counts


def write_samples(
    out_dir: str | Path,
    n: int,
    seed: int,
    *,
    kind: str,
    prefix: str,
    make: SampleFn,
    split: str | Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Generate ``n`` samples into ``out_dir``: PNGs under ``images/`` and one JSONL file per split.

    Without ``split`` the rows go to ``data.jsonl``; with it, consecutive samples fill the splits in
    the given order (ids never overlap) and every split file shares the one ``images/`` folder. Image
    paths in rows are relative to ``out_dir``. Returns the JSONL path of every split, in order.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    fractions = parse_split(split)
    counts = split_counts(n, fractions) if fractions else {DEFAULT_FILE: n}
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    index = 0
    for name, count in counts.items():
        path = out / f"{name}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            for _ in range(count):
                index += 1
                image, fields = make(sample_rng(seed, kind, index))
                sid = sample_id(prefix, index)
                rel = f"{IMAGES_DIR}/{sid}.png"
                image.save(out / rel, format="PNG")
                row = {"id": sid, "image": rel, **fields}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[name] = path
    return paths
