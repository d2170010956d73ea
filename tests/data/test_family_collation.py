"""Per family, through our own collators: labels are exactly answer + end-of-turn; generation prompts hold
no answer; batched generation from collated prompts equals one-at-a-time; save -> load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vlm_lightning.data.collator import IGNORE_INDEX
from vlm_lightning.data.records import Record
from vlm_lightning.generation import end_of_turn_ids, generate_batch
from vlm_lightning.models.families import FAMILIES
from vlm_lightning.models.loading import family_of, load_model, load_processor, make_collator

FAMILY_NAMES = sorted(FAMILIES)


def records() -> list[Record]:
    return [
        Record(
            "a",
            ["x"],
            [
                {"role": "user", "content": "Read the total."},
                {"role": "assistant", "content": '{"total": 12.5}'},
            ],
            ['{"total": 12.5}'],
        ),
        Record(
            "b",
            ["x"],
            [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Which store is it?"},
                {"role": "assistant", "content": "Corner Cafe"},
            ],
            ["Corner Cafe"],
        ),
    ]


def lora_model(path: str, facts, lora_b_std: float):  # noqa: ANN001, ANN201
    """The replica with LoRA r4 on attention + MLP and non-zero ``lora_B`` (so the adapters change outputs)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        load_model(path, dtype="float32"),
        LoraConfig(r=4, lora_alpha=8, target_modules=facts.lora_target_regex("attention_mlp")),
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=lora_b_std)
    return model


def items(recs: list[Record]) -> list:
    return [(r, [Image.new("RGB", (96 + 32 * i, 128), (255, 255 - 60 * i, 255))]) for i, r in enumerate(recs)]


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request, tiny_replica):  # noqa: ANN001, ANN201
    path = str(tiny_replica(request.param))
    facts = family_of(path)
    processor = load_processor(path)
    return request.param, path, facts, processor, make_collator(processor, facts, max_length=1024)


def test_labels_are_answer_plus_end_of_turn(family) -> None:  # noqa: ANN001
    name, _, facts, processor, collator = family
    batch = collator(items(records()))
    tok = processor.tokenizer
    for i, rec in enumerate(records()):
        labels = batch["labels"][i]
        learned = tok.decode(labels[labels != IGNORE_INDEX])
        # SmolVLM / Idefics3 templates end the prompt with "Assistant:" so the answer starts with a space
        assert learned.lstrip(" ") == rec.answers[0] + facts.end_of_turn, (name, learned)
        pad = batch["inputs"]["attention_mask"][i] == 0
        assert (labels[pad] == IGNORE_INDEX).all()
        prompt_ids = batch["generation_inputs"]["input_ids"][i][
            batch["generation_inputs"]["attention_mask"][i].bool()
        ]
        assert rec.answers[0] not in tok.decode(prompt_ids)


def test_batched_generation_equals_single(family) -> None:  # noqa: ANN001
    name, path, facts, processor, collator = family
    torch.manual_seed(0)
    model = load_model(path, dtype="float32").eval()
    stop = end_of_turn_ids(processor.tokenizer, facts.end_of_turn)
    recs = records()
    batched, _ = generate_batch(
        model, collator(items(recs))["generation_inputs"], processor.tokenizer, stop, max_new_tokens=6
    )
    single = [
        generate_batch(
            model,
            collator(items(recs)[i : i + 1])["generation_inputs"],
            processor.tokenizer,
            stop,
            max_new_tokens=6,
        )[0][0]
        for i in range(len(recs))
    ]
    assert batched == single, name


def test_lora_save_load_round_trip_gives_identical_outputs(family, tmp_path: Path) -> None:  # noqa: ANN001
    from peft import PeftModel

    name, path, facts, _, collator = family
    torch.manual_seed(0)
    model = lora_model(path, facts, lora_b_std=0.02)
    model.eval()
    batch = collator(items(records()))
    with torch.no_grad():
        before = model(**batch["inputs"]).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_model(path, dtype="float32"), tmp_path / "adapter").eval()
    with torch.no_grad():
        after = reloaded(**batch["inputs"]).logits
    torch.testing.assert_close(before, after)


def test_merged_lora_and_static_cache_give_the_adapter_path_tokens(family) -> None:  # noqa: ANN001
    """fp32: generation with merged LoRA projections, and with a static cache, equals the unmerged adapters."""
    name, path, facts, processor, collator = family
    torch.manual_seed(0)
    model = lora_model(path, facts, lora_b_std=0.2)
    model.eval()
    stop = end_of_turn_ids(processor.tokenizer, facts.end_of_turn)
    inputs = collator(items(records()))["generation_inputs"]
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8}
    _, adapter = generate_batch(model, inputs, processor.tokenizer, stop, merge_lora=False, **kwargs)
    _, merged = generate_batch(model, inputs, processor.tokenizer, stop, **kwargs)
    _, static = generate_batch(
        model, inputs, processor.tokenizer, stop, cache_implementation="static", **kwargs
    )
    assert torch.equal(merged, adapter), name
    assert torch.equal(static, adapter), name


