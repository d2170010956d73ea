"""The map-style dataset of one split: records with their images loaded (and augmented) on access."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from vlm_lightning.data.cache import fingerprint
from vlm_lightning.data.enhance import enhance
from vlm_lightning.data.image_files import load_image
from vlm_lightning.data.records import Record
from vlm_lightning.data.sampling import FILLER
from vlm_lightning.errors import UserError


class ImageLoadError(UserError, RuntimeError):
    """An image could not be loaded while batching; names the file and row."""


class RecordDataset(Dataset):
    """Records with their images loaded (and, for training, augmented) on access."""

    def __init__(
        self,
        records: list[Record],
        augmenter: Any = None,
        max_image_side: int | None = None,
        contrast: float = 1.0,
        sharpness: float = 1.0,
        cache: Any = None,
        cache_settings: Any = None,
    ) -> None:
        self.records = records
        self.cache = cache
        self.cache_settings = cache_settings
        self.augmenter = augmenter
        self.max_image_side = max_image_side
        self.contrast = contrast
        self.sharpness = sharpness
        self.lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Record, list[Image.Image]]:
        if index < 0:  # an evaluation filler (``EvenShardSampler``): sample -1 - index, marked, never scored
            record, images = self[-1 - index]
            return dataclasses.replace(record, meta={**record.meta, FILLER: True}), images
        record = self.records[index]
        images = []
        for image in record.images:
            key = None
            if self.cache is not None and isinstance(image, (str, Path)):
                key = fingerprint(str(image), self.cache_settings, record.meta.get("augment_key"))
                cached = self.cache.get_image(key)
                if cached is not None:
                    images.append(cached)
                    continue
            try:
                im = load_image(image)
            except Exception as exc:
                raise ImageLoadError(
                    f"{record.where}: sample '{record.id}': cannot load image {image}: {exc}"
                ) from exc
            if self.max_image_side or self.contrast != 1.0 or self.sharpness != 1.0:
                im = enhance(
                    im, max_side=self.max_image_side, contrast=self.contrast, sharpness=self.sharpness
                )
            if self.augmenter is not None and "augment_key" in record.meta:
                im = self.augmenter(im, key=record.meta["augment_key"])
            if key is not None:
                self.cache.put_image(key, im)
            images.append(im)
        return record, images
