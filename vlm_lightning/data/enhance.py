"""Image enhancement every split gets (size cap, contrast, sharpness): PIL only, no augmentation stack."""

from __future__ import annotations

from PIL import Image, ImageEnhance


def enhance(
    image: Image.Image, *, max_side: int | None = None, contrast: float = 1.0, sharpness: float = 1.0
) -> Image.Image:
    """Shrink so the longest side is at most ``max_side`` and adjust contrast / sharpness (1.0 = as is)."""
    if contrast < 0 or sharpness < 0:
        raise ValueError("contrast and sharpness factors must be >= 0")
    out = image.copy()
    if max_side is not None:
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        out.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    if contrast != 1.0:
        out = ImageEnhance.Contrast(out).enhance(contrast)
    if sharpness != 1.0:
        out = ImageEnhance.Sharpness(out).enhance(sharpness)
    return out
