"""Image files named by rows: whether one can be used (and stays inside the allowed root), and opening it.

Every source (JSONL lines, dataset columns holding paths) checks its image paths here, so a missing,
corrupt or escaping file is refused with the same message wherever it comes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from vlm_lightning.data.image_modes import UnsupportedImageError, check_convertible, to_rgb

if TYPE_CHECKING:
    from vlm_lightning.data.records import ImageLike  # types only: records imports this module


def escape_problem(value: str | Path, root: Path) -> str | None:
    """The reason an image path is refused when paths are restricted to ``root`` (an absolute path, or one
    climbing out through ``..``), else None. ``value`` is the path as the row wrote it."""
    path = Path(value)
    if path.is_absolute() or ".." in path.parts:
        return f"path escapes the dataset root {root}: {value}"
    return None


def image_problem(path: Path) -> str | None:
    """Return a reason if the image file cannot be used, else None."""
    try:
        if path.is_dir():
            return f"image path is a folder, not an image file: {path}"
        if not path.is_file():
            return f"image file not found: {path}"
    except (OSError, ValueError) as exc:  # name too long, embedded NUL, ...
        return f"invalid image path {str(path)[:200]!r}: {type(exc).__name__}: {exc}"
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() does not decode pixel data: truncated JPEGs pass it
            im.load()
            check_convertible(im)
    except UnsupportedImageError as exc:
        return f"unsupported image {path}: {exc}"
    except Exception as exc:  # PIL raises many types for corrupt files
        return f"unreadable image {path}: {type(exc).__name__}: {exc}"
    return None


def load_image(image: ImageLike) -> Image.Image:
    """Open an image as 8-bit RGB (transparency on white, 16-bit greyscale rescaled: ``image_modes``)."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    with Image.open(image) as im:
        return to_rgb(im)
