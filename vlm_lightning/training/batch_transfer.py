"""Batch hooks of the LightningModule: what is built on the CPU copy of a batch, and what stays there."""

from __future__ import annotations

import functools
from typing import Any

import torch

from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.host_inputs import split_host_inputs
from vlm_lightning.models.host_masks import packed_sequence_ids, padded_rows, prepares_text_masks
from vlm_lightning.models.host_precompute import host_rope_inputs, kept_on_host
from vlm_lightning.models.packed_positions import packed_inputs
from vlm_lightning.training.loss import labelled_positions, labelled_rows


class BatchTransfer:
    """Mixin for ``VLMFineTuner``: batches reach the device without host syncs in the step.

    Needs the LightningModule's ``hparams``, ``_trainer`` and ``transfer_batch_to_device``, and the
    fine-tuner's ``model`` and ``facts``.
    """

    model: torch.nn.Module
    facts: FamilyFacts

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Find the labelled positions and rows on the CPU copy (on the GPU each is a sync: ``nonzero``), and
        build the family's host-computed inputs there (packed positions, ``models/host_precompute.py``), and
        the answers to the text masks' questions (``models/host_masks.py``: the masks are then built without
        asking them on the GPU)."""
        if (
            isinstance(batch, dict)
            and torch.is_tensor(batch.get("labels"))
            and batch["labels"].device.type == "cpu"
        ):
            batch["label_positions"] = labelled_positions(batch["labels"])
            batch["label_rows"] = labelled_rows(batch["labels"], batch["label_positions"])
        if isinstance(batch, dict) and "packed_segments" in batch and "position_ids" not in batch["inputs"]:
            # packed rows: positions restart per sample (the model keeps samples apart by them)
            batch["inputs"].update(
                packed_inputs(self.model, self.facts, batch["inputs"], batch["packed_segments"])
            )
        evaluating = self._trainer is not None and (self.trainer.testing or self.trainer.predicting)
        if (
            isinstance(batch, dict)
            and isinstance(batch.get("inputs"), dict)
            and not evaluating  # test / predict only generate, from generation_inputs
            and self.hparams.get("host_built_inputs", True)
        ):
            batch["inputs"].update(host_rope_inputs(self.model, self.facts, batch["inputs"]))
            batch.update(self._text_mask_answers(batch["inputs"]))
        return batch

    def _text_mask_answers(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The text masks' questions answered on the CPU batch (``models/host_masks.py``): do the rows hold
        padding (``padded_rows``), which sample is each token of packed rows (``packed_sequence_ids``)."""
        ids = inputs.get("input_ids")
        if (
            not torch.is_tensor(ids)
            or ids.device.type != "cpu"
            or not prepares_text_masks(self.model, inputs)
        ):
            return {}
        if inputs.get("attention_mask") is None:
            return {"packed_sequence_ids": packed_sequence_ids(inputs)}
        return {"padded_rows": padded_rows(inputs["attention_mask"])}

    @functools.cached_property
    def _host_built_kept(self) -> tuple[str, ...]:
        """The host-built inputs that stay on the CPU (``models/host_precompute.py: kept_on_host``)."""
        return kept_on_host(self.model, self.facts)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the batch, except the family's ``host_inputs`` (shapes read as Python numbers) and, in a
        batch with host-built Qwen-VL inputs, the grids and boundaries read the same way."""
        kept: dict[str, dict[str, Any]] = {}
        if isinstance(batch, dict):
            for part in ("inputs", "generation_inputs"):
                if isinstance(batch.get(part), dict):
                    also = self._host_built_kept if "image_cu_seqlens" in batch[part] else ()
                    batch[part], kept[part] = split_host_inputs(batch[part], self.facts, also)
        moved = super().transfer_batch_to_device(batch, device, dataloader_idx)
        for part, host in kept.items():
            batch[part].update(host)  # the caller's batch keeps them too (nothing lost on the host)
            moved[part].update(host)
        return moved


__all__ = ["BatchTransfer"]
