"""Every supported family, on its offline tiny replica: reload, family lookup, LoRA placement,
training signal, batched left-padded generation and image-token knobs."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlm_lightning.models.families import FAMILIES, UnknownFamilyError, family_for_model_type

FAMILY_NAMES = sorted(FAMILIES)  # a family added to FAMILIES is covered by every test here
SCOPES = ("attention", "attention_mlp", "all_linear")
#: budgets a family's knob accepts, when not any number: (small, large)
IMAGE_TOKEN_BUDGETS = {"lfm2_vl": (4, 16), "gemma4": (140, 560)}  # Gemma 4: 70 / 140 / 280 / 560 / 1120 only


@functools.cache
def _load(path: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    model.eval()
    return processor, model


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the OpenMP
    workers spin against other processes (a 0.4 s test took 30 s with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=FAMILY_NAMES)
def family(request) -> str:
    return request.param


@pytest.fixture
def loaded(family, tiny_replica):
    return _load(tiny_replica(family))


def _image(width: int, height: int, color: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (width, height), color)
    for x in range(0, width, 7):  # some texture so pixel values are not constant
        img.putpixel((x, (x * 3) % height), (255 - color[0], color[1], 255 - color[2]))
    return img


def _encode(processor, facts, questions, answers=None, images=None):
    """Processor inputs for one image + question (+ answer) per sample, the family's way."""
    images = images or [_image(160, 120, (200, 40, 90)) for _ in questions]
    if facts.prompt_style == "prefix_suffix":
        kwargs = {"suffix": list(answers)} if answers is not None else {}
        return processor(
            text=[f"<image>{q}" for q in questions],
            images=[[im] for im in images],
            padding=True,
            return_tensors="pt",
            **kwargs,
        )
    texts = []
    for i, question in enumerate(questions):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if answers is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answers[i]}]})
        texts.append(
            processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=answers is None)
        )
    batch = processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[batch["input_ids"] == processor.image_token_id] = -100
    batch["labels"] = labels
    return batch


def _expected_lora_count(model, facts, scope: str) -> int:
    """Linear layers under the LM's decoder layers whose names end in the family's listed module names
    (counted from the module tree, not from PEFT: hybrid LMs hold different modules per layer kind)."""
    names = list(facts.attention_modules)
    if scope in ("attention_mlp", "all_linear"):
        names += list(facts.mlp_modules)
    if scope == "all_linear":
        names += list(facts.extra_layer_modules)
    layers = facts.language_model + ".layers."
    return sum(
        1
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith(layers)
        and any(name.endswith("." + n) for n in names)
    )


def _with_lora(model, facts, scope: str = "attention_mlp"):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=facts.lora_target_regex(scope))
    return get_peft_model(copy.deepcopy(model), config)


def test_replica_reloads_offline_and_maps_to_its_family(family, loaded):
    processor, model = loaded
    facts = family_for_model_type(model.config.model_type)
    assert facts.name == family
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 400_000
    tokenizer = processor.tokenizer
    eot_id = tokenizer.convert_tokens_to_ids(facts.end_of_turn)
    assert eot_id != tokenizer.unk_token_id and eot_id is not None
    assert model.generation_config.eos_token_id == eot_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert len(tokenizer) <= model.config.get_text_config().vocab_size
    if facts.prompt_style == "chat":
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A."}]},
        ]
        rendered = processor.apply_chat_template(messages, tokenize=False)
        assert "A." + facts.end_of_turn in rendered
    else:
        assert processor.chat_template is None


def test_unknown_model_type_lists_supported_families():
    with pytest.raises(UnknownFamilyError) as excinfo:
        family_for_model_type("llava_next")
    message = str(excinfo.value)
    assert "llava_next" in message
    for name in FAMILY_NAMES:
        assert name in message
    assert "trust_remote_code" not in message  # it does not make an unknown family supported


def test_every_family_has_a_replica_and_every_replica_a_family():
    from vlm_lightning.replicas.registry import BUILDERS

    assert set(BUILDERS) == set(FAMILIES)


def test_lora_targets_only_the_language_model(family, loaded):
    _, model = loaded
    facts = FAMILIES[family]
    prefix = facts.language_model + "."
    lm_linears = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(prefix)
    }
    for scope in SCOPES:
        peft_model = _with_lora(model, facts, scope)
        targeted = [
            name.removeprefix("base_model.model.")
            for name, module in peft_model.named_modules()
            if hasattr(module, "lora_A") and isinstance(module.base_layer, torch.nn.Linear)
        ]
        assert targeted, scope
        assert all(name.startswith(prefix) for name in targeted), (scope, targeted)
        assert len(targeted) == _expected_lora_count(model, facts, scope), (scope, targeted)
        if scope == "all_linear":
            assert set(targeted) == lm_linears


