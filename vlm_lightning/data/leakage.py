"""Train / val / test leakage check: the same sample id, image or (image, question) in two splits.

Images are compared by content: the sha1 of the file bytes for paths, of the pixels (mode, size and
``tobytes``) for in-memory PIL images. Questions are compared after Unicode normalisation, case
folding and whitespace collapsing, so ``"What is the total?"`` and ``"what is  the TOTAL"`` match.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from vlm_lightning.data.records import ImageLike, Record
from vlm_lightning.errors import UserError

log = logging.getLogger(__name__)
Kind = Literal["id", "image", "sample"]
KIND_LABELS: dict[Kind, str] = {
    "id": "shared id(s)",
    "image": "shared image(s)",
    "sample": "identical sample(s) (same images and question)",
}


class LeakageError(UserError, ValueError):
    """Splits share samples; the message lists which splits and examples."""


@dataclass
class Overlap:
    """Records of two splits sharing one kind of key; ``pairs`` holds one (id in a, id in b) per key."""

    kind: Kind
    split_a: str
    split_b: str
    pairs: list[tuple[str, str]]

    def __str__(self) -> str:
        shown = ", ".join(f"{a} = {b}" for a, b in self.pairs[:5])
        more = f", ... ({len(self.pairs) - 5} more)" if len(self.pairs) > 5 else ""
        return f"{self.split_a} <-> {self.split_b}: {len(self.pairs)} {KIND_LABELS[self.kind]}: {shown}{more}"


@dataclass
class LeakageReport:
    """Every overlap found between pairs of splits."""

    overlaps: list[Overlap] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        """True when some pair of splits overlaps."""
        return bool(self.overlaps)

    def between(self, split_a: str, split_b: str) -> list[Overlap]:
        """The overlaps of one pair of splits (either order)."""
        pair = {split_a, split_b}
        return [o for o in self.overlaps if {o.split_a, o.split_b} == pair]

    def summary(self) -> str:
        """One line per overlap, or a line saying the splits are disjoint."""
        if not self.overlaps:
            sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
            return f"no leakage between splits ({sizes})"
        return "leakage between splits:\n  " + "\n  ".join(str(o) for o in self.overlaps)

    def raise_if_any(self, allow: bool = False) -> None:
        """Raise :class:`LeakageError` on any overlap; with ``allow`` only log a warning."""
        if not self.overlaps:
            return
        if allow:
            log.warning("%s", self.summary())
            return
        raise LeakageError(
            self.summary() + "\nRemove the shared samples from one split, or allow the overlap with "
            "--data.leakage warn (or off)."
        )


def normalise_text(text: str) -> str:
    """Case-folded, NFKC-normalised text with collapsed whitespace and no trailing punctuation."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip().rstrip("?.!:;").strip()


def image_digest(image: ImageLike, cache: dict[str, str] | None = None) -> str:
    """sha1 of the image file's bytes, or of an in-memory image's mode, size and pixels."""
    if isinstance(image, Image.Image):
        h = hashlib.sha1(f"{image.mode}:{image.size}:".encode())
        h.update(image.tobytes())
        return h.hexdigest()
    path = str(Path(image).resolve())
    if cache is not None and path in cache:
        return cache[path]
    try:
        digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError:
        digest = f"unreadable:{path}"  # the same missing file still matches itself
    if cache is not None:
        cache[path] = digest
    return digest


def _keys(record: Record, cache: dict[str, str]) -> dict[Kind, list[str]]:
    images = sorted(image_digest(im, cache) for im in record.images)
    sample = "|".join(images) + "#" + normalise_text(record.prompt_text)
    return {"id": [record.id], "image": images, "sample": [sample]}


def _index(records: Sequence[Record], cache: dict[str, str]) -> dict[Kind, dict[str, str]]:
    index: dict[Kind, dict[str, str]] = {"id": {}, "image": {}, "sample": {}}
    for record in records:
        for kind, keys in _keys(record, cache).items():
            for key in keys:
                index[kind].setdefault(key, record.id)
    return index


def evaluated_on_training_file(paths: Mapping[str, str | dict | None], split: str) -> str | None:
    """A warning when an evaluation split is the training file itself (its scores would be in-sample)."""
    train, evaluated = paths.get("train"), paths.get(split)
    if not (isinstance(train, str) and isinstance(evaluated, str)):
        return None
    if not (Path(train).is_file() and Path(evaluated).is_file() and Path(train).samefile(evaluated)):
        return None
    return f"data.{split} is the training file {evaluated}: its scores measure samples the model trained on"


def check_leakage(splits: Mapping[str, Sequence[Record]]) -> LeakageReport:
    """Compare every pair of splits for shared ids, images and identical (images, question) samples."""
    cache: dict[str, str] = {}
    indexes = {name: _index(records, cache) for name, records in splits.items()}
    report = LeakageReport(sizes={name: len(records) for name, records in splits.items()})
    for a, b in itertools.combinations(indexes, 2):
        for kind in ("id", "image", "sample"):
            keys_a, keys_b = indexes[a][kind], indexes[b][kind]
            shared = [k for k in keys_a if k in keys_b]
            if shared:
                report.overlaps.append(Overlap(kind, a, b, [(keys_a[k], keys_b[k]) for k in shared]))
    return report
