"""A fully frozen vision tower runs under ``no_grad`` (``patches/frozen_tower.py``): same loss and gradients,
no graph kept for the tower."""

from __future__ import annotations

import torch
from fixtures_data import chat_batch

from vlm_lightning.models.loading import family_of, load_model
from vlm_lightning.models.peft_setup import LoraSettings, _find, apply_training_mode
from vlm_lightning.training.loss import causal_lm_loss


def _tower_output_and_grads(model: torch.nn.Module, tower: torch.nn.Module, batch: dict) -> tuple:
    outputs: list = []
    hook = tower.register_forward_hook(lambda module, args, out: outputs.append(out))
    try:
        model.zero_grad(set_to_none=True)
        loss, _, _ = causal_lm_loss(model, batch["inputs"], batch["labels"])
        loss.backward()
    finally:
        hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    out = outputs[-1]
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
    return loss.detach(), grads, hidden.requires_grad


def test_frozen_tower_under_no_grad_gives_the_same_loss_and_grads(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("lfm2_vl"))
    facts = family_of(path)
    torch.manual_seed(0)
    # gradient checkpointing makes embedding outputs require grad: the unwrapped frozen tower keeps a graph
    model = apply_training_mode(
        load_model(path, dtype="float32"),
        facts,
        "lora",
        LoraSettings(dropout=0.0),
        gradient_checkpointing=True,
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.train()
    tower = _find(model, facts.vision_tower)
    assert "forward" in vars(tower)  # wrapped at the model build
    batch = chat_batch(path, n=2)
    loss_w, grads_w, graph_w = _tower_output_and_grads(model, tower, batch)
    del tower.forward  # the library's forward
    loss_u, grads_u, graph_u = _tower_output_and_grads(model, tower, batch)
    assert not graph_w and graph_u
    assert torch.equal(loss_w, loss_u) and grads_w.keys() == grads_u.keys() and grads_w
    for name, grad in grads_w.items():
        torch.testing.assert_close(grads_u[name], grad, rtol=0, atol=0, msg=name)


def test_a_trained_tower_is_not_wrapped(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("lfm2_vl"))
    facts = family_of(path)
    model = apply_training_mode(
        load_model(path, dtype="float32"), facts, "lora", LoraSettings(), train_vision=True
    )
    assert "forward" not in vars(_find(model, facts.vision_tower))
