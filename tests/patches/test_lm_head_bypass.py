"""The output head bypassed for one forward (``patches/lm_head_bypass.py``): the model hands back exactly what
its head would have read, and the head is whole again afterwards."""

from __future__ import annotations

import pytest
import torch
from fixtures_data import chat_batch

from vlm_lightning.models.loading import load_model
from vlm_lightning.patches.lm_head_bypass import head_bypassed
from vlm_lightning.training.loss import fusable_head


def test_bypassed_head_hands_back_what_it_would_read(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("qwen2_vl"))
    model = load_model(path, dtype="float32").eval()
    model.get_output_embeddings().weight.requires_grad_(False)  # as under LoRA / QLoRA
    head = fusable_head(model)
    assert head is not None
    inputs = chat_batch(path, n=2)["inputs"]
    keep = torch.tensor([3, 7, 11])
    with torch.no_grad():
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
        with head_bypassed(head):
            hidden = model(**inputs, logits_to_keep=keep, use_cache=False).logits
        assert hidden.shape[-1] == head.in_features and logits.shape[-1] == head.out_features
        torch.testing.assert_close(head(hidden), logits, rtol=0, atol=0)  # the library's logits
    assert "forward" not in vars(head)


def test_head_is_restored_after_an_exception_and_an_own_forward_is_kept() -> None:
    head = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match="boom"), head_bypassed(head):
        assert torch.equal(head(x), x)
        raise RuntimeError("boom")
    assert "forward" not in vars(head) and head(x).shape == (2, 3)
    own = head.forward = lambda hidden: hidden * 2  # an instance forward bound before (e.g. compiled)
    with head_bypassed(head):
        assert torch.equal(head(x), x)
    assert head.forward is own
