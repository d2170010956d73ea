"""``PredictionTable``: a W&B table of sample predictions, with their images, after every validation.

With an active ``WandbLogger`` it logs a ``wandb.Table`` of a few sample predictions; a no-op with any
other logger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from vlm_lightning.callbacks.logger_checks import check_loggers
from vlm_lightning.data.image_files import load_image


def _wandb_logger(trainer: L.Trainer) -> Any:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def _short(text: Any, limit: int = 2000) -> str:
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PredictionTable(Callback):
    """Logs ``val/samples``: a ``wandb.Table`` (id, image, prompt, prediction, target) after every validation.

    Samples come from ``pl_module.last_val_samples`` (a list of dicts with ``id``, ``prediction``,
    ``target`` and optionally ``prompt`` / ``image``, filled by the module during validation). When the
    module has no such attribute, the callback generates predictions for the first validation batch
    itself. Images are taken from the row (``image``) or looked up by id in the datamodule's val split.
    Nothing happens without an active ``WandbLogger``, on ranks other than 0, or during the sanity check.

    Args:
        max_samples: rows per table.
        key: the key the table is logged under.
        max_image_side: images are shrunk to this longest side before upload.
        generate_if_missing: generate the first val batch when the module exposes no samples.
    """

    def __init__(
        self,
        max_samples: int = 8,
        key: str = "val/samples",
        max_image_side: int = 512,
        generate_if_missing: bool = True,
    ) -> None:
        self.max_samples = max_samples
        self.key = key
        self.max_image_side = max_image_side
        self.generate_if_missing = generate_if_missing
        self._generated: list[dict[str, Any]] = []
        self.logged = 0

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.global_rank == 0 and not trainer.sanity_checking and _wandb_logger(trainer) is not None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if _wandb_logger(trainer) is not None:
            check_loggers(trainer.loggers)  # also guards Trainers built without the CLI

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._generated = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            batch_idx != 0
            or dataloader_idx != 0
            or not self.generate_if_missing
            or hasattr(pl_module, "last_val_samples")
            or not hasattr(pl_module, "generate")
            or trainer.sanity_checking
            or _wandb_logger(trainer) is None
        ):
            return
        texts, _ = pl_module.generate(batch)  # on every rank: sharded models generate collectively
        self._generated = [
            {"id": i, "prompt": p, "prediction": t, "target": a[0] if len(a) == 1 else a}
            for i, p, t, a in zip(batch["ids"], batch["prompts"], texts, batch["answers"])
        ][: self.max_samples]

    def samples(self, pl_module: L.LightningModule) -> list[dict[str, Any]]:
        """The rows of this validation's table."""
        rows = getattr(pl_module, "last_val_samples", None)
        if rows is None:
            rows = self._generated
        return list(rows or [])[: self.max_samples]

    def _image(self, trainer: L.Trainer, row: Mapping[str, Any]) -> Any:
        image = row.get("image")
        if image is None:
            datasets = getattr(getattr(trainer, "datamodule", None), "datasets", None) or {}
            dataset = datasets.get("val") if isinstance(datasets, Mapping) else None
            records = getattr(dataset, "records", None) or []
            record = next((r for r in records if getattr(r, "id", None) == row.get("id")), None)
            image = record.images[0] if record is not None and record.images else None
        if image is None:
            return None
        try:
            if not isinstance(image, Image.Image):
                image = load_image(image)
            image = image.copy()
            image.thumbnail((self.max_image_side, self.max_image_side))
        except Exception:  # an unreadable image must not stop training
            return None
        return image

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        rows = self.samples(pl_module)
        if not rows:
            return
        import wandb  # optional: only with an active WandbLogger

        table = wandb.Table(columns=["step", "id", "image", "prompt", "prediction", "target"])
        for row in rows:
            image = self._image(trainer, row)
            table.add_data(
                trainer.global_step,
                str(row.get("id", "")),
                wandb.Image(image) if image is not None else None,
                _short(row.get("prompt", "")),
                _short(row.get("prediction", "")),
                _short(row.get("target", "")),
            )
        _wandb_logger(trainer).log_metrics({self.key: table}, step=trainer.global_step)
        self.logged += 1


__all__ = ["PredictionTable"]
