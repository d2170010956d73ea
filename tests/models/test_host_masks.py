"""Text masks prepared from the CPU batch's padding answer (``models/host_masks.py``) equal the library's own."""

from __future__ import annotations

import pytest
import torch
from fit_helpers import lora_module, loss_and_grads
from fixtures_data import chat_batch
from transformers import masking_utils

from vlm_lightning.models.families import FAMILIES
from vlm_lightning.models.host_masks import (
    PREPARED_MASK_FORMS,
    host_decided_masks,
    padded_rows,
    prepares_text_masks,
)

# the families whose text model types PREPARED_MASK_FORMS lists
REPLICAS = [
    "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "internvl", "lfm2_vl", "lfm3_vl",
    "idefics3", "smolvlm", "granite_docling", "paddleocr_vl",
]  # fmt: skip
SIZES = ((64, 80), (96, 48), (40, 40))  # images of three sizes: rows of three lengths (padded)


def _never_asked(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    raise AssertionError("the padding mask's values were read on the host (a GPU sync)")


def _assert_library_masks(kinds: dict, text, embeds: torch.Tensor, **mask_inputs) -> None:  # noqa: ANN001, ANN003
    """Each prepared mask equals what the library's factory for its layer type builds from ``mask_inputs``."""
    for kind, ours in kinds.items():
        factory = masking_utils.LAYER_PATTERN_TO_MASK_FUNCTION_MAPPING[kind]
        theirs = factory(config=text, inputs_embeds=embeds, past_key_values=None, **mask_inputs)
        if theirs is None:
            assert ours is None, kind
        else:
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=kind)


def _assert_library_step(module, hooked: dict, answer: str, never_asked: str | None, monkeypatch) -> None:  # noqa: ANN001
    """The step with the CPU batch's ``answer`` gives the library path's loss and LoRA gradients bit for bit,
    and never calls ``masking_utils.<never_asked>`` (which would read the mask's values on the device)."""
    library = {k: v for k, v in hooked.items() if k != answer}
    loss_l, grads_l = loss_and_grads(module, library, autocast=False)
    with monkeypatch.context() as patched:
        if never_asked:
            patched.setattr(masking_utils, never_asked, _never_asked)
        loss_h, grads_h = loss_and_grads(module, hooked, autocast=False)
    assert loss_h == loss_l
    assert grads_h.keys() == grads_l.keys() and grads_l
    for name, grad in grads_l.items():
        torch.testing.assert_close(grads_h[name], grad, rtol=0, atol=0, msg=name)


def test_padded_rows_answers_on_the_cpu_mask() -> None:
    assert padded_rows(torch.tensor([[1, 1, 0], [1, 1, 1]])) is True
    assert padded_rows(torch.ones(2, 3, dtype=torch.long)) is False
    assert padded_rows(torch.tensor([[True, False]])) is True


def test_every_listed_text_model_type_is_tested(tiny_replica) -> None:  # noqa: ANN001
    from transformers import AutoConfig

    tested = {AutoConfig.from_pretrained(tiny_replica(f)).get_text_config().model_type for f in REPLICAS}
    assert tested == set(PREPARED_MASK_FORMS)


@pytest.mark.parametrize("family", REPLICAS)
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_prepared_masks_equal_the_library_masks(tiny_replica, family: str, kernel: str) -> None:  # noqa: ANN001
    """Each layer type's prepared mask equals what the text model's own factories build from the 2-D mask
    (padded and unpadded rows): fails when transformers changes what it builds."""
    module = lora_module(str(tiny_replica(family)), dtype="float32")
    text = module.model.config.get_text_config()
    text._attn_implementation = kernel
    assert prepares_text_masks(module.model)
    padded = chat_batch(str(tiny_replica(family)), sizes=SIZES)["inputs"]["attention_mask"]
    for mask in (padded, torch.ones_like(padded)):
        embeds = torch.zeros((*mask.shape, 8))
        inputs = {"attention_mask": mask, "position_ids": torch.zeros(mask.shape, dtype=torch.long)}
        prepared = host_decided_masks(module.model, inputs, padded_rows(mask))["attention_mask"]
        if not torch.is_tensor(prepared) and prepared is not None:
            kinds = prepared
        else:
            kinds = {"full_attention": prepared}
            if not padded_rows(mask):  # 4-D form: an unpadded mask is left to the library
                assert prepared is mask
                continue
        _assert_library_masks(kinds, text, embeds, attention_mask=mask, position_ids=None)


