"""Decoder MLPs over sequence slices (recompute mode): the same loss and gradients, every dense-MLP family."""

from __future__ import annotations

import copy

import pytest
import torch
from fit_helpers import lora_module, loss_and_grads
from fixtures_data import chat_batch

from vlm_lightning.models import sliced_mlp
from vlm_lightning.models.acceleration import compile_decoder_layers, decoder_layers
from vlm_lightning.models.families import FAMILIES
from vlm_lightning.models.sliced_mlp import mlp_container, slice_decoder_mlps, sliced_forward


def test_sliced_forward_runs_each_piece_and_concatenates_in_order() -> None:
    calls: list[tuple[int, ...]] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x * 2

    hidden = torch.arange(2 * 300 * 3, dtype=torch.float32).reshape(2, 300, 3)
    out = sliced_forward(forward, 4)(hidden)
    assert calls == [(2, 75, 3)] * 4
    assert torch.equal(out, hidden * 2)
    calls.clear()
    short = torch.ones(2, 100, 3)  # below MIN_SLICED_POSITIONS: one call
    assert torch.equal(sliced_forward(forward, 4)(short), short * 2) and calls == [(2, 100, 3)]
    calls.clear()
    with torch.no_grad():  # no backward to lower the peak of (generation, validation loss): one call
        assert torch.equal(sliced_forward(forward, 4)(hidden), hidden * 2)
    assert calls == [(2, 300, 3)]


def test_a_token_mixing_forward_would_change_under_slicing() -> None:
    """The check below can fail: slicing is exact only for per-token modules, and the test sees the difference."""

    def mixing(x: torch.Tensor) -> torch.Tensor:
        return x.cumsum(dim=1)

    hidden = torch.randn(1, 512, 4)
    assert not torch.allclose(sliced_forward(mixing, 4)(hidden), mixing(hidden))


@pytest.mark.parametrize("family", ["lfm2_vl", "qwen2_vl"])
def test_every_decoder_layer_of_a_dense_family_gets_a_sliced_mlp_once(tiny_replica, family: str) -> None:  # noqa: ANN001
    module = lora_module(str(tiny_replica(family)))
    layers = decoder_layers(module.model, module.facts)
    assert all(mlp_container(layer, module.facts) is not None for layer in layers)
    assert slice_decoder_mlps(layers, module.facts) == len(layers)
    assert slice_decoder_mlps(layers, module.facts) == 0  # idempotent
    assert slice_decoder_mlps(layers, module.facts, slices=1) == 0


def test_a_layer_without_the_family_mlp_is_left_alone() -> None:
    facts = FAMILIES["lfm2_vl"]
    moe_like = torch.nn.Module()
    moe_like.feed_forward = torch.nn.Module()  # no w1 / w2 / w3: e.g. a mixture of experts
    assert mlp_container(moe_like, facts) is None


@pytest.mark.parametrize(("family", "dynamic"), [("lfm2_vl", True), ("qwen2_vl", None)])
def test_recompute_with_sliced_mlps_gives_the_eager_loss_and_grads(
    tiny_replica, family: str, dynamic: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """Compiled layers with compiler recomputation (MLPs sliced) vs the eager model: same loss and LoRA
    gradients in fp32; with ``dynamic=True`` (the shape-generic graph layers get after a second shape) for two
    sequence lengths through one graph, else one batch (the replica's short batches are sliced: the length
    floor is lowered). Shape-generic compilation is slow on the CPU: one family takes that case."""
    monkeypatch.setattr(sliced_mlp, "MIN_SLICED_POSITIONS", 8)
    path = str(tiny_replica(family))
    eager = lora_module(path)
    compiled = copy.deepcopy(eager)
    batches = [chat_batch(path, n=3), chat_batch(path, n=2, sizes=((96, 128), (64, 64)))][
        : 2 if dynamic else 1
    ]
    lengths = {b["inputs"]["input_ids"].shape[1] for b in batches}
    assert len(lengths) == len(batches) and min(lengths) >= 8, "other lengths, each long enough to be sliced"
    budget = torch._functorch.config.activation_memory_budget
    try:
        graphs: list[torch.fx.GraphModule] = []

        def recording_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:  # noqa: ANN401
            graphs.append(gm)
            return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

        compile_decoder_layers(
            compiled.model,
            compiled.facts,
            dynamic=True,
            backend=recording_backend,
            recompute_activations=True,
        )
        layers = decoder_layers(compiled.model, compiled.facts)
        assert all(
            hasattr(mlp_container(x, compiled.facts).__dict__["forward"], "sliced_forward_of") for x in layers
        )
        results = [
            (loss_and_grads(eager, batch, autocast=False), loss_and_grads(compiled, batch, autocast=False))
            for batch in batches
        ]
    finally:
        torch._functorch.config.activation_memory_budget = budget
    split_calls = [
        n for gm in graphs for n in gm.graph.nodes if n.target in (torch.tensor_split, "tensor_split")
    ]
    assert graphs and split_calls, "the compiled layers traced no sliced MLP"
    for (loss_e, grads_e), (loss_c, grads_c) in results:
        assert loss_c == pytest.approx(loss_e, rel=1e-5)
        assert grads_c.keys() == grads_e.keys()
        for name in grads_e:
            torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sliced_mlps_keep_the_loss_and_grads_in_every_family(
    tiny_replica, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """Eager (no compiler), fp32: every family's decoder MLPs are sliced, and the sliced model's loss and LoRA
    gradients equal the unsliced model's (an MLP that mixed tokens would fail here)."""
    monkeypatch.setattr(sliced_mlp, "MIN_SLICED_POSITIONS", 8)
    path = str(tiny_replica(family))
    whole = lora_module(path)
    sliced = copy.deepcopy(whole)
    batch = chat_batch(path, n=3, image_max_tokens=70 if family == "gemma4" else 16)
    layers = decoder_layers(sliced.model, sliced.facts)
    assert slice_decoder_mlps(layers, sliced.facts) == len(layers)
    loss_w, grads_w = loss_and_grads(whole, batch, autocast=False)
    loss_s, grads_s = loss_and_grads(sliced, batch, autocast=False)
    assert loss_s == pytest.approx(loss_w, rel=1e-5)
    assert grads_s.keys() == grads_w.keys() and grads_w
    for name in grads_w:
        torch.testing.assert_close(grads_s[name], grads_w[name], rtol=1e-4, atol=1e-6)
