"""Masking is token-exact: labelled tokens decode to the answer plus end-of-turn, nothing else."""

from __future__ import annotations

import pytest
from PIL import Image

from vlm_lightning.data.collator import IGNORE_INDEX, ChatCollator, SampleTooLongError
from vlm_lightning.data.masking import (
    Segment,
    TemplateMismatchError,
    labels_from_segments,
    segment_conversation,
)
from vlm_lightning.data.records import Record


def chatml(messages: list[dict], add_generation_prompt: bool) -> str:
    text = "".join(f"<s>{m['role']}\n{m['content']}</s>\n" for m in messages)
    return text + ("<s>assistant\n" if add_generation_prompt else "")


def test_single_turn_segments() -> None:
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A b"}]
    conv = segment_conversation(msgs, chatml, "</s>")
    assert conv.segments == [
        Segment("<s>user\nQ</s>\n<s>assistant\n", False),
        Segment("A b</s>", True),
        Segment("\n", False),
    ]
    assert conv.generation_cut == 1


def test_multi_turn_learns_every_assistant_turn_or_last() -> None:
    msgs = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    learned = [s.text for s in segment_conversation(msgs, chatml, "</s>").segments if s.learn]
    assert learned == ["A1</s>", "A2</s>"]
    last = segment_conversation(msgs, chatml, "</s>", strategy="last")
    assert [s.text for s in last.segments if s.learn] == ["A2</s>"]
    assert "".join(s.text for s in last.segments) == chatml(msgs, False)
    # generation starts right before the last answer
    assert "".join(s.text for s in last.segments[: last.generation_cut]) == chatml(msgs[:3], True)


def test_prompt_only_conversation_is_generation_prompt() -> None:
    conv = segment_conversation([{"role": "user", "content": "Q"}], chatml, "</s>")
    assert conv.segments == [Segment(chatml([{"role": "user", "content": "Q"}], True), False)]


def test_template_that_is_not_prefix_stable_is_refused() -> None:
    def odd(messages: list[dict], add_generation_prompt: bool) -> str:
        return chatml(messages, add_generation_prompt) + ("<gen>" if add_generation_prompt else "")

    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    with pytest.raises(TemplateMismatchError):
        segment_conversation(msgs, odd, "</s>")


def test_missing_end_of_turn_is_refused() -> None:
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    with pytest.raises(TemplateMismatchError, match="end-of-turn"):
        segment_conversation(msgs, chatml, "<|eot|>")


def test_labels_from_segments() -> None:
    assert labels_from_segments([[1, 2], [3], [4]], [False, True, False]) == [-100, -100, 3, -100]


@pytest.fixture(scope="module")
def qwen_collator(tiny_replica):  # noqa: ANN001
    from vlm_lightning.models.loading import family_of, load_processor

    path = str(tiny_replica("qwen2_vl"))
    return ChatCollator(load_processor(path), family_of(path), max_length=400)


def _image(w: int = 120, h: int = 160) -> Image.Image:
    return Image.new("RGB", (w, h), "white")


def test_collated_labels_decode_to_answer_and_end_of_turn(qwen_collator: ChatCollator) -> None:
    single = Record(
        "s",
        ["unused"],
        [{"role": "user", "content": "Read it."}, {"role": "assistant", "content": ' {"total": 12.5}'}],
        [' {"total": 12.5}'],
    )
    multi = Record(
        "m",
        ["unused"],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "second"},
        ],
        ["second"],
    )
    batch = qwen_collator([(single, [_image()]), (multi, [_image(200, 100)])])
    tok = qwen_collator.tokenizer
    labels = batch["labels"]
    assert tok.decode(labels[0][labels[0] != IGNORE_INDEX]) == ' {"total": 12.5}<|im_end|>'
    assert tok.decode(labels[1][labels[1] != IGNORE_INDEX]) == "first answer<|im_end|>second<|im_end|>"
    ids = batch["inputs"]["input_ids"]
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert (ids == image_id).sum() > 0
    assert (labels[ids == image_id] == IGNORE_INDEX).all()
    pad = batch["inputs"]["attention_mask"] == 0
    assert pad.any() and (labels[pad] == IGNORE_INDEX).all()
    # the left-padded generation prompt ends with the assistant header and holds no answer tokens
    gen = batch["generation_inputs"]
    assert (gen["attention_mask"][:, -1] == 1).all()
    prompt0 = tok.decode(gen["input_ids"][0][gen["attention_mask"][0].bool()])
    assert prompt0.endswith("Read it.<|im_end|>\n<|im_start|>assistant\n")
    prompt1 = tok.decode(gen["input_ids"][1][gen["attention_mask"][1].bool()])
    assert prompt1.endswith("first answer<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n")


def test_sample_that_would_cut_image_tokens_is_refused(qwen_collator: ChatCollator) -> None:
    rec = Record(
        "big-1",
        ["x"],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        ["A"],
        meta={"source": "data.jsonl", "line": 7},
    )
    qwen_collator.max_length = 30
    try:
        with pytest.raises(SampleTooLongError, match=r"big-1.*data.jsonl:7.*needs \d+ tokens"):
            qwen_collator([(rec, [_image(224, 224)])])
    finally:
        qwen_collator.max_length = 400


def test_long_answer_is_cut_but_prompt_kept(qwen_collator: ChatCollator) -> None:
    answer = "x" * 500
    rec = Record(
        "long", ["x"], [{"role": "user", "content": "Q"}, {"role": "assistant", "content": answer}], [answer]
    )
    batch = qwen_collator([(rec, [_image()])])
    assert batch["inputs"]["input_ids"].shape[1] == 400
    assert (batch["labels"][0] != IGNORE_INDEX).sum() > 0


def test_measuring_lengths_records_each_cut_answer_but_collating_does_not(
    qwen_collator: ChatCollator,
) -> None:
    answer = "x" * 500
    long = Record(
        "long", ["x"], [{"role": "user", "content": "Q"}, {"role": "assistant", "content": answer}], [answer]
    )
    short = Record(
        "short", ["x"], [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], ["A"]
    )
    report = qwen_collator.lengths([(long, [_image()]), (short, [_image()])])
    assert not report.problems and report.tokens[0] == 400 and report.tokens[1] < 400
    assert [(rid, kept) for rid, _, kept in report.cut] == [("long", 400)]
    assert report.cut[0][1] > 400  # the uncut length, for the warning
    assert not hasattr(qwen_collator, "cut_samples")  # no side channel: the report is the answer
