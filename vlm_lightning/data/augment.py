"""Document-safe image augmentation (albumentations) and simple image preparation.

Augmentation only ever touches *copies*: :func:`expand_with_copies` returns the training records
followed by extra copies marked with ``meta["augment_key"]``, and the dataset applies the
:class:`Augmenter` to a record only when it carries that key. Originals are never marked, so the
validation / test / predict splits - which the datamodule never passes to ``expand_with_copies`` -
cannot be augmented by construction, and even the training originals stay clean. Copies are
deterministic: the same (seed, key) always gives the same image, in any worker and any epoch.

Transforms that mirror or turn the page (flips, transpose, 90-degree rotations) are refused: they
make text unreadable while the target text stays the same.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from PIL import Image

from vlm_lightning.data.enhance import enhance
from vlm_lightning.data.records import Record
from vlm_lightning.errors import SettingError

#: The document pipeline of seed 000: small rotation and perspective on white, light photometric noise.
DEFAULT_PIPELINE: list[dict[str, Any]] = [
    {"name": "Rotate", "limit": 4, "border_mode": "constant", "fill": 255, "p": 0.5},
    {"name": "RandomBrightnessContrast", "brightness_limit": 0.15, "contrast_limit": 0.15, "p": 0.5},
    {"name": "GaussNoise", "std_range": [0.01, 0.04], "p": 0.3},
    {"name": "GaussianBlur", "blur_limit": [3, 3], "sigma_limit": [0.1, 0.8], "p": 0.2},
    {"name": "Perspective", "scale": [0.01, 0.03], "border_mode": "constant", "fill": 255, "p": 0.3},
]

REFUSED = {
    "HorizontalFlip": "mirrors the text",
    "VerticalFlip": "mirrors the text",
    "Transpose": "mirrors the text",
    "RandomRotate90": "turns the page sideways or upside down",
    "D4": "flips and turns the page",
    "SquareSymmetry": "flips and turns the page",
}

BORDER_MODES = {
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT,
    "reflect_101": cv2.BORDER_REFLECT_101,
    "wrap": cv2.BORDER_WRAP,
}
INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}
_CV2_NAMED = {
    "border_mode": BORDER_MODES,
    "interpolation": INTERPOLATIONS,
    "mask_interpolation": INTERPOLATIONS,
}
_U64 = 2**64


class Augmenter:
    """A seeded albumentations pipeline: ``augmenter(image, key)`` is deterministic in (seed, key).

    The whole pipeline is applied with probability ``p`` per call (decided from (seed, key) too);
    each transform keeps its own ``p`` inside.
    """

    def __init__(self, transforms: Sequence[A.BasicTransform], seed: int = 0, p: float = 1.0) -> None:
        if not 0.0 <= p <= 1.0:
            raise SettingError(f"augmentation probability p must be in [0, 1], got {p}")
        self.transforms = list(transforms)
        self.seed = seed
        self.p = p
        self.compose = A.Compose(self.transforms, seed=seed)

    def __call__(self, image: Image.Image, key: int) -> Image.Image:
        """Return the augmented image for this key (the input itself when the draw says no)."""
        rng = np.random.default_rng([self.seed % _U64, int(key) % _U64])
        if rng.random() >= self.p:
            return image
        seeds = rng.integers(2**31 - 1, size=len(self.transforms) + 1)
        # albumentations 2.0 gives every child the Compose's seed, which makes their draws identical
        # (two p=0.5 transforms always fire together): seed each one on its own.
        self.compose.set_random_seed(int(seeds[0]))
        for transform, child_seed in zip(self.transforms, seeds[1:]):
            transform.set_random_seed(int(child_seed))
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        out = self.compose(image=np.asarray(image))["image"]
        return Image.fromarray(np.ascontiguousarray(out).astype(np.uint8, copy=False))

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.transforms)
        return f"Augmenter([{names}], seed={self.seed}, p={self.p})"


def _transform_classes() -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(A).items()
        if inspect.isclass(obj) and issubclass(obj, A.BasicTransform) and not inspect.isabstract(obj)
    }


def _argument(key: str, value: Any) -> Any:
    if key in _CV2_NAMED and isinstance(value, str):
        table = _CV2_NAMED[key]
        if value.lower() not in table:
            raise SettingError(f"'{key}: {value}' is not one of {', '.join(table)}")
        return table[value.lower()]
    return tuple(value) if isinstance(value, list) else value


def build_transform(spec: Mapping[str, Any], index: int = 0) -> A.BasicTransform:
    """Build one albumentations transform from ``{name: Rotate, limit: 4, p: 0.5}``."""
    where = f"augment[{index}]"
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise SettingError(
            f"{where}: expected a mapping with a 'name', e.g. {{name: Rotate, limit: 4}}; got {spec!r}"
        )
    name = spec["name"]
    if name in REFUSED:
        raise SettingError(
            f"{where}: {name} is refused for documents: it {REFUSED[name]}, so the page no longer matches "
            f"its text. Use a small Rotate (limit 3-5) or Perspective instead."
        )
    classes = _transform_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, list(classes), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise SettingError(f"{where}: unknown albumentations transform '{name}'.{hint}")
    cls = classes[name]
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            valid = ", ".join(p for p in params if p != "self")
            raise SettingError(f"{where} ({name}): unknown argument(s) {unknown}; valid: {valid}")
    try:
        return cls(**{k: _argument(k, v) for k, v in kwargs.items()})
    except (TypeError, ValueError) as exc:
        raise SettingError(f"{where} ({name}): invalid arguments: {exc}") from exc


def build_augmentation(
    spec: Sequence[Mapping[str, Any]] | str | None, seed: int, p: float = 1.0
) -> Augmenter | None:
    """``"default"`` (the document pipeline), a list of transform mappings, or None / ``"none"`` for no
    augmentation. Unknown names, bad arguments and page-flipping transforms are clear errors."""
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "off", "")):
        return None
    if isinstance(spec, str):
        if spec.lower() != "default":
            raise SettingError(f"unknown augmentation preset '{spec}': use 'default' or a list of transforms")
        spec = DEFAULT_PIPELINE
    if isinstance(spec, Mapping) or not isinstance(spec, Sequence):
        raise SettingError(
            f"augment must be 'default' or a list of {{name: ..., ...}} mappings, got {spec!r}"
        )
    if not spec:
        return None
    return Augmenter([build_transform(item, i) for i, item in enumerate(spec)], seed=seed, p=p)


def _stable_int(*parts: object) -> int:
    digest = hashlib.sha1("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def expand_with_copies(records: Sequence[Record], copies: int, p: float = 1.0) -> list[Record]:
    """Each training record followed by ``copies`` copies; each copy is augmented with probability ``p``.

    Augmented copies carry ``meta["augment_key"]`` (a stable integer), which the dataset feeds to the
    :class:`Augmenter`; copies the draw leaves plain repeat the sample (as the seed-000 pipeline did).
    Every copy has ``meta["augment_copy"]`` (1..copies) and ``meta["augmented_from"]`` (the original id).
    Call it on the training split only: the originals are returned unmarked.
    """
    if copies < 0:
        raise SettingError(f"augment copies must be >= 0, got {copies}")
    if not 0.0 <= p <= 1.0:
        raise SettingError(f"augment p must be in [0, 1], got {p}")
    out: list[Record] = []
    for position, record in enumerate(records):
        if "augment_copy" in record.meta or "augment_key" in record.meta:
            raise SettingError(
                f"record '{record.id}' is already an augmented copy: expand the split only once"
            )
        out.append(record)
        for copy in range(1, copies + 1):
            key = _stable_int(record.id, position, copy)
            meta = {**record.meta, "augment_copy": copy, "augmented_from": record.id}
            if (_stable_int("p", key) / 2**63) < p:
                meta["augment_key"] = key
            out.append(
                dataclasses.replace(
                    record,
                    id=f"{record.id}#aug{copy}",
                    images=list(record.images),
                    messages=[dict(m) for m in record.messages],
                    answers=list(record.answers),
                    meta=meta,
                )
            )
    return out


__all__ = ["build_augmentation", "enhance", "expand_with_copies"]
