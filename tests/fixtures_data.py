"""Small receipt-like JSONL fixtures written by tests (no dependency on the synthetic generators)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw


def write_receipt_split(folder: Path, name: str, n: int, seed: int) -> Path:
    """Write ``name``.jsonl with ``n`` rows and their PNG images under ``folder/images``."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            target = {
                "store_name": rng.choice(["ACME", "Bolt", "Coop"]),
                "total": round(rng.uniform(1, 99), 2),
            }
            image = Image.new("RGB", (112, 140), "white")
            ImageDraw.Draw(image).text(
                (8, 8), f"{target['store_name']}\nTOTAL {target['total']}", fill="black"
            )
            rel = f"images/{name}-{i}.png"
            image.save(folder / rel)
            fh.write(json.dumps({"id": f"{name}-{i}", "image": rel, "target": target}) + "\n")
    return path


def write_receipt_dataset(folder: Path, n_train: int = 8, n_val: int = 3, n_test: int = 5) -> dict[str, Path]:
    """Train / val / test JSONL files in ``folder``."""
    return {
        "train": write_receipt_split(folder, "train", n_train, 0),
        "val": write_receipt_split(folder, "val", n_val, 1),
        "test": write_receipt_split(folder, "test", n_test, 2),
    }


def chat_batch(
    path: str, n: int = 3, sizes: tuple[tuple[int, int], ...] | None = None, image_max_tokens: int | None = 16
) -> dict:
    """A collated training batch of ``n`` one-image records (answers ``{"n": 7i}``) for the replica at ``path``;
    ``sizes``: the images' (width, height), one per record (default 64 x 80 each); ``image_max_tokens``: the
    processor's image budget (Gemma 4 takes 70 at least)."""
    from PIL import Image

    from vlm_lightning.data.records import Record
    from vlm_lightning.models.loading import family_of, load_processor, make_collator

    processor = load_processor(path, image_max_tokens=image_max_tokens)
    collator = make_collator(processor, family_of(path), max_length=300)  # PaliGemma: prompt + suffix
    records = [
        Record(
            str(i),
            ["x"],
            [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f'{{"n": {i * 7}}}'}],
            [f'{{"n": {i * 7}}}'],
        )
        for i in range(len(sizes) if sizes else n)
    ]
    sizes = sizes or ((64, 80),) * n
    images = [Image.new("RGB", size, (i * 60, 200, 90)) for i, size in enumerate(sizes)]
    return collator([(r, [image]) for r, image in zip(records, images, strict=True)])
