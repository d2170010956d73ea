"""Packed rows are exact: per family, each sample's loss and the LoRA gradients equal the unpacked run, and
changing one sample leaves its row neighbours untouched. Families that cannot pack are refused by name."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlm_lightning.data.packing import IGNORE_INDEX, pack_rows, packed_tensors, segment_positions
from vlm_lightning.data.records import Record
from vlm_lightning.models.families import FAMILIES
from vlm_lightning.models.loading import family_of, load_processor, make_collator
from vlm_lightning.models.packed_positions import packed_inputs

PACKING = sorted(name for name, facts in FAMILIES.items() if facts.packing_refusal is None)
REFUSED = sorted(name for name, facts in FAMILIES.items() if facts.packing_refusal is not None)


def _record(i: int, answer: str) -> Record:
    messages = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": answer}]
    return Record(f"s{i}", ["x"], messages, [answer])


def _items(answers: list[str]) -> list:
    return [
        (_record(i, a), [Image.new("RGB", (64 + 16 * i, 80), (40 * i, 200, 255 - 50 * i))])
        for i, a in enumerate(answers)
    ]


ANSWERS = ['{"total": 12.5}', "Corner Cafe", "42 items, paid in cash"]


def test_rows_keep_order_and_fit_the_budget() -> None:
    assert pack_rows([5, 3, 4, 2], None) == [[0, 1, 2, 3]]
    assert pack_rows([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]
    assert pack_rows([5, 3, 4, 2], 9) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="sample 1 has 10 tokens, more than the row budget 8"):
        pack_rows([5, 10], 8)


def test_packed_tensors_and_positions_on_hand_made_samples() -> None:
    class S:
        def __init__(self, ids: list[int], labels: list[int]) -> None:
            self.input_ids, self.labels, self.extras = ids, labels, {"mm_token_type_ids": [0] * len(ids)}

    samples = [S([1, 2, 3], [-100, 2, 3]), S([4, 5], [-100, 5]), S([6], [-100])]
    inputs, labels, segments = packed_tensors(samples, [[0, 1], [2]], pad_id=0, pad_to_multiple_of=8)
    assert inputs["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0], [6, 0, 0, 0, 0, 0, 0, 0]]
    assert labels[0].tolist() == [-100, 2, 3, -100, 5, -100, -100, -100]
    assert segments == [[3, 2, 3], [1, 7]]
    assert segment_positions(segments)[0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]


def _sample_losses(
    logits: torch.Tensor, labels: torch.Tensor, segments: list[list[int]]
) -> list[torch.Tensor]:
    """Summed next-token cross-entropy of each segment (row by row, padding segments left out)."""
    losses = []
    for r, row in enumerate(segments):
        start = 0
        for n in row:
            target = labels[r, start + 1 : start + n]
            if (target != IGNORE_INDEX).any():
                losses.append(
                    torch.nn.functional.cross_entropy(
                        logits[r, start : start + n - 1].float(),
                        target,
                        ignore_index=IGNORE_INDEX,
                        reduction="sum",
                    )
                )
            start += n
    return losses


@pytest.fixture(scope="module")
def built(tiny_replica):  # noqa: ANN001, ANN201
    from vlm_lightning.models.build import build_model
    from vlm_lightning.models.peft_setup import LoraSettings

    cache = {}

    def get(family: str):  # noqa: ANN202
        if family not in cache:
            path = str(tiny_replica(family))
            torch.manual_seed(0)
            model = build_model(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0), dtype="float32").model
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=0.05)  # adapters that change the outputs
                if ".conv.in_proj" in name and "lora" not in name:  # LFM2: short convs that matter,
                    with torch.no_grad():  # so a tap reaching into the previous sample shows in the losses
                        param.mul_(30.0)
            processor = load_processor(path, image_max_tokens=16)
            cache[family] = (model.eval(), make_collator(processor, family_of(path), max_length=400))
        return cache[family]

    return get


def _packed_logits(model, collator, answers: list[str], budget: int | None = None):  # noqa: ANN001, ANN202
    batch = collator.pack(_items(answers), budget=budget)
    inputs = dict(batch["inputs"])
    inputs.update(packed_inputs(model, collator.facts, inputs, batch["packed_segments"]))
    return model(**inputs, use_cache=False).logits, batch


@pytest.mark.parametrize("family", PACKING)
def test_packed_losses_and_gradients_equal_one_sample_at_a_time(family: str, built) -> None:  # noqa: ANN001
    model, collator = built(family)
    logits, batch = _packed_logits(model, collator, ANSWERS)
    packed = _sample_losses(logits, batch["labels"], batch["packed_segments"])
    assert len(packed) == len(ANSWERS)
    alone = []
    for i in range(len(ANSWERS)):
        single = collator([_items(ANSWERS)[i]])
        out = model(**single["inputs"], use_cache=False).logits
        alone.append(_sample_losses(out, single["labels"], [[single["labels"].shape[1]]])[0])
    for p, a in zip(packed, alone):
        torch.testing.assert_close(p, a, rtol=1e-5, atol=1e-5)
    # the LoRA gradients of the summed loss agree too
    model.zero_grad()
    logits, batch = _packed_logits(model, collator, ANSWERS)
    sum(_sample_losses(logits, batch["labels"], batch["packed_segments"])).backward()
    grads_packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = 0
    for i in range(len(ANSWERS)):
        single = collator([_items(ANSWERS)[i]])
        out = model(**single["inputs"], use_cache=False).logits
        total = total + _sample_losses(out, single["labels"], [[single["labels"].shape[1]]])[0]
    total.backward()
    grads_alone = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads_packed.keys() == grads_alone.keys() and any("lora_A" in n for n in grads_packed)
    for name in grads_packed:
        torch.testing.assert_close(grads_packed[name], grads_alone[name], rtol=1e-4, atol=1e-6, msg=name)
    model.zero_grad()


@pytest.mark.parametrize("family", PACKING)
def test_changing_one_sample_leaves_its_row_neighbours_unchanged(family: str, built) -> None:  # noqa: ANN001
    model, collator = built(family)
    with torch.no_grad():
        logits, batch = _packed_logits(model, collator, ANSWERS)
        changed, batch2 = _packed_logits(model, collator, [ANSWERS[0], "Another shop entirely", ANSWERS[2]])
    before = _sample_losses(logits, batch["labels"], batch["packed_segments"])
    after = _sample_losses(changed, batch2["labels"], batch2["packed_segments"])
    torch.testing.assert_close(before[0], after[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(before[2], after[2], rtol=1e-5, atol=1e-5)  # after the changed one: no leak
    assert not torch.allclose(before[1], after[1])


@pytest.mark.parametrize("family", PACKING)
def test_a_row_budget_splits_rows_without_changing_losses(family: str, built) -> None:  # noqa: ANN001
    model, collator = built(family)
    with torch.no_grad():
        one_row, batch = _packed_logits(model, collator, ANSWERS)
        lengths = batch["packed_segments"][0]
        budget = max(lengths[0] + lengths[1], lengths[2])  # two rows: [s0, s1], [s2]
        split, batch2 = _packed_logits(model, collator, ANSWERS, budget=budget)
    assert len(batch2["packed_segments"]) == 2
    for a, b in zip(
        _sample_losses(one_row, batch["labels"], batch["packed_segments"]),
        _sample_losses(split, batch2["labels"], batch2["packed_segments"]),
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", REFUSED)
def test_families_that_cannot_pack_say_why(family: str) -> None:
    reason = FAMILIES[family].packing_refusal
    assert reason and len(reason) > 40


def test_packing_accepts_only_attention_kernels_that_keep_samples_apart() -> None:
    from vlm_lightning.models.packed_positions import packing_attention_problem

    assert packing_attention_problem(None) is None  # the model's default: sdpa (or eager)
    assert packing_attention_problem("sdpa") is None and packing_attention_problem("eager") is None
    for kernel in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn"):
        assert "--model.attn_implementation sdpa" in packing_attention_problem(kernel)


@pytest.mark.parametrize("family", ["qwen2_vl", "lfm2_vl"])
def test_packed_rows_are_exact_with_the_eager_kernel_too(family: str, tiny_replica) -> None:  # noqa: ANN001
    """The two kernels packing accepts both build the per-sample mask from the restarting positions."""
    from vlm_lightning.models.build import build_model
    from vlm_lightning.models.peft_setup import LoraSettings

    path = str(tiny_replica(family))
    torch.manual_seed(0)
    model = build_model(
        path, lora=LoraSettings(r=4, dropout=0.0), dtype="float32", attn_implementation="eager"
    )
    model = model.model.eval()
    assert model.config._attn_implementation == "eager"
    collator = make_collator(load_processor(path, image_max_tokens=16), family_of(path), max_length=400)
    with torch.no_grad():
        logits, batch = _packed_logits(model, collator, ANSWERS)
        changed, batch2 = _packed_logits(model, collator, [ANSWERS[0], "Another shop entirely", ANSWERS[2]])
    before = _sample_losses(logits, batch["labels"], batch["packed_segments"])
    after = _sample_losses(changed, batch2["labels"], batch2["packed_segments"])
    torch.testing.assert_close(before[2], after[2], rtol=1e-5, atol=1e-5)  # the sample after the changed one
    with torch.no_grad():
        single = collator([_items(ANSWERS)[0]])
        alone = model(**single["inputs"], use_cache=False).logits
    first = _sample_losses(alone, single["labels"], [[single["labels"].shape[1]]])[0]
    torch.testing.assert_close(before[0], first, rtol=1e-5, atol=1e-5)


def test_filler_batches_train_nothing_and_still_touch_every_adapter(tiny_replica) -> None:  # noqa: ANN001
    """The packed sampler's fillers (DDP ranks kept in step at an epoch's end) hold no labelled token and add
    no real tokens; their step gives a zero loss and a zero gradient for every trainable weight (DDP's reducer
    waits for all of them), so no sample trains twice."""
    import dataclasses

    from fit_helpers import lora_module

    from vlm_lightning.data.sampling import FILLER

    path = str(tiny_replica("lfm2_vl"))
    module = lora_module(path, dtype="float32")
    collator = make_collator(load_processor(path, image_max_tokens=16), family_of(path), max_length=400)
    fillers = [(dataclasses.replace(r, meta={FILLER: True}), images) for r, images in _items(ANSWERS)]
    real = collator.pack(_items(ANSWERS), budget=None)
    batch = collator.pack(fillers, budget=None)
    assert torch.equal(batch["inputs"]["input_ids"], real["inputs"]["input_ids"])
    assert (batch["labels"] == IGNORE_INDEX).all() and (real["labels"] != IGNORE_INDEX).any()
    assert batch["real_tokens"] == 0 < real["real_tokens"]
    loss, n_tokens, _ = module.model_step(module.on_before_batch_transfer(batch, 0))
    loss.backward()
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert float(loss) == 0.0 and int(n_tokens) == 0 and trainable
    assert all(p.grad is not None and not p.grad.any() for p in trainable.values())
