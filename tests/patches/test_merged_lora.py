"""Generation with merged LoRA projections: same outputs as the adapter path, stored weights untouched."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from vlm_lightning.patches.merged_lora import merged_lora


def toy_lora(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["0", "2"])
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:  # lora_B starts at zero: make the adapters matter
            torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def test_merged_output_equals_adapter_output_and_weights_restored() -> None:
    model = toy_lora()
    x = torch.randn(5, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(x)
    with merged_lora(model) as swapped:
        assert swapped == 2
        assert not any("lora" in type(m).__module__ for m in model.base_model.model)  # plain layers now
        merged = model(x)
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # bit-identical: the base weight was never written
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_adapters_that_change_the_output_are_really_folded_in() -> None:
    model = toy_lora()
    x = torch.randn(3, 8)
    with model.disable_adapter():
        base_only = model(x)
    with merged_lora(model):
        merged = model(x)
    assert (merged - base_only).abs().max() > 1e-2


def test_weights_restored_after_an_exception_and_disabled_is_a_no_op() -> None:
    model = toy_lora()
    originals = [m for m in model.modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A")]
    with pytest.raises(RuntimeError, match="boom"), merged_lora(model):
        raise RuntimeError("boom")
    assert [m for m in model.modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A")] == originals
    with merged_lora(model, enabled=False) as swapped:
        assert swapped == 0


def test_quantized_or_disabled_adapters_keep_the_adapter_path() -> None:
    model = toy_lora()
    with model.disable_adapter(), merged_lora(model) as swapped:
        assert swapped == 0  # disabled adapters: merging would add them back
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with merged_lora(plain) as swapped:
        assert swapped == 0


def test_generation_tokens_equal_with_and_without_merge(tiny_replica) -> None:  # noqa: ANN001
    from PIL import Image

    from vlm_lightning.data.records import Record
    from vlm_lightning.generation import end_of_turn_ids, generate_batch
    from vlm_lightning.models.loading import family_of, load_model, load_processor, make_collator
    from vlm_lightning.models.peft_setup import LoraSettings, apply_training_mode

    path = str(tiny_replica("lfm2_vl"))
    facts = family_of(path)
    processor = load_processor(path)
    collator = make_collator(processor, facts, max_length=1024)
    torch.manual_seed(0)
    model = apply_training_mode(load_model(path, dtype="float32"), facts, "lora", LoraSettings(dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    model.eval()
    recs = [
        Record(str(i), ["x"], [{"role": "user", "content": q}, {"role": "assistant", "content": "a"}], ["a"])
        for i, q in enumerate(["Read the total.", "Which store is it?"])
    ]
    batch = collator(
        [(r, [Image.new("RGB", (96 + 32 * i, 128), (200, 40 * i, 90))]) for i, r in enumerate(recs)]
    )
    stop = end_of_turn_ids(processor.tokenizer, facts.end_of_turn)
    kwargs = {"max_new_tokens": 10, "min_new_tokens": 10}
    _, adapter_tokens = generate_batch(
        model, batch["generation_inputs"], processor.tokenizer, stop, merge_lora=False, **kwargs
    )
    _, merged_tokens = generate_batch(model, batch["generation_inputs"], processor.tokenizer, stop, **kwargs)
    with model.disable_adapter():
        _, base_tokens = generate_batch(
            model, batch["generation_inputs"], processor.tokenizer, stop, **kwargs
        )
    assert torch.equal(merged_tokens, adapter_tokens)
    assert not torch.equal(base_tokens, adapter_tokens)  # the adapters change the greedy output


def test_sharded_or_flattened_base_weights_are_not_merged() -> None:
    model = toy_lora()
    first = model.base_model.model[0]
    full = first.base_layer.weight
    first.base_layer.weight = torch.nn.Parameter(full.detach().reshape(-1)[:8].clone())  # an FSDP-like shard
    try:
        with merged_lora(model) as swapped:
            assert swapped == 1  # only the second projection
    finally:
        first.base_layer.weight = full


def test_no_merge_when_the_merged_copies_would_not_fit(monkeypatch, caplog) -> None:  # noqa: ANN001
    import vlm_lightning.patches.merged_lora as merged_module

    model = toy_lora()
    monkeypatch.setattr(merged_module, "_device_room", lambda device: 1024)  # a full GPU
    with caplog.at_level("WARNING"), merged_lora(model) as swapped:
        assert swapped == 0
    assert "keeps the LoRA adapter path" in caplog.text
    monkeypatch.setattr(merged_module, "_device_room", lambda device: 8 << 30)
    with merged_lora(model) as swapped:
        assert swapped == 2
