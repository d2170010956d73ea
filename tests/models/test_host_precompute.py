"""Qwen-VL inputs built on the CPU batch (``models/host_precompute.py``) give transformers' own results."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fit_helpers import lora_module, loss_and_grads
from fixtures_data import chat_batch

from vlm_lightning.models.families import FAMILIES
from vlm_lightning.models.host_inputs import split_host_inputs
from vlm_lightning.models.host_precompute import HOST_KEPT, host_rope_inputs, kept_on_host

ROPE_FAMILIES = [name for name, facts in FAMILIES.items() if facts.host_rope_inputs]
SIZES = ((64, 80), (96, 48), (40, 40))  # images of different sizes: per-image positions and boundaries differ
VISION_INPUTS = {
    "qwen2_vl": {"image_position_ids", "image_cu_seqlens"},
    "qwen2_5_vl": {"image_position_ids", "image_cu_seqlens", "image_window_index", "image_cu_window_seqlens"},
    "qwen3_vl": {"image_position_ids", "image_cu_seqlens", "image_interp_indices", "image_interp_weights"},
}


def _owner(module):  # noqa: ANN001, ANN202
    return next(m for m in module.model.modules() if hasattr(m, "get_rope_index") and hasattr(m, "visual"))


def _module(tiny_replica, family: str):  # noqa: ANN001, ANN202
    """The LoRA fine-tuner of the family's replica; Qwen2.5-VL's one vision block attends within windows
    (the replica lists it as a full-attention block), so that the window boundaries count."""
    module = lora_module(str(tiny_replica(family)), dtype="float32")
    if family == "qwen2_5_vl":
        _owner(module).visual.fullatt_block_indexes = []
    return module


def test_the_qwen_vl_families_opt_in() -> None:
    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"} <= set(ROPE_FAMILIES)


@pytest.mark.parametrize("family", ROPE_FAMILIES)
def test_host_built_inputs_give_the_library_loss_and_gradients(tiny_replica, family: str) -> None:  # noqa: ANN001
    """The trainer's CPU hook adds the index and vision inputs; the forward then matches the library's own
    path exactly, and does not build the M-RoPE index itself."""
    module = _module(tiny_replica, family)
    raw = chat_batch(str(tiny_replica(family)), sizes=SIZES)
    assert raw["inputs"]["attention_mask"].min() == 0  # padded rows: the index skips the padding
    collated = set(raw["inputs"])
    hooked = module.on_before_batch_transfer(raw, 0)
    added = set(hooked["inputs"]) - collated
    assert added == {"position_ids", *VISION_INPUTS[family]}
    plain = {**hooked, "inputs": {k: v for k, v in hooked["inputs"].items() if k in collated}}
    owner = _owner(module)
    expected, _ = owner.get_rope_index(
        plain["inputs"]["input_ids"],
        mm_token_type_ids=plain["inputs"]["mm_token_type_ids"],
        image_grid_thw=plain["inputs"]["image_grid_thw"],
        attention_mask=plain["inputs"]["attention_mask"],
    )
    assert torch.equal(hooked["inputs"]["position_ids"], expected)
    moved, host = split_host_inputs(hooked["inputs"], module.facts, kept_on_host(module.model, module.facts))
    # the boundaries and grids stay on the CPU (read as Python numbers there); the rest moves with the batch
    assert set(host) == set(HOST_KEPT) & set(hooked["inputs"]) >= {"image_grid_thw", "image_cu_seqlens"}
    assert added - set(HOST_KEPT) <= set(moved)
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


@pytest.mark.parametrize("family", ROPE_FAMILIES)
def test_the_vision_tower_reads_each_given_input(tiny_replica, family: str) -> None:  # noqa: ANN001
    """The image features from the given inputs equal the tower's own bit for bit, and a wrong value of any
    of them changes the features: the tower uses each instead of computing it."""
    path = str(tiny_replica(family))
    module = _module(tiny_replica, family)
    owner = _owner(module)
    inputs = module.on_before_batch_transfer(chat_batch(path, sizes=SIZES), 0)["inputs"]
    given = {k: v for k, v in inputs.items() if k in VISION_INPUTS[family]}
    assert set(given) == VISION_INPUTS[family]

    def features(**kwargs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = owner.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], **kwargs)
        return torch.cat(list(out.pooler_output))

    wrong_values = {
        "image_position_ids": torch.zeros_like(given["image_position_ids"]),
        "image_cu_seqlens": given["image_cu_seqlens"][[0, -1]],  # one attention span over all images
        "image_window_index": given.get("image_window_index", torch.zeros(0)).flip(0),
        "image_cu_window_seqlens": given.get("image_cu_window_seqlens", torch.zeros(2))[[0, -1]],
        "image_interp_indices": torch.zeros_like(given.get("image_interp_indices", torch.zeros(0))),
        "image_interp_weights": torch.zeros_like(given.get("image_interp_weights", torch.zeros(0))),
    }
    for key in sorted(given):
        if family == "qwen2_5_vl":  # its one vision block: windowed, or full attention for cu_seqlens
            owner.visual.fullatt_block_indexes = [0] if key == "image_cu_seqlens" else []
        own = features()
        assert torch.equal(features(**given), own), key
        assert not torch.equal(features(**{**given, key: wrong_values[key]}), own), key


def test_flash_attention_towers_get_their_boundaries_on_the_gpu(tiny_replica) -> None:  # noqa: ANN001
    """Flash attention's varlen kernel reads the boundaries on the device: then nothing extra stays behind."""
    module = lora_module(str(tiny_replica("qwen2_vl")), dtype="float32")
    assert kept_on_host(module.model, module.facts) == HOST_KEPT
    assert kept_on_host(module.model, FAMILIES["lfm2_vl"]) == ()
    visual_config = module.model.base_model.model.model.visual.config
    visual_config._attn_implementation = "flash_attention_2"
    try:
        assert kept_on_host(module.model, module.facts) == ()
    finally:
        visual_config._attn_implementation = "sdpa"


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
                for key in VISION_INPUTS["qwen2_vl"] | {"position_ids"}:
                    batch["inputs"].pop(key)
            losses.append(loss_and_grads(module, batch, autocast=False)[0])
        runs.append((losses, counters["stats"]["unique_graphs"]))
    (losses_plain, graphs_plain), (losses_host, graphs_host) = runs
    assert losses_host == losses_plain
    assert graphs_host == graphs_plain > 0


def test_test_and_predict_batches_and_the_switch_off_get_nothing(tiny_replica) -> None:  # noqa: ANN001
    """test / predict generate from ``generation_inputs``: their model inputs are left as collated; so are
    all batches with ``model.host_built_inputs: false``."""
    from types import SimpleNamespace

    path = str(tiny_replica("qwen2_vl"))
    module = lora_module(path, dtype="float32")
    for stage in ("testing", "predicting"):
        module._trainer = SimpleNamespace(testing=stage == "testing", predicting=stage == "predicting")
        batch = chat_batch(path, sizes=SIZES)
        collated = set(batch["inputs"])
        assert set(module.on_before_batch_transfer(batch, 0)["inputs"]) == collated, stage
    module._trainer = None
    module.hparams["host_built_inputs"] = False  # the setting's value from the config / command line
    batch = chat_batch(path, sizes=SIZES)
    collated = set(batch["inputs"])
    assert set(module.on_before_batch_transfer(batch, 0)["inputs"]) == collated
