"""Batch collation: chat template + processor + assistant-only labels, and left-padded prompts.

The processor runs once per batch on the first segment of every sample (the part holding the
images), so image tensors come out in the family's own batched layout; the remaining text segments
are tokenized with the tokenizer and appended. Generation prompts are cut from the same tokens and
left-padded, so evaluation never re-processes images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image

from vlm_lightning.data.masking import MaskStrategy, labels_from_segments, segment_conversation
from vlm_lightning.data.packing import pack_rows, packed_tensors
from vlm_lightning.data.patch_padding import trim_patch_padding
from vlm_lightning.data.records import Record
from vlm_lightning.data.sampling import FILLER
from vlm_lightning.errors import UserError
from vlm_lightning.models.families import FamilyFacts

IGNORE_INDEX = -100


class SampleTooLongError(UserError, ValueError):
    """A sample cannot fit ``max_length`` without cutting image or prompt tokens."""


def too_long_message(record: Record, length: int, prompt_len: int, max_length: int, what: str) -> str:
    """The one message every collator gives for a sample that does not fit ``max_length``."""
    return (
        f"sample '{record.id}' ({record.where}) needs "
        f"{length} tokens (prompt with images: {prompt_len}); max_length={max_length} would cut {what}. "
        f"Raise data.max_length to at least {length} or lower the image token budget (data.image_max_tokens)."
    )


@dataclass
class EncodedSample:
    """Token ids, labels and per-token extras of one sample; ``prompt_len`` ends its generation prompt."""

    input_ids: list[int]
    labels: list[int]
    extras: dict[str, list[int]]
    prompt_len: int


def to_template_messages(record: Record, plain_text_roles: Sequence[str] = ()) -> list[dict]:
    """Structured template messages: images go to the first user turn, text as typed content parts
    (as a plain string for ``plain_text_roles``, whose template reads no parts)."""
    out: list[dict] = []
    images_placed = False
    for m in record.messages:
        if m["role"] in plain_text_roles and (m["role"] != "user" or images_placed or not record.images):
            out.append({"role": m["role"], "content": m["content"]})
            continue
        parts: list[dict] = []
        if m["role"] == "user" and not images_placed:
            parts.extend({"type": "image"} for _ in record.images)
            images_placed = True
        parts.append({"type": "text", "text": m["content"]})
        out.append({"role": m["role"], "content": parts})
    return out


def _answer_text(message: dict) -> str:
    return "".join(p.get("text", "") for p in message["content"] if p.get("type") == "text")


def record_fields(records: Sequence[Record]) -> dict[str, list]:
    """What every batch carries of its records, besides the tensors: ids, answers, prompts and meta."""
    return {
        "ids": [r.id for r in records],
        "answers": [list(r.answers) for r in records],
        "prompts": [r.prompt_text for r in records],
        "meta": [dict(r.meta) for r in records],
    }


@dataclass
class LengthReport:
    """What ``Collator.lengths`` measured for some samples: their token lengths (after cutting answer tails),
    the samples that cannot fit (messages), and the answer tails cut: ``(id, tokens, kept)``."""

    tokens: list[int]
    problems: list[str]
    cut: list[tuple[str, int, int]]


class CollatorBase:
    """What every collator keeps: the processor and its tokenizer, the family's facts, the length, mask and
    padding settings, and the pad id. ``mask`` left out is the class's ``default_mask``."""

    default_mask: ClassVar[MaskStrategy] = "assistant"

    def __init__(
        self,
        processor: Any,
        facts: FamilyFacts,
        max_length: int = 2048,
        mask: MaskStrategy | None = None,
        pad_to_multiple_of: int | None = None,
        truncate_answers: bool = True,
    ) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.facts = facts
        self.max_length = max_length
        self.mask = self.default_mask if mask is None else mask
        self.pad_to_multiple_of = pad_to_multiple_of
        self.truncate_answers = truncate_answers
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._read_processor()

    def _read_processor(self) -> None:
        """What a collator reads from the processor once, at construction (nothing here)."""