def test_lora_training_signal_and_loss_falls(family, loaded):
    processor, model = loaded
    facts = FAMILIES[family]
    batch = _encode(
        processor, facts, ["What colour is it?", "Name the shape."], answers=["Red.", "A square."]
    )
    peft_model = _with_lora(model, facts)
    peft_model.train()

    out = peft_model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    lora_b = {n: p for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert lora_b
    for name, param in lora_b.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for name, param in peft_model.named_parameters():
        if "lora_A" in name:  # B starts at zero, so A gets no signal at the first step
            assert param.grad is None or param.grad.abs().sum() == 0, name
        elif "lora_" not in name:
            assert not param.requires_grad, name

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    optimizer.zero_grad()
    first = None
    for _ in range(6):
        loss = peft_model(**batch).loss
        first = loss.item() if first is None else first
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        last = peft_model(**batch).loss.item()
    assert last < first - 0.1, (first, last)


def _generate(model, batch) -> list[tuple[list[int], torch.Tensor]]:
    """Greedy new tokens (cut after the first end-of-turn) and their step scores, per row."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    new = out.sequences[:, batch["input_ids"].shape[1] :].tolist()
    scores = torch.stack(out.scores, dim=1)  # (batch, steps, vocab)
    eos = model.generation_config.eos_token_id
    rows = []
    for i, tokens in enumerate(new):
        if eos in tokens:
            tokens = tokens[: tokens.index(eos) + 1]
        rows.append((tokens, scores[i, : len(tokens)]))
    return rows


def test_batched_left_padded_greedy_generation_matches_single(family, loaded):
    processor, model = loaded
    facts = FAMILIES[family]
    questions = ["Hi?", "Describe every object in this picture in one long sentence, please."]
    images = [_image(160, 120, (200, 40, 90)), _image(112, 144, (20, 160, 60))]
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batched = _encode(processor, facts, questions, images=images)
        singles = [
            _encode(processor, facts, [q], images=[im]) for q, im in zip(questions, images, strict=True)
        ]
    finally:
        tokenizer.padding_side = side
    assert batched["attention_mask"][0, 0] == 0 and batched["attention_mask"][1, 0] == 1  # left padded
    together = _generate(model, batched)
    apart = [_generate(model, single)[0] for single in singles]
    for (tokens_b, scores_b), (tokens_s, scores_s) in zip(together, apart, strict=True):
        assert tokens_b == tokens_s
        # the scores too: some replicas (tied embeddings) repeat one token whatever the input
        torch.testing.assert_close(scores_b, scores_s, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(together[0][1][0], together[1][1][0], atol=1e-3)  # inputs do matter


def test_set_image_tokens_bounds_the_image_tokens(family, tiny_replica):
    from transformers import AutoProcessor

    facts = FAMILIES[family]
    processor = AutoProcessor.from_pretrained(tiny_replica(family))
    if facts.set_image_tokens is None:
        assert facts.prompt_style == "prefix_suffix"
        return

    try:  # a knob without a minimum refuses one (it used to ignore it silently)
        facts.set_image_tokens(processor, 1, 64)
        minimum: int | None = 1
    except ValueError as exc:
        assert "remove data.image_min_tokens" in str(exc)
        assert facts.name in ("idefics3", "smolvlm", "gemma3", "gemma4"), facts.name
        minimum = None

    def image_tokens(budget: int) -> int:
        facts.set_image_tokens(processor, minimum, budget)
        batch = _encode(processor, facts, ["Q?"], answers=["A."], images=[_image(400, 300, (9, 99, 199))])
        return int((batch["input_ids"] == processor.image_token_id).sum())

    budgets = IMAGE_TOKEN_BUDGETS.get(family, (8, 64))
    if family == "lfm2_vl":
        ip = processor.image_processor
        tile_tokens = (ip.tile_size // ip.encoder_patch_size // ip.downsample_factor) ** 2
        split = image_tokens(16)  # a large image: tiles plus a thumbnail within the budget
        assert ip.min_image_tokens == 1 and ip.max_image_tokens == 16
        assert tile_tokens < split <= ip.max_tiles * tile_tokens + 16
        ip.do_image_splitting = False  # one resized image: the budget bounds it
        small, large = image_tokens(budgets[0]), image_tokens(budgets[1])
    else:
        small, large = image_tokens(budgets[0]), image_tokens(budgets[1])
    assert 0 < small <= large // 2
    assert small <= budgets[0]
    assert large <= budgets[1]


@pytest.mark.parametrize("family", ["idefics3", "smolvlm", "gemma3", "gemma4"])
def test_a_minimum_the_knob_cannot_give_is_a_setting_error(family, tiny_replica):
    from vlm_lightning.errors import SettingError
    from vlm_lightning.models.loading import load_processor

    with pytest.raises(SettingError, match=rf"{family}.*image_min_tokens=100 cannot be honoured.*remove"):
        load_processor(str(tiny_replica(family)), image_max_tokens=280, image_min_tokens=100)


def test_a_budget_the_knob_cannot_give_is_a_setting_error(tiny_replica):
    from vlm_lightning.errors import SettingError
    from vlm_lightning.models.loading import load_processor

    with pytest.raises(SettingError, match=r"gemma4.*70 or more"):
        load_processor(str(tiny_replica("gemma4")), image_max_tokens=8)
