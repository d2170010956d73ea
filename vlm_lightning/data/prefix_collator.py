"""Collation for prefix + suffix families (PaliGemma): no chat template, the target is the suffix.

The processor builds ``<image>... <bos>prompt\\n`` + ``suffix<eos>`` and marks suffix tokens with
``token_type_ids == 1``; those (answer + ``<eos>``) are the only labelled tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from vlm_lightning.data.collator import (
    IGNORE_INDEX,
    CollatorBase,
    LengthReport,
    SampleTooLongError,
    record_fields,
    too_long_message,
)
from vlm_lightning.data.masking import MaskStrategy
from vlm_lightning.data.records import Record
from vlm_lightning.data.sampling import FILLER
from vlm_lightning.errors import SettingError


def prefix_prompt(record: Record, image_token: str = "<image>") -> str:
    """``<image>`` per image, then every turn before the final answer (system, user, earlier answers), one per
    line: the prefix format has no turn markers, so earlier answers are context, never targets."""
    parts = [m["content"] for m in record.prompt_messages]
    return image_token * len(record.images) + "\n".join(parts)


def unlearnable_turns(record: Record, mask: str) -> str | None:
    """Why ``mask`` cannot be honoured for ``record`` in the prompt + suffix format, or None."""
    answers = sum(m["role"] == "assistant" for m in record.messages)
    if mask == "assistant" and answers > 1:
        return (
            f"sample '{record.id}' ({record.where}) "
            f"has {answers} assistant turns, but this family's prompt + suffix format learns only the final answer: "
            "data.mask assistant cannot train the earlier ones; set --data.mask last (earlier turns stay in the "
            "prompt as context)"
        )
    return None


class PrefixSuffixCollator(CollatorBase):
    """Batches for PaliGemma-style models: labels from ``suffix=``, prompts left-padded for generation."""

    default_mask: ClassVar[MaskStrategy] = "last"

    def _read_processor(self) -> None:
        self.image_tokens = int(getattr(self.processor, "image_seq_length", 0))
        self.image_token = getattr(self.processor, "image_token", "<image>")

    def _check(
        self,
        records: Sequence[Record],
        lengths: list[int],
        prompt_lengths: list[int],
        problems: list[str] | None,
        cut: list[tuple[str, int, int]] | None = None,
    ) -> None:
        for record, length, prompt_len in zip(records, lengths, prompt_lengths):
            if length <= self.max_length:
                continue
            if self.truncate_answers and prompt_len < self.max_length:
                if cut is not None:  # measuring (``lengths``), not collating a batch
                    cut.append((record.id, length, self.max_length))
                continue
            what = "image tokens" if self.image_tokens >= self.max_length else "the prompt"
            message = too_long_message(record, length, prompt_len, self.max_length, what)
            if problems is None:
                raise SampleTooLongError(message)
            problems.append(message)

    def _images(self, items: Sequence[tuple[Record, list[Image.Image]]]) -> list[list[Image.Image]]:
        return [list(imgs) for _, imgs in items]

    def lengths(self, items: Sequence[tuple[Record, list[Image.Image]]]) -> LengthReport:
        """Token lengths of samples, the too-long ones (and ``data.mask`` it cannot honour), and the cut ones."""
        records = [r for r, _ in items]
        problems = [reason for r in records if (reason := unlearnable_turns(r, self.mask))]
        cut: list[tuple[str, int, int]] = []
        full = self.processor(
            text=[prefix_prompt(r, self.image_token) for r in records],
            images=self._images(items),
            suffix=[r.answers[0] if r.answers else "" for r in records],
            return_tensors="pt",
            padding="longest",
        )
        lengths = full["attention_mask"].sum(1).tolist()
        self._check(records, lengths, _prompt_mask(full).sum(1).tolist(), problems, cut)
        return LengthReport(lengths, problems, cut)

    def _left_padded_prompts(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Generation inputs cut from a prompt + suffix batch (images processed once): the prefix tokens
        (``token_type_ids == 0``) of each row, left-padded, with the same pixel values."""
        prompt = _prompt_mask(batch)
        lengths = prompt.sum(1).tolist()
        width, bsz = max(lengths), len(lengths)
        input_ids = torch.full((bsz, width), self.pad_id, dtype=batch["input_ids"].dtype)
        attention = torch.zeros((bsz, width), dtype=batch["attention_mask"].dtype)
        for i, n in enumerate(lengths):
            input_ids[i, width - n :] = batch["input_ids"][i][prompt[i]]
            attention[i, width - n :] = 1
        return {
            "input_ids": input_ids,
            "token_type_ids": torch.zeros_like(input_ids),
            "attention_mask": attention,
            "pixel_values": batch["pixel_values"],
        }

    def __call__(self, items: Sequence[tuple[Record, list[Image.Image]]]) -> dict[str, Any]:
        """Collate (record, images) pairs into a training batch plus left-padded generation inputs.

        With answers, the processor runs once (prompt + suffix) and the generation prompts are cut from
        that batch; without (predict), it runs once on the prompts, left-padded."""
        records = [r for r, _ in items]
        if reason := next((why for r in records if (why := unlearnable_turns(r, self.mask))), None):
            raise SettingError(reason)
        prompts = [prefix_prompt(r, self.image_token) for r in records]
        images = self._images(items)
        out: dict[str, Any] = record_fields(records)
        if not all(r.answers for r in records):
            gen = self.processor(
                text=prompts, images=images, return_tensors="pt", padding="longest", padding_side="left"
            )
            gen.pop("labels", None)  # all -100 without a suffix; generate has no use for them
            out["generation_inputs"] = dict(gen)
            return out
        kwargs: dict[str, Any] = {"padding": "longest"}
        if self.pad_to_multiple_of:
            kwargs["pad_to_multiple_of"] = self.pad_to_multiple_of
        batch = self.processor(
            text=prompts,
            images=images,
            suffix=[r.answers[0] for r in records],
            return_tensors="pt",
            padding_side="right",
            **kwargs,
        )
        out["generation_inputs"] = self._left_padded_prompts(batch)
        lengths = batch["attention_mask"].sum(1).tolist()
        self._check(records, lengths, _prompt_mask(batch).sum(1).tolist(), None)
        labels = batch.pop("labels")
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        for i, record in enumerate(records):
            if record.meta.get(FILLER):  # an evaluation filler (sharded ranks in step): no loss, no score
                labels[i] = IGNORE_INDEX
        if batch["input_ids"].shape[1] > self.max_length:
            batch = {
                k: (
                    v[:, : self.max_length]
                    if torch.is_tensor(v) and v.dim() == 2 and v.shape == labels.shape
                    else v
                )
                for k, v in batch.items()
            }
            labels = labels[:, : self.max_length]
        out["inputs"] = dict(batch)
        out["labels"] = labels
        return out


def _prompt_mask(batch: dict[str, Any]) -> torch.Tensor:
    """Positions of the prefix (image + prompt) tokens: attended and ``token_type_ids == 0``."""
    return batch["attention_mask"].bool() & (batch["token_type_ids"] == 0)