class ChatCollator(CollatorBase):
    """Turn Records with loaded images into model batches for chat-template families."""

    def _read_processor(self) -> None:
        self.image_token_ids = self._image_token_ids()

    def _image_token_ids(self) -> set[int]:
        """Every id an image expands to (Gemma 3: the soft tokens, not only ``<start_of_image>``)."""
        ids = set()
        for name in ("image_token_id", "image_token_index"):
            value = getattr(self.processor, name, None)
            if isinstance(value, int):
                ids.add(value)
        listed = getattr(self.processor, "image_token_ids", None)
        if isinstance(listed, (list, tuple)):
            ids.update(i for i in listed if isinstance(i, int))
        token = getattr(self.processor, "image_token", None)
        if isinstance(token, str):
            ids.add(self.tokenizer.convert_tokens_to_ids(token))
        return ids

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """Render messages with the processor's chat template."""
        return self.processor.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **dict(self.facts.chat_template_kwargs),
        )

    def encode(
        self,
        records: Sequence[Record],
        images: Sequence[list[Image.Image]],
        problems: list[str] | None = None,
        cut: list[tuple[str, int, int]] | None = None,
    ) -> tuple[list[EncodedSample], dict]:
        """Encode samples; return per-sample encodings and the batched image tensors.

        A sample too long for ``max_length`` raises ``SampleTooLongError``, or, when a ``problems`` list is
        given, is reported there (and still returned, cut) so a whole dataset can be checked at once. A
        ``cut`` list receives the samples whose answer tail was cut.
        """
        convs = [
            segment_conversation(
                to_template_messages(r, self.facts.plain_text_roles),
                self.render,
                self.facts.end_of_turn,
                self.mask,
                _answer_text,
            )
            for r in records
        ]
        first_texts = [c.segments[0].text for c in convs]
        proc_kwargs: dict[str, Any] = {"text": first_texts, "return_tensors": "pt", "padding": True}
        if any(images):
            proc_kwargs["images"] = [list(imgs) for imgs in images]
        batch = self.processor(**proc_kwargs, add_special_tokens=False, padding_side="right")
        first_ids = batch.pop("input_ids")
        attention = batch.pop("attention_mask")
        token_keys = [k for k, v in batch.items() if torch.is_tensor(v) and v.shape == first_ids.shape]
        token_extras = {k: batch.pop(k) for k in token_keys}
        rest = [seg.text for c in convs for seg in c.segments[1:]]
        rest_ids = iter(self.tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else [])
        samples: list[EncodedSample] = []
        for i, (record, conv) in enumerate(zip(records, convs)):
            n = int(attention[i].sum())
            if conv.segments[0].learn:
                raise ValueError("the first segment holds the prompt and is never learned")
            later = [next(rest_ids) for _ in conv.segments[1:]]
            ids = first_ids[i, :n].tolist() + [t for seg_ids in later for t in seg_ids]
            labels = labels_from_segments(
                [[0] * n, *later], [seg.learn for seg in conv.segments], IGNORE_INDEX
            )
            if record.meta.get(FILLER):  # an evaluation filler (sharded ranks in step): no loss, no score
                labels = [IGNORE_INDEX] * len(labels)
            # the generation prompt ends where segment ``generation_cut`` starts
            prompt_len = n + sum(len(seg_ids) for seg_ids in later[: max(conv.generation_cut - 1, 0)])
            extras = {k: v[i, :n].tolist() + [0] * (len(ids) - n) for k, v in token_extras.items()}
            sample = EncodedSample(ids, labels, extras, prompt_len)
            try:
                samples.append(self._fit_length(record, sample, cut))
            except SampleTooLongError as exc:
                if problems is None:
                    raise
                problems.append(str(exc))
                samples.append(sample)
        return samples, trim_patch_padding(dict(batch))

    def _fit_length(
        self, record: Record, sample: EncodedSample, cut: list[tuple[str, int, int]] | None = None
    ) -> EncodedSample:
        """Refuse to cut image or prompt tokens; cut the answer's tail if allowed."""
        length = len(sample.input_ids)
        if length <= self.max_length:
            return sample
        last_image = max((i for i, t in enumerate(sample.input_ids) if t in self.image_token_ids), default=-1)
        if last_image >= self.max_length or sample.prompt_len >= self.max_length or not self.truncate_answers:
            what = "image tokens" if last_image >= self.max_length else "the prompt"
            if self.truncate_answers and what == "the prompt" and sample.prompt_len < self.max_length:
                what = "the answer"
            raise SampleTooLongError(
                too_long_message(record, length, sample.prompt_len, self.max_length, what)
            )
        m = self.max_length
        if cut is not None:  # ``lengths`` (the length check), not a training batch
            cut.append((record.id, length, m))
        extras = {k: v[:m] for k, v in sample.extras.items()}
        return EncodedSample(sample.input_ids[:m], sample.labels[:m], extras, sample.prompt_len)

    def lengths(self, items: Sequence[tuple[Record, list[Image.Image]]]) -> LengthReport:
        """Token lengths of samples after cutting answer tails, what cannot fit, and what was cut."""
        problems: list[str] = []
        cut: list[tuple[str, int, int]] = []
        samples, _ = self.encode(
            [r for r, _ in items], [imgs for _, imgs in items], problems=problems, cut=cut
        )
        return LengthReport([len(s.input_ids) for s in samples], problems, cut)

    def _pad_len(self, longest: int) -> int:
        if self.pad_to_multiple_of:
            k = self.pad_to_multiple_of
            return -(-longest // k) * k
        return longest

    def __call__(self, items: Sequence[tuple[Record, list[Image.Image]]]) -> dict[str, Any]:
        """Collate (record, images) pairs into a training batch plus left-padded generation inputs."""
        records = [r for r, _ in items]
        samples, image_tensors = self.encode(records, [imgs for _, imgs in items])
        width = self._pad_len(max(len(s.input_ids) for s in samples))
        bsz = len(samples)
        input_ids = torch.full((bsz, width), self.pad_id, dtype=torch.long)
        labels = torch.full((bsz, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((bsz, width), dtype=torch.long)
        extras = {k: torch.zeros((bsz, width), dtype=torch.long) for k in samples[0].extras}
        for i, s in enumerate(samples):
            n = len(s.input_ids)
            input_ids[i, :n] = torch.tensor(s.input_ids)
            labels[i, :n] = torch.tensor(s.labels)
            attention[i, :n] = 1
            for k, v in s.extras.items():
                extras[k][i, :n] = torch.tensor(v)
        inputs = {"input_ids": input_ids, "attention_mask": attention, **extras, **image_tensors}
        return {
            "inputs": inputs,
            "labels": labels,
            "generation_inputs": self._left_padded_prompts(samples, image_tensors),
            **record_fields(records),
        }

    def pack(
        self,
        items: Sequence[tuple[Record, list[Image.Image]]],
        budget: int | None = None,
        rows: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Collate a training batch as packed rows (``data.packing``).

        ``rows``: how many of ``items`` (in order) each row holds (the sampler's rows); otherwise rows of
        at most ``budget`` tokens are cut in order (``None``: one row). No padding between samples and no
        attention mask: ``packed_segments`` (each row's sample lengths, then its padding) tell the module
        how to build position ids that keep the samples apart. Training only: validation, test and predict
        batches stay unpacked with left-padded generation prompts.
        """
        records = [r for r, _ in items]
        samples, image_tensors = self.encode(records, [imgs for _, imgs in items])
        if rows is None:
            row_indices = pack_rows([len(s.input_ids) for s in samples], budget)
        else:
            if sum(rows) != len(samples):
                raise ValueError(f"rows of {list(rows)} samples for a batch of {len(samples)}")
            starts = [sum(rows[:k]) for k in range(len(rows))]
            row_indices = [list(range(start, start + n)) for start, n in zip(starts, rows, strict=True)]
        tokens, labels, segments = packed_tensors(samples, row_indices, self.pad_id, self.pad_to_multiple_of)
        return {
            "inputs": {**tokens, **image_tensors},
            "labels": labels,
            "packed_segments": segments,
            # host number: no row padding, no filler (a repeated sample that keeps DDP ranks in step)
            "real_tokens": sum(len(s.input_ids) for s, r in zip(samples, records) if not r.meta.get(FILLER)),
            **record_fields(records),
        }

    def _left_padded_prompts(self, samples: Sequence[EncodedSample], image_tensors: dict) -> dict[str, Any]:
        width = max(s.prompt_len for s in samples)
        bsz = len(samples)
        input_ids = torch.full((bsz, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((bsz, width), dtype=torch.long)
        extras = {k: torch.zeros((bsz, width), dtype=torch.long) for k in samples[0].extras}
        for i, s in enumerate(samples):
            n = s.prompt_len
            input_ids[i, width - n :] = torch.tensor(s.input_ids[:n])
            attention[i, width - n :] = 1
            for k, v in s.extras.items():
                extras[k][i, width - n :] = torch.tensor(v[:n])
        return {"input_ids": input_ids, "attention_mask": attention, **extras, **image_tensors}
