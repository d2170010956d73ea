"""Augmentation: seeded and reproducible, document-safe, copies marked for the train split only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlm_lightning.data.augment import (
    DEFAULT_PIPELINE,
    Augmenter,
    build_augmentation,
    enhance,
    expand_with_copies,
)
from vlm_lightning.data.records import Record

REPO = Path(__file__).resolve().parents[2]


def page(size: tuple[int, int] = (120, 160)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for y in range(10, size[1] - 10, 14):
        draw.text((8, y), "TOTAL 12.50 SEK", fill="black")
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def record(i: int, **meta) -> Record:
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": f"A{i}"}]
    return Record(
        f"r{i}", [f"img{i}.png"], messages, [f"A{i}"], None, {"source": "t.jsonl", "line": i, **meta}
    )


def test_default_pipeline_is_reproducible_and_varies_with_key() -> None:
    image = page()
    first = build_augmentation("default", seed=7)
    again = build_augmentation("default", seed=7)
    outs = [pixels(first(image, key=k)) for k in range(8)]
    assert all(np.array_equal(o, pixels(again(image, key=k))) for k, o in enumerate(outs))
    assert len({o.tobytes() for o in outs}) >= 6  # different keys, different images
    other_seed = build_augmentation("default", seed=8)
    assert any(not np.array_equal(o, pixels(other_seed(image, key=k))) for k, o in enumerate(outs))
    assert first(image, key=3).size == image.size and first(image, key=3).mode == "RGB"
    assert first(image.convert("L"), key=1).mode == "L"


def test_transforms_draw_independently() -> None:
    """albumentations 2.0 seeds every child alike; two p=0.5 transforms must not always fire together."""
    spec = [{"name": "Rotate", "limit": 5, "fill": 255, "p": 0.5}, {"name": "InvertImg", "p": 0.5}]
    augmenter = build_augmentation(spec, seed=0)
    image = page()
    inverted = [pixels(augmenter(image, key=k)).mean() < 128 for k in range(40)]
    rotated = [not np.array_equal(pixels(augmenter(image, key=k)), pixels(image)) for k in range(40)]
    assert 0 < sum(inverted) < 40
    assert any(r and not i for r, i in zip(rotated, inverted))


def test_p_zero_is_identity() -> None:
    image = page()
    augmenter = build_augmentation("default", seed=0, p=0.0)
    assert all(augmenter(image, key=k) is image for k in range(5))
    never = build_augmentation([{"name": "Rotate", "limit": 4, "p": 0.0}], seed=0)
    assert all(np.array_equal(pixels(never(image, key=k)), pixels(image)) for k in range(5))


@pytest.mark.parametrize("name", ["HorizontalFlip", "VerticalFlip", "Transpose", "RandomRotate90", "D4"])
def test_flips_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"augment\\[1\\]: {name} is refused for documents"):
        build_augmentation([{"name": "Rotate", "limit": 3}, {"name": name, "p": 0.5}], seed=0)


def test_spec_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown albumentations transform 'Rotat'.*Did you mean Rotate"):
        build_augmentation([{"name": "Rotat"}], seed=0)
    with pytest.raises(ValueError, match=r"\(Rotate\): unknown argument\(s\) \['limt'\]"):
        build_augmentation([{"name": "Rotate", "limt": 3}], seed=0)
    with pytest.raises(ValueError, match="border_mode: mirror"):
        build_augmentation([{"name": "Rotate", "border_mode": "mirror"}], seed=0)
    with pytest.raises(ValueError, match="unknown augmentation preset 'strong'"):
        build_augmentation("strong", seed=0)
    with pytest.raises(ValueError, match="with a 'name'"):
        build_augmentation([{"limit": 3}], seed=0)
    assert build_augmentation(None, seed=0) is None and build_augmentation([], seed=0) is None


def test_yaml_style_spec_builds_transforms() -> None:
    augmenter = build_augmentation(DEFAULT_PIPELINE, seed=1)
    assert isinstance(augmenter, Augmenter)
    assert [type(t).__name__ for t in augmenter.transforms] == [s["name"] for s in DEFAULT_PIPELINE]
    rotate = augmenter.transforms[0]
    assert rotate.border_mode == 0 and rotate.p == 0.5  # "constant" -> cv2.BORDER_CONSTANT


def test_expand_with_copies_counts_and_marks() -> None:
    records = [record(i) for i in range(4)]
    out = expand_with_copies(records, copies=3, p=1.0)
    assert len(out) == 16
    assert out[0] is records[0] and "augment_key" not in records[0].meta
    copies = [r for r in out if "augment_copy" in r.meta]
    assert len(copies) == 12 and all("augment_key" in r.meta for r in copies)
    assert len({r.meta["augment_key"] for r in copies}) == 12
    assert copies[0].id == "r0#aug1" and copies[0].meta["augmented_from"] == "r0"
    assert copies[0].answers == records[0].answers and copies[0].meta["line"] == 0
    assert [
        r.meta["augment_key"] for r in expand_with_copies(records, 3, 1.0) if "augment_key" in r.meta
    ] == [r.meta["augment_key"] for r in copies]
    assert expand_with_copies(records, 0, 0.6) == records


def test_expand_probability_and_guards() -> None:
    records = [record(i) for i in range(100)]
    out = expand_with_copies(records, copies=3, p=0.6)
    copies = [r for r in out if "augment_copy" in r.meta]
    augmented = sum("augment_key" in r.meta for r in copies)
    assert len(copies) == 300 and 140 < augmented < 220
    assert not any("augment_key" in r.meta for r in expand_with_copies(records, 2, 0.0))
    with pytest.raises(ValueError, match="already an augmented copy"):
        expand_with_copies(out, 1, 0.5)
    with pytest.raises(ValueError, match="p must be in"):
        expand_with_copies(records, 1, 1.5)


def test_enhance_caps_the_side_and_keeps_the_input() -> None:
    image = page((400, 200))
    small = enhance(image, max_side=100, contrast=1.5, sharpness=2.0)
    assert small.size == (100, 50) and image.size == (400, 200)
    assert np.array_equal(pixels(enhance(image, max_side=None)), pixels(image))


def test_preview_script_writes_a_grid(tmp_path: Path) -> None:
    with (tmp_path / "train.jsonl").open("w") as fh:
        for i in range(3):
            page().save(tmp_path / f"p{i}.png")
            fh.write(json.dumps({"id": f"s{i}", "image": f"p{i}.png", "target": {"total": i}}) + "\n")
    out = tmp_path / "preview" / "grid.png"
    cmd = [sys.executable, str(REPO / "scripts" / "preview_augmentations.py")]
    args = [
        "--data",
        str(tmp_path / "train.jsonl"),
        "--out",
        str(out),
        "--n",
        "2",
        "--copies",
        "2",
        "--size",
        "64",
    ]
    proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as grid:
        assert grid.size == (3 * 68 + 4, 2 * (64 + 14 + 4) + 4)