@pytest.mark.parametrize("family", REPLICAS)
def test_training_step_with_host_decided_masks_gives_the_library_numbers(
    tiny_replica, family: str, monkeypatch
) -> None:  # noqa: ANN001, E501
    """The trainer's CPU hook answers the padding question; the step then never asks it (``fast_all`` would
    raise) and gives the library path's loss and LoRA gradients exactly, padded or not."""
    module = lora_module(str(tiny_replica(family)), dtype="float32")
    for sizes in (SIZES, ((64, 80),)):  # three rows of three lengths; one row (no padding)
        hooked = module.on_before_batch_transfer(chat_batch(str(tiny_replica(family)), sizes=sizes), 0)
        if not prepares_text_masks(module.model, hooked["inputs"]):  # the model builds its positions from it
            assert family in ("qwen3_5", "paddleocr_vl") and "padded_rows" not in hooked
            return
        assert hooked["padded_rows"] is (len(sizes) > 1)
        form = PREPARED_MASK_FORMS[module.model.config.get_text_config().model_type]
        never_asked = "fast_all" if hooked["padded_rows"] or form == "mapping" else None
        _assert_library_step(module, hooked, "padded_rows", never_asked, monkeypatch)


def test_models_without_a_prepared_form_keep_their_mask(tiny_replica) -> None:  # noqa: ANN001
    """Gemma-style models build a two-way image mask from ``token_type_ids``: their 2-D mask is left alone."""
    for family in ("paligemma", "gemma4"):
        assert not prepares_text_masks(lora_module(str(tiny_replica(family)), dtype="float32").model)
    module = lora_module(str(tiny_replica("gemma3")), dtype="float32")
    assert not prepares_text_masks(module.model)
    hooked = module.on_before_batch_transfer(chat_batch(str(tiny_replica("gemma3"))), 0)
    assert "padded_rows" not in hooked
    inputs = {"attention_mask": torch.tensor([[1, 0]])}
    assert host_decided_masks(module.model, inputs, True) is inputs


def test_flash_and_flex_kernels_are_left_to_the_library(tiny_replica) -> None:  # noqa: ANN001
    module = lora_module(str(tiny_replica("lfm2_vl")), dtype="float32")
    module.model.config.get_text_config()._attn_implementation = "flash_attention_2"
    assert not prepares_text_masks(module.model)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "qwen3_5", "paddleocr_vl"])
def test_qwen_masks_stay_two_dimensional_while_the_model_builds_its_positions(
    tiny_replica, family: str
) -> None:  # noqa: ANN001, E501
    """Without host-built ``position_ids`` the model's own M-RoPE index reads the 2-D mask: it is kept."""
    module = lora_module(str(tiny_replica(family)), dtype="float32")
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert host_decided_masks(module.model, {"attention_mask": mask}, True)["attention_mask"] is mask
    assert (
        host_decided_masks(module.model, {"attention_mask": mask, "position_ids": None}, True)[
            "attention_mask"
        ]
        is mask
    )
    positions = torch.zeros((3, 2, 3), dtype=torch.long)
    prepared = host_decided_masks(module.model, {"attention_mask": mask, "position_ids": positions}, True)
    assert prepared["attention_mask"] is not mask


def _packed_items() -> list:
    from PIL import Image

    from vlm_lightning.data.records import Record

    answers = ['{"total": 12.5}', "Corner Cafe", "42 items, paid in cash"]
    return [
        (
            Record(
                f"s{i}",
                ["x"],
                [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": a}],
                [a],
            ),
            [Image.new("RGB", (64 + 16 * i, 80), (40 * i, 200, 255 - 50 * i))],
        )
        for i, a in enumerate(answers)
    ]


PACKED_REPLICAS = [f for f in REPLICAS if FAMILIES[f].packing_refusal is None]


@pytest.mark.parametrize("family", PACKED_REPLICAS)
def test_packed_rows_get_the_library_block_masks_without_asking(
    tiny_replica, family: str, monkeypatch
) -> None:  # noqa: ANN001, E501
    """Packed rows: the sample index of each token is found on the CPU; the prepared block-causal masks equal
    the library's (built from the positions), and so do the loss and LoRA gradients, with no row split found
    on the device (``find_packed_sequence_indices`` would raise)."""
    from vlm_lightning.models.loading import family_of, load_processor, make_collator

    path = str(tiny_replica(family))
    module = lora_module(path, dtype="float32")
    collator = make_collator(load_processor(path, image_max_tokens=16), family_of(path), max_length=400)
    one_row = collator.pack(_packed_items(), budget=None)
    first, second = one_row["packed_segments"][0][:2]
    text = module.model.config.get_text_config()
    for budget in (None, first + second):  # one row of three samples; two rows, the second padded
        hooked = module.on_before_batch_transfer(collator.pack(_packed_items(), budget=budget), 0)
        ids = hooked["packed_sequence_ids"]
        assert ids is not None and "attention_mask" not in hooked["inputs"]
        prepared = host_decided_masks(module.model, hooked["inputs"], sequence_ids=ids)["attention_mask"]
        kinds = prepared if isinstance(prepared, dict) else {"full_attention": prepared}
        positions = hooked["inputs"]["position_ids"]
        positions = positions[0] if positions.ndim == 3 else positions
        embeds = torch.zeros((*hooked["inputs"]["input_ids"].shape, 8))
        _assert_library_masks(kinds, text, embeds, attention_mask=None, position_ids=positions)
        _assert_library_step(
            module, hooked, "packed_sequence_ids", "find_packed_sequence_indices", monkeypatch
        )
