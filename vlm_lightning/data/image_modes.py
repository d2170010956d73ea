"""Every PIL image mode a user's scans come in, turned into the 8-bit RGB the processors expect.

PIL's own ``convert("RGB")`` is wrong for two common kinds of scan: it drops the alpha channel, so
transparent pixels (stored as black in most exported PNGs) become black, and it clips 16-bit and
float greyscale to 255, so a 16-bit scan becomes almost all white. Here transparency is composited
onto white, high-bit-depth greyscale is rescaled by its type's range, and the EXIF orientation of
phone photos is applied. Values that have no defined range (32-bit integers above 65535, floats
above 255) are refused with ``UnsupportedImageError`` rather than guessed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class UnsupportedImageError(ValueError):
    """An image whose pixel values cannot be mapped to 8-bit RGB without guessing."""


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def _greyscale_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float greyscale rescaled to 0-255 by the range of its type."""
    values = np.asarray(image, dtype=np.float64)
    if values.size and not np.isfinite(values).all():
        raise UnsupportedImageError(f"{image.mode} image holds NaN or infinite pixel values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0:
        raise UnsupportedImageError(
            f"{image.mode} image holds negative pixel values (min {low:g}): save it as 8- or 16-bit"
        )
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and high <= 65535):
        scale = 255.0 / 65535.0  # 16-bit range (PNG / TIFF 16-bit greyscale)
    elif image.mode == "F" and high <= 1.0:
        scale = 255.0  # float images in [0, 1]
    elif image.mode == "F" and high <= 255.0:
        scale = 1.0  # float images in [0, 255]
    else:
        raise UnsupportedImageError(
            f"{image.mode} image with values up to {high:g} has no known range "
            "(expected 16-bit integers, or floats in [0, 1] or [0, 255]): save it as 8- or 16-bit"
        )
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image``: EXIF rotation applied, transparency on white, deep greyscale rescaled."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image.copy()
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _greyscale_to_8bit(image)
    if _has_transparency(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def check_convertible(image: Image.Image) -> None:
    """Raise ``UnsupportedImageError`` if ``to_rgb`` would refuse ``image`` (only deep greyscale can),
    without converting the image (validation decodes every file: no copy of the common modes)."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        _greyscale_to_8bit(image)


__all__ = ["UnsupportedImageError", "check_convertible", "to_rgb"]
