"""Write a PNG grid of a few samples of a JSONL file next to their augmented copies.

Each row is one sample: the original, then ``--copies`` augmented versions made with the same keys
and seed as training (``data.augment`` / ``seed``), so what you see is what the model gets. The
pipeline is applied to every copy here (training applies it to a copy with probability ``augment_p``).

    python scripts/preview_augmentations.py --data data/train.jsonl --out aug.png --n 4 --copies 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from vlm_lightning.data.augment import build_augmentation, expand_with_copies
from vlm_lightning.data.image_files import load_image
from vlm_lightning.data.records import read_jsonl

LABEL_H = 14


def parse_pipeline(value: str) -> str | list[dict]:
    """``default``, a JSON list, or a YAML / JSON file holding the list of transforms."""
    if value.strip().startswith("["):
        return json.loads(value)
    path = Path(value)
    if path.is_file():
        import yaml

        return yaml.safe_load(path.read_text())
    return value


def cell(image: Image.Image, size: int, label: str) -> Image.Image:
    """The image fitted in a ``size`` square with a label strip above it."""
    tile = Image.new("RGB", (size, size + LABEL_H), "white")
    image = image.convert("RGB")
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    tile.paste(image, ((size - image.width) // 2, LABEL_H + (size - image.height) // 2))
    ImageDraw.Draw(tile).text((2, 1), label[: size // 6], fill="black")
    return tile


def build_grid(rows: list[list[tuple[Image.Image, str]]], size: int) -> Image.Image:
    """Paste the labelled images row by row with a small gap."""
    gap = 4
    n_cols = max(len(r) for r in rows)
    grid = Image.new(
        "RGB", (n_cols * (size + gap) + gap, len(rows) * (size + LABEL_H + gap) + gap), "#888888"
    )
    for r, row in enumerate(rows):
        for c, (image, label) in enumerate(row):
            grid.paste(cell(image, size, label), (gap + c * (size + gap), gap + r * (size + LABEL_H + gap)))
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="JSONL file (rows with image + answer / target)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--n", type=int, default=4, help="samples (rows of the grid)")
    parser.add_argument("--copies", type=int, default=3, help="augmented copies per sample")
    parser.add_argument("--seed", type=int, default=0, help="the training seed")
    parser.add_argument("--augment", default="default", help="'default', a JSON list or a YAML/JSON file")
    parser.add_argument("--size", type=int, default=256, help="cell size in pixels")
    args = parser.parse_args(argv)

    records, problems = read_jsonl(args.data)
    if problems:
        print("\n".join(str(p) for p in problems[:20]), file=sys.stderr)
    records = [r for r in records if r.images][: args.n]
    if not records:
        print(f"no usable samples with images in {args.data}", file=sys.stderr)
        return 1
    augmenter = build_augmentation(parse_pipeline(args.augment), seed=args.seed)
    if augmenter is None:
        print("the augmentation spec is empty: nothing to preview", file=sys.stderr)
        return 1
    expanded = expand_with_copies(records, args.copies, p=1.0)
    rows: list[list[tuple[Image.Image, str]]] = []
    for record in expanded:
        image = load_image(record.images[0])
        if "augment_key" in record.meta:
            rows[-1].append(
                (augmenter(image, key=record.meta["augment_key"]), f"copy {record.meta['augment_copy']}")
            )
        else:
            rows.append([(image, record.id)])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    build_grid(rows, args.size).save(out)
    print(f"wrote {out} ({len(rows)} samples x {args.copies} copies, seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
