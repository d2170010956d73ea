"""What every side trains or generates on, and what it costs in FLOPs.

Synthetic receipt-like records (image, prompt, JSON answer), the model folder and the shared work
directory the parent prepares (``meta.json``, collated training batches, generation items), the token
statistics of a batch, the model FLOPs of a LoRA training step, padding a batch to a multiple of a
length, and the peak TFLOP/s of a device.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.constants import CPU_NOMINAL_TFLOPS, IGNORE_INDEX, PEAK_BF16_TFLOPS, TINY_FAMILIES

# =============================================================================================
# Synthetic receipts
# =============================================================================================
STORES = ["Corner Market", "Blue Fern Cafe", "Hardware Hub", "City Pharmacy", "Green Grocer", "Book Nook"]
ITEMS = ["espresso", "bagel", "milk 1L", "batteries AA", "notebook", "apples", "screws M4", "tea", "bread"]
PROMPTS = [
    "Extract store, date, items and total from this receipt as JSON.",
    "Read the receipt and return its fields as compact JSON please.",
    "Return the receipt as JSON: store_name, date, items, total now.",
]
GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:-$"


def receipt_answer(rng: random.Random, n_tokens: int) -> str:
    """Receipt-like compact JSON text of exactly ``n_tokens`` bytes (= tokens for a byte-level tokenizer)."""
    doc: dict[str, Any] = {
        "store_name": rng.choice(STORES),
        "date": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "currency": "EUR",
        "items": [],
    }
    text = json.dumps(doc, separators=(",", ":"))
    while len(text) < n_tokens:
        price = rng.randint(50, 4999) / 100
        doc["items"].append({"name": rng.choice(ITEMS), "qty": rng.randint(1, 4), "price": f"{price:.2f}"})
        doc["total"] = f"{sum(float(i['price']) * i['qty'] for i in doc['items']):.2f}"
        text = json.dumps(doc, separators=(",", ":"))
    return text[:n_tokens]


def receipt_image(rng: random.Random, width: int, height: int) -> Any:
    """A white receipt-looking RGB image with lines of dark text."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (250, 250, 244))
    draw = ImageDraw.Draw(image)
    y = 8
    while y < height - 16:
        line = "".join(rng.choice(GLYPHS) for _ in range(rng.randint(6, max(7, width // 12))))
        draw.text((8 + rng.randint(0, 16), y), line, fill=(25, 25, 25))
        y += rng.randint(12, 22)
    return image


def make_items(rng: random.Random, n: int, args: argparse.Namespace, answer_range: list[int]) -> list[tuple]:
    """``n`` (Record, [image]) pairs: one image, a ~``prompt_tokens`` prompt, an answer in ``answer_range``."""
    from vlm_lightning.data.records import Record

    items = []
    for _ in range(n):
        idx = rng.randrange(10**9)
        width, height = (rng.randint(*args.image_size) for _ in range(2))
        prompt = rng.choice(PROMPTS)[: args.prompt_tokens].rstrip()
        answer = receipt_answer(rng, rng.randint(*answer_range))
        record = Record(
            id=f"bench-{idx}",
            images=[receipt_image(rng, width, height)],
            messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            answers=[answer],
            meta={"source": "benchmark"},
        )
        items.append((record, list(record.images)))
    return items


# =============================================================================================
# Model folder, batches and the shared work directory (parent side)
# =============================================================================================
def build_folder(args: argparse.Namespace, out: Path) -> tuple[Path, str]:
    """Write the config + processor folder; return it and the family name."""
    from vlm_lightning.replicas.real_size import REAL_ARCHITECTURES, build_real_folder

    family = REAL_ARCHITECTURES[args.family].family
    if not args.tiny:
        return build_real_folder(args.family, out), family
    from vlm_lightning.replicas.registry import BUILDERS, build_tiny

    tiny = TINY_FAMILIES[args.family]
    if tiny in BUILDERS:
        return build_tiny(tiny, out), family
    print(f"[bench] note: no tiny replica for {tiny}; using the shrunk real config")
    return build_real_folder(args.family, out, shrink=True), family


def load_processor(folder: Path) -> Any:
    """The folder's processor, with a pad token."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def prepare_workdir(args: argparse.Namespace, workdir: Path, fit_data: bool = False) -> dict[str, Any]:
    """Build the model folder and the batches every side shares; write ``meta.json``.

    ``fit_data``: also write the samples of those batches as a JSONL dataset for the ``fit`` side.
    """
    import torch
    from transformers import AutoConfig

    from vlm_lightning.data.collator import ChatCollator
    from vlm_lightning.replicas.real_size import family_facts

    start = time.perf_counter()
    folder, family = build_folder(args, workdir / "model")
    processor = load_processor(folder)
    facts = family_facts(family)
    collator = ChatCollator(processor, facts, max_length=args.max_length)
    rng = random.Random(args.seed)
    meta: dict[str, Any] = {
        "folder": str(folder),
        "family": family,
        "image_token_id": int(AutoConfig.from_pretrained(folder).image_token_id),
        "pad_id": int(collator.pad_id),
    }
    if args.gen:
        items = make_items(rng, args.gen_prompts, args, [8, 16])
        torch.save(items, workdir / "gen_items.pt")
        meta["gen_prompts"] = len(items)
    if not args.gen or args.gen_train_steps:
        n = max(1, min(args.distinct_batches, args.warmup + args.steps))
        batches_items = [make_items(rng, args.batch_size, args, args.answer_tokens) for _ in range(n)]
        pool = [_strip_batch(collator(items)) for items in batches_items]
        torch.save(pool, workdir / "train_batches.pt")
        meta["pool"] = describe_pool(pool, meta["image_token_id"])
        if fit_data and not args.gen:
            # the fit side's epoch holds every step's samples, cycled as the other sides cycle the pool
            cycled = [batches_items[i % n] for i in range(args.warmup + args.steps)]
            meta["fit_data"] = str(write_samples(cycled, workdir / "fit-data"))
    (workdir / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"[bench] model folder + data ready in {time.perf_counter() - start:.1f}s: {folder}")
    return meta


def write_samples(batches_items: list[list[tuple]], out: Path) -> Path:
    """Write the samples as a dataset in the project's data format; return ``out / "train.jsonl"``.

    One PNG per image (lossless: the pixels the collated batches saw) under ``out / "images"`` and one
    JSONL row per sample: ``id``, ``image`` (relative to the file) and ``messages`` (the user prompt and
    the assistant answer), which ``vlm_lightning.data.records.read_jsonl`` reads back into the same
    ``Record``. A batch that recurs (fewer distinct batches than steps) gets ids with a ``-c<k>`` suffix.
    """
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows, seen = [], {}
    for items in batches_items:
        for record, record_images in items:
            copy = seen.get(record.id, 0)
            seen[record.id] = copy + 1
            path = images / f"{record.id}.png"
            if not copy:
                record_images[0].save(path)
            rows.append(
                {
                    "id": record.id if not copy else f"{record.id}-c{copy}",
                    "image": f"images/{path.name}",
                    "messages": record.messages,
                }
            )
    train = out / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return train


def _strip_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Keep what training needs (drop generation inputs, prompts, answers)."""
    return {"inputs": batch["inputs"], "labels": batch["labels"], "ids": batch["ids"]}


def describe_pool(pool: list[dict[str, Any]], image_token_id: int) -> dict[str, Any]:
    """Token statistics of the shared batches."""
    stats = [batch_stats(b, image_token_id) for b in pool]
    widths = [int(b["labels"].shape[1]) for b in pool]
    return {
        "batches": len(pool),
        "tokens_per_batch": statistics.mean(s.tokens for s in stats),
        "labelled_per_batch": statistics.mean(s.labelled for s in stats),
        "image_tokens_per_batch": statistics.mean(s.image_tokens for s in stats),
        "patches_per_batch": statistics.mean(s.patches for s in stats),
        "width_min": min(widths),
        "width_max": max(widths),
    }


# =============================================================================================
# Batch statistics and FLOPs
# =============================================================================================
@dataclass
class BatchStats:
    """Counts that drive the FLOPs of one batch."""

    samples: int
    tokens: int  # non-padding tokens, image placeholders included
    labelled: int  # positions whose next token is labelled
    patches: int  # vision-encoder patches (before merging), padding excluded
    image_tokens: int  # merged image tokens the LM sees


def batch_stats(batch: dict[str, Any], image_token_id: int) -> BatchStats:
    """Count samples, tokens, labelled tokens, vision patches and image tokens of a batch."""
    inputs, labels = batch["inputs"], batch["labels"]
    if "image_grid_thw" in inputs:
        patches = int(inputs["image_grid_thw"].prod(-1).sum())
    elif "pixel_attention_mask" in inputs:
        patches = int(inputs["pixel_attention_mask"].sum())
    else:
        patches = 0
    return BatchStats(
        samples=int(labels.shape[0]),
        tokens=int(inputs["attention_mask"].sum()),
        labelled=int((labels[:, 1:] != IGNORE_INDEX).sum()),
        patches=patches,
        image_tokens=int((inputs["input_ids"] == image_token_id).sum()),
    )


def train_flops(s: BatchStats, counts: dict[str, Any]) -> float:
    """Useful model FLOPs of one LoRA training step (see ``FLOPS_FORMULA``)."""
    return (
        4.0 * counts["lm_non_embedding"] * s.tokens
        + 4.0 * counts["hidden_size"] * counts["vocab_size"] * s.labelled
        + 2.0 * counts["vision_encoder"] * s.patches
        + 2.0 * counts["projector"] * s.image_tokens
    )


def pad_batch(batch: dict[str, Any], multiple: int, pad_id: int) -> dict[str, Any]:
    """Right-pad every token-aligned tensor of a training batch to a multiple of ``multiple``."""
    import torch.nn.functional as F

    labels = batch["labels"]
    width = labels.shape[1]
    extra = (-width) % multiple if multiple and multiple > 1 else 0
    if not extra:
        return batch
    values = {"input_ids": pad_id}
    inputs = {
        k: F.pad(v, (0, extra), value=values.get(k, 0)) if _token_aligned(v, labels) else v
        for k, v in batch["inputs"].items()
    }
    return {**batch, "inputs": inputs, "labels": F.pad(labels, (0, extra), value=IGNORE_INDEX)}


def _token_aligned(value: Any, labels: Any) -> bool:
    return hasattr(value, "shape") and value.dim() == 2 and tuple(value.shape) == tuple(labels.shape)


def peak_tflops(device_name: str, override: float | None, device: str) -> float:
    """Peak dense bf16 TFLOP/s: ``override``, else by device name, else the CPU placeholder."""
    if override:
        return override
    if device == "cpu":
        return CPU_NOMINAL_TFLOPS
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    print(f"[bench] warning: unknown peak for '{device_name}'; MFU uses 989 TFLOP/s (pass --peak-tflops)")
    return 989.0
