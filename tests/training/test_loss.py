"""The labelled-positions loss equals the HF loss and gives the same gradients."""

from __future__ import annotations

import torch
from PIL import Image

from vlm_lightning.data.collator import ChatCollator
from vlm_lightning.data.records import Record
from vlm_lightning.models.loading import family_of, load_model, load_processor
from vlm_lightning.training.loss import causal_lm_loss, labelled_positions


def test_labelled_positions() -> None:
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, -100, -100, 7, -100]])
    assert labelled_positions(labels).tolist() == [1, 2]


def test_matches_hf_loss_and_gradients(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("qwen2_vl"))
    collator = ChatCollator(load_processor(path, image_max_tokens=16), family_of(path), max_length=300)
    recs = [
        Record(
            "a",
            ["x"],
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "short"}],
            ["short"],
        ),
        Record(
            "b",
            ["x"],
            [
                {"role": "user", "content": "Longer question"},
                {"role": "assistant", "content": "a much longer answer"},
            ],
            ["a much longer answer"],
        ),
    ]
    batch = collator([(r, [Image.new("RGB", (64, 80), "white")]) for r in recs])
    torch.manual_seed(0)
    model = load_model(path, dtype="float32")
    model.train()
    ref = model(**batch["inputs"], labels=batch["labels"], use_cache=False).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss, n_tokens, _ = causal_lm_loss(model, batch["inputs"], batch["labels"])
    loss.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    assert int(n_tokens) == int((batch["labels"] != -100).sum())
    for name, grad in ref_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)
