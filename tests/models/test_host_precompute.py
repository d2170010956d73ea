"""Qwen-VL inputs built on the CPU batch (``models/host_precompute.py``) give transformers' own results."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fit_helpers import lora_module, loss_and_grads
from fixtures_data import chat_batch

from vlm_lightning.models.families import FAMILIES
from vlm_lightning.models.host_inputs import split_host_inputs
from vlm_lightning.models.host_precompute import host_rope_inputs

ROPE_FAMILIES = [name for name, facts in FAMILIES.items() if facts.host_rope_inputs]
SIZES = ((64, 80), (96, 48), (40, 40))  # images of different sizes: per-image positions and boundaries differ


def _owner(module):  # noqa: ANN001, ANN202
    return next(m for m in module.model.modules() if hasattr(m, "get_rope_index") and hasattr(m, "visual"))


def test_the_qwen_vl_families_opt_in() -> None:
    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"} <= set(ROPE_FAMILIES)


@pytest.mark.parametrize("family", ROPE_FAMILIES)
def test_host_built_inputs_give_the_library_loss_and_gradients(tiny_replica, family: str) -> None:  # noqa: ANN001
    """The trainer's CPU hook adds the index and vision inputs; the forward then matches the library's own
    path exactly, and does not build the M-RoPE index itself."""
    module = lora_module(str(tiny_replica(family)), dtype="float32")
    raw = chat_batch(str(tiny_replica(family)), sizes=SIZES)
    assert raw["inputs"]["attention_mask"].min() == 0  # padded rows: the index skips the padding
    collated = set(raw["inputs"])
    hooked = module.on_before_batch_transfer(raw, 0)
    added = set(hooked["inputs"]) - collated
    assert added == {"position_ids", "image_position_ids", "image_cu_seqlens"}
    plain = {**hooked, "inputs": {k: v for k, v in hooked["inputs"].items() if k in collated}}
    owner = _owner(module)
    expected, _ = owner.get_rope_index(
        plain["inputs"]["input_ids"],
        mm_token_type_ids=plain["inputs"]["mm_token_type_ids"],
        image_grid_thw=plain["inputs"]["image_grid_thw"],
        attention_mask=plain["inputs"]["attention_mask"],
    )
    assert torch.equal(hooked["inputs"]["position_ids"], expected)
    moved, host = split_host_inputs(hooked["inputs"], module.facts)
    assert added <= set(moved) and not host  # they move with the batch
    loss_plain, grads_plain = loss_and_grads(module, plain, autocast=False)
    library_index = type(owner).get_rope_index
    calls = []
    owner.get_rope_index = lambda *a, **k: calls.append(1) or library_index(owner, *a, **k)
    loss_hooked, grads_hooked = loss_and_grads(module, hooked, autocast=False)
    del owner.get_rope_index
    assert calls == []  # the forward used the given index
    assert loss_hooked == loss_plain
    assert grads_hooked.keys() == grads_plain.keys() and grads_plain
    for name, grad in grads_plain.items():
        assert torch.equal(grads_hooked[name], grad), name


def test_the_vision_tower_reads_the_given_positions_and_boundaries(tiny_replica) -> None:  # noqa: ANN001
    """Wrong precomputed vision inputs change the result: the tower uses them instead of its own."""
    path = str(tiny_replica("qwen2_vl"))
    module = lora_module(path, dtype="float32")
    batch = module.on_before_batch_transfer(chat_batch(path, sizes=SIZES), 0)
    loss, _ = loss_and_grads(module, batch, autocast=False)
    bounds = batch["inputs"]["image_cu_seqlens"]
    for key, wrong in (
        ("image_position_ids", torch.zeros_like(batch["inputs"]["image_position_ids"])),
        ("image_cu_seqlens", bounds[[0, -1]]),  # one attention span over all images
    ):
        altered = {**batch, "inputs": {**batch["inputs"], key: wrong}}
        assert loss_and_grads(module, altered, autocast=False)[0] != loss, key


def test_nothing_is_added_where_it_does_not_apply(tiny_replica) -> None:  # noqa: ANN001
    """Other families, text-only batches, packed rows' own index."""
    qwen = str(tiny_replica("qwen2_vl"))
    module = lora_module(qwen, dtype="float32")
    batch = chat_batch(qwen, sizes=SIZES)["inputs"]
    text_only = {k: v for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
    assert host_rope_inputs(module.model, module.facts, text_only) == {}
    assert host_rope_inputs(module.model, FAMILIES["lfm2_vl"], batch) == {}
    assert (
        host_rope_inputs(module.model, dataclasses.replace(module.facts, host_rope_inputs=False), batch) == {}
    )
    packed = {**batch, "position_ids": torch.zeros(1)}
    assert "position_ids" not in host_rope_inputs(module.model, module.facts, packed)


def test_compiled_layers_take_the_host_built_inputs_without_new_graphs(tiny_replica) -> None:  # noqa: ANN001
    """The ``image_*`` inputs also reach the decoder layers' kwargs (transformers forwards them): compiled
    layers give the same losses over batches of other image sizes, with no extra graph or recompilation."""
    from torch._dynamo.utils import counters

    from vlm_lightning.models.acceleration import compile_layers, compile_vision_layers, decoder_layers

    path = str(tiny_replica("qwen2_vl"))
    runs = []
    for host_built in (False, True):
        torch._dynamo.reset()
        counters.clear()
        module = lora_module(path, dtype="float32")
        compile_layers(decoder_layers(module.model, module.facts), backend="aot_eager")
        compile_vision_layers(module.model, module.facts, backend="aot_eager")
        losses = []
        for sizes in (SIZES, ((80, 80), (48, 96), (64, 40)), ((40, 40), (96, 96), (64, 64))):
            batch = module.on_before_batch_transfer(chat_batch(path, sizes=sizes), 0)
            if not host_built:
                for key in ("position_ids", "image_position_ids", "image_cu_seqlens"):
                    batch["inputs"].pop(key)
            losses.append(loss_and_grads(module, batch, autocast=False)[0])
        runs.append((losses, counters["stats"]["unique_graphs"]))
    (losses_plain, graphs_plain), (losses_host, graphs_host) = runs
    assert losses_host == losses_plain
    assert graphs_host == graphs_plain > 0


def test_test_and_predict_batches_get_nothing(tiny_replica) -> None:  # noqa: ANN001
    """test / predict generate from ``generation_inputs``: their model inputs are left as collated."""
    from types import SimpleNamespace

    path = str(tiny_replica("qwen2_vl"))
    module = lora_module(path, dtype="float32")
    for stage in ("testing", "predicting"):
        module._trainer = SimpleNamespace(testing=stage == "testing", predicting=stage == "predicting")
        batch = chat_batch(path, sizes=SIZES)
        collated = set(batch["inputs"])
        assert set(module.on_before_batch_transfer(batch, 0)["inputs"]) == collated, stage
    module._trainer = None
