"""Greedy generation with a static cache gives the dynamic cache's tokens in fp32, for every family.

The static cache (``generate_batch(static_cache=True)``: transformers' ``cache_implementation="static"`` with
the cache length rounded up to a step of 256) is the evaluation default on CUDA (measured 3.99x / 4.71x
plain HF ``generate`` in docs/benchmarks.md, where transformers compiles the decoding step); this pins that it
changes no greedy token on the replicas, through the same ``generate_batch`` that ``test`` / ``infer`` call.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlm_lightning.data.records import Record
from vlm_lightning.generation import (
    decoding_compile_config,
    end_of_turn_ids,
    generate_batch,
    static_cache_length,
    uses_static_cache,
)
from vlm_lightning.models.acceleration import compile_decoder_layers
from vlm_lightning.models.build import build_model
from vlm_lightning.models.families import FAMILIES
from vlm_lightning.models.loading import family_of, load_processor, make_collator
from vlm_lightning.models.peft_setup import LoraSettings

#: the smallest image budget each family accepts (Gemma 4: 70 soft tokens; PaliGemma: a fixed size)
IMAGE_TOKENS = {"gemma4": 70, "paligemma": None}


#: prompts of different lengths: the batch is left-padded
QUESTIONS = [
    "Total?",
    "What is the store name on this receipt?",
    "Read the date, then the total amount paid.",
]


def _items() -> list:
    records = [
        Record(
            f"s{i}",
            ["x"],
            [{"role": "user", "content": question}, {"role": "assistant", "content": "a"}],
            ["a"],
        )
        for i, question in enumerate(QUESTIONS)
    ]
    return [(r, [Image.new("RGB", (64 + 16 * i, 80), (40 * i, 200, 100))]) for i, r in enumerate(records)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_static_cache_greedy_tokens_equal_the_dynamic_cache(family: str, tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica(family))
    torch.manual_seed(0)
    built = build_model(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0), dtype="float32")
    model = built.model.eval()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=2.0)  # an adapter that spreads the random logits
    processor = load_processor(path, image_max_tokens=IMAGE_TOKENS.get(family, 16))
    facts = family_of(path)
    inputs = make_collator(processor, facts, max_length=800)(_items())["generation_inputs"]
    tokenizer = getattr(processor, "tokenizer", processor)
    stops = end_of_turn_ids(tokenizer, facts.end_of_turn)
    assert inputs["input_ids"].shape[0] == 3 and (inputs["attention_mask"] == 0).any()  # left padding in play
    _, dynamic = generate_batch(model, inputs, tokenizer, stops, max_new_tokens=12, min_new_tokens=12)
    _, static = generate_batch(
        model, inputs, tokenizer, stops, max_new_tokens=12, min_new_tokens=12, static_cache=True
    )
    assert dynamic.shape == (3, 12) and len(set(dynamic.flatten().tolist())) > 1  # real, varied tokens
    assert torch.equal(static, dynamic)


def test_static_cache_lengths_come_in_steps_so_that_few_shapes_compile() -> None:
    assert static_cache_length(1, 255) == 256
    assert static_cache_length(100, 156) == 256
    assert static_cache_length(101, 156) == 512
    assert static_cache_length(700, 64, step=128) == 768


def test_the_cache_setting_resolves_by_device_and_base() -> None:
    model = torch.nn.Linear(2, 2)  # on the CPU: transformers compiles no decoding step there
    assert uses_static_cache(model, "auto") is False
    assert uses_static_cache(model, "static") is True and uses_static_cache(model, "dynamic") is False
    assert uses_static_cache(torch.nn.Module(), "auto") is False  # no parameters
    if torch.cuda.is_available():
        cuda = torch.nn.Linear(2, 2).cuda()
        assert uses_static_cache(cuda, "auto") is True
        assert uses_static_cache(cuda, "auto", collective=True) is False  # FSDP: eager dynamic cache
        cuda.hf_quantizer = type("Bnb4Bit", (), {"is_compileable": False})()
        assert uses_static_cache(cuda, "auto") is False


def test_generation_runs_compiled_layers_uncompiled_and_gives_the_same_tokens(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("qwen2_vl"))
    torch.manual_seed(0)
    model = build_model(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0), dtype="float32").model.eval()
    processor = load_processor(path, image_max_tokens=16)
    facts = family_of(path)
    inputs = make_collator(processor, facts, max_length=800)(_items())["generation_inputs"]
    stops = end_of_turn_ids(processor.tokenizer, facts.end_of_turn)
    _, eager = generate_batch(model, inputs, processor.tokenizer, stops, max_new_tokens=8, static_cache=True)

    def refusing_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        raise AssertionError("a training-compiled layer was compiled while generating")

    assert compile_decoder_layers(model, facts, backend=refusing_backend) > 0
    _, tokens = generate_batch(model, inputs, processor.tokenizer, stops, max_new_tokens=8, static_cache=True)
    assert torch.equal(tokens, eager)
    with pytest.raises(Exception, match="compiled while generating"):  # outside generation: compiled again
        model(**inputs)


def test_generation_keeps_a_cache_when_the_checkpoint_config_turns_it_off(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("qwen2_vl"))
    model = build_model(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0), dtype="float32").model.eval()
    model.config.use_cache = False  # as saved by a run with activation checkpointing
    model.generation_config.use_cache = False
    processor = load_processor(path, image_max_tokens=16)
    facts = family_of(path)
    inputs = make_collator(processor, facts, max_length=800)(_items())["generation_inputs"]
    stops = end_of_turn_ids(processor.tokenizer, facts.end_of_turn)
    caches = []
    model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: caches.append(kwargs.get("past_key_values")), with_kwargs=True
    )
    for static in (False, True):
        caches.clear()
        generate_batch(
            model, inputs, processor.tokenizer, stops, max_new_tokens=4, min_new_tokens=4, static_cache=static
        )
        assert len(caches) == 4 and all(cache is not None for cache in caches)
        assert type(caches[0]).__name__ == ("StaticCache" if static else "DynamicCache")


def test_the_decoding_compiler_reaches_generate_with_a_static_cache_only(tiny_replica, monkeypatch) -> None:  # noqa: ANN001
    path = str(tiny_replica("qwen2_vl"))
    model = build_model(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0), dtype="float32").model.eval()
    processor = load_processor(path, image_max_tokens=16)
    facts = family_of(path)
    inputs = make_collator(processor, facts, max_length=800)(_items())["generation_inputs"]
    stops = end_of_turn_ids(processor.tokenizer, facts.end_of_turn)
    seen: list = []
    real_generate = model.generate
    monkeypatch.setattr(
        model, "generate", lambda **kw: seen.append(kw.get("compile_config")) or real_generate(**kw)
    )
    for static, compiler in ((True, "cudagraphs"), (True, "inductor"), (False, "cudagraphs")):
        generate_batch(
            model, inputs, processor.tokenizer, stops, max_new_tokens=2, static_cache=static,
            decoding_compiler=compiler,
        )  # fmt: skip
    assert [c.backend if c else None for c in seen] == ["cudagraphs", "inductor", None]
    assert seen[0].mode is None and seen[1].mode == "reduce-overhead"  # a mode is inductor's alone
    assert decoding_compile_config("inductor") == type(seen[1])()  # transformers' own default
