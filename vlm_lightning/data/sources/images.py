"""A dataset row's image value (decoded image, image feature dict, file path, or a list) -> Record images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from vlm_lightning.data.image_files import escape_problem, image_problem
from vlm_lightning.data.image_modes import UnsupportedImageError, check_convertible
from vlm_lightning.data.records import ImageLike
from vlm_lightning.data.sources.row_errors import RowError


def _usable(image: Image.Image, where: str) -> Image.Image:
    """``image`` if its mode maps to 8-bit RGB (deep greyscale of unknown range does not)."""
    try:
        check_convertible(image)
    except UnsupportedImageError as exc:
        raise RowError("image", f"unsupported image ({where}): {exc}") from exc
    return image


def _one_image(value: Any, root: Path | None = None, restrict_to_root: bool = False) -> ImageLike:
    if isinstance(value, Image.Image):
        return _usable(value, "decoded image")
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        from datasets import Image as ImageFeature  # heavy: datasets (~0.5 s at CLI start)

        where = value.get("path") or "embedded bytes"
        try:  # decoded here, not by datasets, so that one corrupt image is a row problem
            decoded = ImageFeature().decode_example(value)
        except Exception as exc:
            raise RowError("image", f"unreadable image ({where}): {type(exc).__name__}: {exc}") from exc
        return _usable(decoded, where)
    if isinstance(value, (str, Path)) and str(value).strip():
        if restrict_to_root and (reason := escape_problem(value, root or Path("."))):
            raise RowError("image", reason)  # refused as a JSONL line's path is
        path = Path(value)
        if root is not None and not path.is_absolute():
            path = root / path  # as in JSONL files: relative to the data file, not the working directory
        if reason := image_problem(path):
            raise RowError("image", reason)
        return str(path)
    raise RowError("image", f"no image (got {type(value).__name__})")


def row_images(value: Any, root: Path | None = None, restrict_to_root: bool = False) -> list[ImageLike]:
    """The row's images: decoded ones checked, paths (relative ones joined to ``root``) checked to exist.

    With ``restrict_to_root`` a path that leaves ``root`` (absolute, or through ``..``) is refused.
    """
    if isinstance(value, (list, tuple)):
        if not value:
            raise RowError("image", "empty image list")
        return [_one_image(v, root, restrict_to_root) for v in value]
    return [_one_image(value, root, restrict_to_root)]