def test_paligemma_generation_inputs_equal_a_prompt_only_processor_call(tiny_replica) -> None:  # noqa: ANN001
    """The prefix collator processes images once and cuts the prompts out of the prompt + suffix batch."""
    from vlm_lightning.data.prefix_collator import prefix_prompt

    path = str(tiny_replica("paligemma"))
    processor = load_processor(path)
    collator = make_collator(processor, family_of(path), max_length=1024)
    batch_items = items(records())
    gen = collator(batch_items)["generation_inputs"]
    reference = processor(
        text=[prefix_prompt(r, collator.image_token) for r, _ in batch_items],
        images=[imgs for _, imgs in batch_items],
        return_tensors="pt",
        padding="longest",
        padding_side="left",
    )
    assert sorted(gen) == ["attention_mask", "input_ids", "pixel_values", "token_type_ids"]
    for key in gen:
        assert torch.equal(gen[key], reference[key]), key


def test_system_text_reaches_the_prompt_as_text(family) -> None:  # noqa: ANN001
    """The system turn renders as its words in every chat family (Gemma 4's template reads a plain string)."""
    name, _, facts, processor, collator = family
    if facts.prompt_style != "chat":
        return  # PaliGemma has no template: its prefix collator places the system text itself
    batch = collator(items(records()))
    prompt_ids = batch["generation_inputs"]["input_ids"][1][
        batch["generation_inputs"]["attention_mask"][1].bool()
    ]
    prompt = processor.tokenizer.decode(prompt_ids)
    assert "Answer briefly." in prompt, (name, prompt)
    assert "'type'" not in prompt and "'text'" not in prompt, (name, prompt)


def test_template_variables_reach_every_render(tiny_replica) -> None:  # noqa: ANN001
    """Qwen3.5 renders non-thinking turns (``chat_template_kwargs``); flipping the variable changes the prompt."""
    import dataclasses

    from vlm_lightning.data.collator import ChatCollator

    path = str(tiny_replica("qwen3_5"))
    processor, facts = load_processor(path), family_of(path)
    assert dict(facts.chat_template_kwargs) == {"enable_thinking": False}
    user = [{"role": "user", "content": [{"type": "text", "text": "Q?"}]}]
    plain = ChatCollator(processor, facts).render(user, True)
    thinking = ChatCollator(
        processor, dataclasses.replace(facts, chat_template_kwargs=(("enable_thinking", True),))
    ).render(user, True)
    assert plain.endswith("<think>\n\n</think>\n\n") and thinking.endswith("<think>\n"), (plain, thinking)


def test_end_of_turn_comes_from_the_checkpoints_template(tiny_replica, tmp_path: Path) -> None:  # noqa: ANN001
    """ibm-granite/granite-docling-258M is model_type idefics3 with a Granite template: its turns end with
    ``<|end_of_text|>``, which then closes the learned labels and stops generation."""
    from transformers import AutoProcessor

    from vlm_lightning.models.build import build_model
    from vlm_lightning.models.loading import with_template_end_of_turn
    from vlm_lightning.replicas.granite_docling import GRANITE_DOCLING_CHAT_TEMPLATE

    processor = AutoProcessor.from_pretrained(tiny_replica("idefics3"))
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["<|end_of_text|>"]})
    processor.chat_template = processor.tokenizer.chat_template = GRANITE_DOCLING_CHAT_TEMPLATE
    folder = tmp_path / "granite-258m-like"
    import shutil

    shutil.copytree(tiny_replica("idefics3"), folder)
    processor.save_pretrained(folder)
    facts = family_of(str(folder))
    assert facts.name == "idefics3" and facts.end_of_turn == "<end_of_utterance>"
    reloaded = load_processor(str(folder))
    assert with_template_end_of_turn(facts, reloaded).end_of_turn == "<|end_of_text|>"
    batch = make_collator(reloaded, facts, max_length=1024)(items(records()))
    labels = batch["labels"][0]
    learned = reloaded.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert learned.strip() == records()[0].answers[0] + "<|end_of_text|>", learned
    built = build_model(str(folder), mode=None)
    assert built.facts.end_of_turn == "<|end_of_text|>"
    # the template the family expects keeps the family's token
    assert with_template_end_of_turn(facts, load_processor(str(tiny_replica("idefics3")))) is facts


def test_a_limit_inside_the_image_says_it_cuts_image_tokens(family) -> None:  # noqa: ANN001
    """Every chat family's collator knows all the ids its images expand to, so a ``max_length`` that ends
    inside the image block is reported as cutting image tokens (not the prompt)."""
    from vlm_lightning.data.collator import SampleTooLongError

    name, path, facts, processor, collator = family
    if facts.prompt_style != "chat":
        return  # PaliGemma's prefix collator has its own length check (tests/data/test_prefix_collator_mask.py)
    record = records()[0]
    ids = collator([items([record])[0]])["inputs"]["input_ids"][0].tolist()
    expanded = {
        processor.image_token_id,
        *getattr(processor, "image_token_ids", []),
    }  # what the processor lists
    image_positions = [i for i, t in enumerate(ids) if t in expanded]
    assert image_positions, name
    limit = image_positions[-1]  # the last image token falls outside
    tight = make_collator(processor, facts, max_length=limit)
    with pytest.raises(SampleTooLongError, match="would cut image tokens"):
        tight([items([record])[0]])
