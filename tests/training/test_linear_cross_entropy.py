"""The chunked lm_head + cross-entropy: same loss, correct count and gradients as the unfused path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm_lightning.data.records import Record
from vlm_lightning.models.loading import family_of, load_model, load_processor, make_collator
from vlm_lightning.replicas.registry import BUILDERS
from vlm_lightning.training.linear_cross_entropy import linear_cross_entropy
from vlm_lightning.training.loss import causal_lm_loss, fusable_head, labelled_positions, labelled_rows


def _reference(hidden, weight, bias, targets):  # noqa: ANN001, ANN202
    logits = F.linear(hidden, weight, bias)
    scores = logits.float()
    total = F.cross_entropy(scores, targets, ignore_index=-100, reduction="sum")
    correct = ((scores.argmax(-1) == targets) & (targets != -100)).sum()
    return total, correct


@pytest.mark.parametrize("chunk_elements", [7 * 50, 1 << 26])  # 7 rows a chunk (uneven tail) / one chunk
def test_matches_linear_then_cross_entropy(chunk_elements: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    bias = torch.randn(50, dtype=torch.float64)
    targets = torch.randint(0, 50, (23,))
    targets[[0, 5, 22]] = -100  # ignored rows: no loss, no gradient
    total, correct = linear_cross_entropy(hidden, weight, targets, bias, chunk_elements)
    (grad,) = torch.autograd.grad(total * 0.37, hidden)  # an upstream scale reaches the input gradient
    ref_hidden = hidden.detach().clone().requires_grad_(True)
    ref_total, ref_correct = _reference(ref_hidden, weight, bias, targets)
    (ref_grad,) = torch.autograd.grad(ref_total * 0.37, ref_hidden)
    torch.testing.assert_close(total, ref_total.float())
    assert int(correct) == int(ref_correct)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)  # float32 softmax on both paths
    assert grad[[0, 5, 22]].abs().max() == 0


def test_bf16_autocast_stays_within_rounding_of_the_unfused_path() -> None:
    torch.manual_seed(1)
    hidden = torch.randn(40, 32, requires_grad=True)
    weight = torch.randn(300, 32) / 4
    targets = torch.randint(0, 300, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = linear_cross_entropy(hidden, weight, targets)
        ref_hidden = hidden.detach().clone().requires_grad_(True)
        ref_total, _ = _reference(ref_hidden, weight, None, targets)
    (grad,) = torch.autograd.grad(total, hidden)
    (ref_grad,) = torch.autograd.grad(ref_total, ref_hidden)
    torch.testing.assert_close(total, ref_total, rtol=1e-4, atol=1e-3)  # same bf16 logits, fp32 softmax
    torch.testing.assert_close(grad, ref_grad, rtol=2e-2, atol=2e-2)


def test_a_trainable_head_is_refused() -> None:
    weight = torch.randn(10, 4, requires_grad=True)
    with pytest.raises(ValueError, match="frozen head"):
        linear_cross_entropy(torch.randn(3, 4), weight, torch.tensor([1, 2, 3]))


def _batch(path: str) -> dict:
    facts = family_of(path)
    budget = 70 if facts.name == "gemma4" else 16  # Gemma 4's smallest image budget is 70 soft tokens
    collator = make_collator(load_processor(path, image_max_tokens=budget), facts, max_length=400)
    convs = [("Q", "short"), ("Longer question here", "a much longer answer than the first one")]
    recs = [
        Record(str(i), ["x"], [{"role": "user", "content": q}, {"role": "assistant", "content": a}], [a])
        for i, (q, a) in enumerate(convs)
    ]
    return collator([(r, [Image.new("RGB", (64, 80), "white")]) for r in recs])


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_every_family_gets_the_hf_loss_and_gradients_with_a_frozen_head(tiny_replica, family: str) -> None:  # noqa: ANN001
    path = str(tiny_replica(family))
    batch = _batch(path)
    torch.manual_seed(0)
    model = load_model(path, dtype="float32")
    model.train()
    model.get_output_embeddings().weight.requires_grad_(False)  # as under LoRA / QLoRA
    head = fusable_head(model)
    assert head is model.get_output_embeddings()
    ref = model(**batch["inputs"], labels=batch["labels"], use_cache=False).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    keep = labelled_positions(batch["labels"])
    rows = labelled_rows(batch["labels"], keep)
    assert len(rows) == int((batch["labels"] != -100).sum())  # exactly the labelled tokens
    loss, n_tokens, correct = causal_lm_loss(model, batch["inputs"], batch["labels"], keep=keep, rows=rows)
    unfused, _, unfused_correct = causal_lm_loss(model, batch["inputs"], batch["labels"], head=None)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unfused, ref, atol=1e-5, rtol=1e-5)
    assert int(correct) == int(unfused_correct)
    assert int(n_tokens) == len(rows)
    model.zero_grad()
    loss.backward()
    assert ref_grads, "some parameter must have a gradient"
    for name, grad in ref_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)
    assert "forward" not in head.__dict__  # the head is whole again after the loss
    logits = model(**batch["inputs"], use_cache=False).logits
    assert logits.shape[-1] == head.out_features


def test_heads_that_cannot_be_fused_fall_back(tiny_replica) -> None:  # noqa: ANN001
    model = load_model(str(tiny_replica("qwen2_vl")), dtype="float32")
    model.get_output_embeddings().weight.requires_grad_(True)  # full fine-tuning trains the head
    assert fusable_head(model) is None
    model.get_output_embeddings().weight.requires_grad_(False)
    model.get_output_embeddings()._hf_hook = object()  # accelerate's device hooks (device_map="auto")
    assert fusable_head(model) is None


def test_logit_softcapping_keeps_the_unfused_path_and_the_hf_loss(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("paligemma"))
    batch = _batch(path)
    model = load_model(path, dtype="float32")
    model.config.get_text_config().final_logit_softcapping = 2.0  # PaliGemma 2 (Gemma 2)
    model.get_output_embeddings().weight.requires_grad_(False)
    assert fusable_head(model) is None
    with torch.no_grad():
        ref = model(**batch["inputs"], labels=batch["labels"], use_cache=False).loss
        loss, _, _ = causal_lm_loss(model, batch["inputs"], batch["labels"])
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
