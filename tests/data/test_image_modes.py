"""Every PIL mode a scan comes in loads as the picture it shows (not black, not white)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_lightning.data.image_files import image_problem, load_image
from vlm_lightning.data.image_modes import UnsupportedImageError, to_rgb

W, H = 8, 4


def _ink_mask() -> np.ndarray:
    """Left half ink (dark), right half paper."""
    mask = np.zeros((H, W), dtype=bool)
    mask[:, : W // 2] = True
    return mask


def _grey(rgb: Image.Image) -> np.ndarray:
    assert rgb.mode == "RGB" and rgb.size == (W, H)
    return np.asarray(rgb.convert("L"), dtype=np.int32)


def _make(mode: str) -> Image.Image:
    ink = _ink_mask()
    if mode == "1":
        return Image.fromarray(~ink)  # bool array: True is white
    if mode == "L":
        return Image.fromarray(np.where(ink, 10, 245).astype(np.uint8), mode="L")
    if mode == "LA":  # black text on a transparent background (the background pixels are black)
        values = np.zeros((H, W, 2), dtype=np.uint8)
        values[..., 1] = np.where(ink, 255, 0)
        return Image.fromarray(values, mode="LA")
    if mode == "P":  # palette with a transparent index 0 stored as black
        image = Image.fromarray(np.where(ink, 1, 0).astype(np.uint8), mode="P")
        image.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)
        image.info["transparency"] = 0
        return image
    if mode == "RGB":
        return Image.fromarray(np.stack([np.where(ink, 10, 245).astype(np.uint8)] * 3, axis=-1))
    if mode == "RGBA":  # exported PNG: transparent pixels are (0, 0, 0, 0)
        values = np.zeros((H, W, 4), dtype=np.uint8)
        values[..., 3] = np.where(ink, 255, 0)
        return Image.fromarray(values, mode="RGBA")
    if mode == "CMYK":
        values = np.zeros((H, W, 4), dtype=np.uint8)
        values[..., 3] = np.where(ink, 240, 0)  # K channel: ink
        return Image.fromarray(values, mode="CMYK")
    if mode == "I;16":
        return Image.fromarray(np.where(ink, 2000, 60000).astype(np.uint16))
    if mode == "I":
        return Image.fromarray(np.where(ink, 2000, 60000).astype(np.int32), mode="I")
    if mode == "F":
        return Image.fromarray(np.where(ink, 0.05, 0.95).astype(np.float32), mode="F")
    raise AssertionError(mode)


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_shows_dark_ink_on_light_paper(mode: str) -> None:
    image = _make(mode)
    assert image.mode == mode
    grey = _grey(to_rgb(image))
    ink = _ink_mask()
    assert grey[ink].max() <= 40, (mode, grey)  # the ink stays dark
    assert grey[~ink].min() >= 200, (mode, grey)  # transparent / bright paper is light, not black


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_round_trips_through_a_file(mode: str, tmp_path: Path) -> None:
    image = _make(mode)
    path = tmp_path / f"scan.{'tiff' if mode in ('F', 'I', 'CMYK') else 'png'}"
    image.save(path)
    assert image_problem(path) is None
    grey = _grey(load_image(path))
    assert grey[_ink_mask()].max() <= 40 and grey[~_ink_mask()].min() >= 200, (mode, grey)


def test_sixteen_bit_keeps_its_gradient() -> None:
    ramp = np.linspace(0, 65535, W * H).reshape(H, W).astype(np.uint16)
    grey = _grey(to_rgb(Image.fromarray(ramp)))
    assert grey.min() == 0 and grey.max() == 255
    assert (np.diff(grey.reshape(-1)) >= 0).all()  # monotone: a rescale, not a clip at 255


@pytest.mark.parametrize(
    ("values", "mode"),
    [(np.full((H, W), 1e6, dtype=np.float32), "F"), (np.full((H, W), 100000, dtype=np.int32), "I")],
)
def test_values_without_a_known_range_are_refused_before_training(
    values: np.ndarray, mode: str, tmp_path: Path
) -> None:
    image = Image.fromarray(values, mode=mode)
    with pytest.raises(UnsupportedImageError, match="no known range"):
        to_rgb(image)
    path = tmp_path / "deep.tiff"
    image.save(path)
    assert "unsupported image" in (image_problem(path) or "")


def test_exif_orientation_of_a_phone_photo_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (W, H), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    path = tmp_path / "photo.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (H, W)


def test_a_folder_given_as_an_image_is_named_a_folder(tmp_path: Path) -> None:
    assert "is a folder" in (image_problem(tmp_path) or "")
