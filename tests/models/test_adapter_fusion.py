"""The compiler pass giving LoRA A projections of one input one GEMM keeps the loss and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from fit_helpers import lora_module, loss_and_grads, uncached_compilation
from fixtures_data import chat_batch

from vlm_lightning.models.acceleration import compile_layers, decoder_layers
from vlm_lightning.models.adapter_fusion import SharedInputAdapterFusion, fuse_shared_input_projections


class _Projections(torch.nn.Module):
    """Three low-rank trainable projections of one input, one of another input, one frozen, one biased."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.ModuleList(torch.nn.Linear(16, 4, bias=False) for _ in range(3))
        self.other = torch.nn.Linear(16, 4, bias=False)
        self.frozen = torch.nn.Linear(16, 4, bias=False).requires_grad_(False)
        self.biased = torch.nn.Linear(16, 4)
        self.square = torch.nn.Linear(16, 16, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shared = sum(layer(x) * (i + 1) for i, layer in enumerate(self.a))
        return shared + self.other(y) + self.frozen(x) + self.biased(x) + self.square(x)[..., :4]


def _capture(fused: list[int]):  # noqa: ANN202 - a dynamo backend
    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> torch.fx.GraphModule:  # noqa: ARG001
        fused.append(fuse_shared_input_projections(gm.graph))
        gm.recompile()
        return gm

    return backend


def test_only_low_rank_trainable_projections_of_one_input_are_fused() -> None:
    torch.manual_seed(0)
    eager = _Projections()
    compiled = copy.deepcopy(eager)
    fused: list[int] = []
    forward = torch.compile(compiled.forward, backend=_capture(fused), fullgraph=True)
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    out_e, out_c = eager(x, y), forward(x, y)
    assert fused == [1]  # the three `a` layers; not `other` (own input), frozen, biased or square
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p_e.requires_grad:
            torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-5, atol=1e-6, msg=name)


class _DroppedProjections(torch.nn.Module):
    """LoRA-style with dropout: each low-rank projection reads its own dropout (own mask) of one input,
    and one more dropout of that input also feeds a non-low-rank layer (never merged)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.ModuleList(torch.nn.Linear(16, 4, bias=False) for _ in range(3))
        self.drop = torch.nn.ModuleList(torch.nn.Dropout(0.3) for _ in range(4))
        self.square = torch.nn.Linear(16, 16, bias=False)

    def forward(self, x: torch.Tensor, shared_mask: bool = False) -> torch.Tensor:
        dropped = [self.drop[0](x)] * 3 if shared_mask else [drop(x) for drop in self.drop[:3]]
        out = sum(layer(d) for layer, d in zip(self.a, dropped, strict=True))
        return out + self.square(self.drop[3](x))[..., :4]


def _dropout_nodes(graph: torch.fx.Graph) -> int:
    return sum(node.target is torch.nn.functional.dropout for node in graph.nodes)


def test_sibling_dropouts_of_one_input_share_one_mask_and_their_projections_one_gemm() -> None:
    torch.manual_seed(0)
    module = _DroppedProjections()
    counts: list[tuple[int, int]] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> torch.fx.GraphModule:  # noqa: ARG001
        before = _dropout_nodes(gm.graph)
        fused = fuse_shared_input_projections(gm.graph)
        counts.append((before - _dropout_nodes(gm.graph), fused))
        gm.recompile()
        return gm

    x = torch.randn(2, 5, 16)
    forward = torch.compile(module.forward, backend=backend, fullgraph=True)
    torch.manual_seed(1)
    out_c = forward(x)
    torch.manual_seed(1)
    out_shared = module(x, shared_mask=True)  # the first dropout's mask for all three, then the fourth's
    torch.manual_seed(1)
    out_own = module(x)
    assert counts == [(2, 1)]  # two of the three low-rank dropouts merged into the first; the fourth kept
    torch.testing.assert_close(out_c, out_shared, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out_c, out_own, atol=1e-3)  # the masks really are shared now


def test_dropouts_of_one_input_with_another_rate_are_not_merged() -> None:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    outputs = []
    for i, p in enumerate((0.1, 0.2)):
        weight = graph.placeholder(f"w{i}")
        weight.meta["example_value"] = torch.randn(4, 16, requires_grad=True)
        dropped = graph.call_function(torch.nn.functional.dropout, (x, p, True, False))
        outputs.append(graph.call_function(torch.nn.functional.linear, (dropped, weight)))
    graph.output(tuple(outputs))
    assert fuse_shared_input_projections(graph) == 0 and _dropout_nodes(graph) == 2


class _OneMaskPerInput(torch.nn.Module):
    """A dropout that gives every caller of the same input tensor the same mask (the pass's semantics)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.dropout = torch.nn.Dropout(p)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for source, dropped in self.seen:
            if source is x:
                return dropped
        self.seen.append((x, self.dropout(x)))
        return self.seen[-1][1]


def share_masks_per_input(layers: torch.nn.Module) -> None:
    """Point every LoRA dropout inside ``layers`` at one ``_OneMaskPerInput``."""
    dropouts = [
        m for m in layers.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
    ]
    shared = _OneMaskPerInput(dropouts[0].lora_dropout["default"].p)
    for module in dropouts:
        module.lora_dropout["default"] = shared


@pytest.mark.parametrize(("family", "dropout"), [("lfm2_vl", 0.0), ("qwen2_vl", 0.0), ("lfm2_vl", 0.2)])
def test_fused_adapter_inputs_keep_a_decoder_layers_loss_and_gradients(
    tiny_replica, family: str, dropout: float
) -> None:  # noqa: ANN001
    path = str(tiny_replica(family))
    eager = lora_module(path, dropout=dropout)  # the adapters of q/k/v (and gate/up) read one input
    compiled = copy.deepcopy(eager)
    if dropout:  # what the pass does to the dropouts
        share_masks_per_input(decoder_layers(eager.model, eager.facts))
    fused: list[int] = []
    compile_layers(decoder_layers(compiled.model, compiled.facts), backend=_capture(fused))
    batch = chat_batch(path, n=3)
    torch.manual_seed(3)
    loss_e, grads_e = loss_and_grads(eager, batch, autocast=False)
    torch.manual_seed(3)
    loss_c, grads_c = loss_and_grads(compiled, batch, autocast=False)
    assert sum(fused) >= 1, fused
    assert loss_c == pytest.approx(loss_e, rel=1e-6)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_pass_has_a_cache_key_that_follows_its_code() -> None:
    first, second = SharedInputAdapterFusion(), SharedInputAdapterFusion()
    assert first.uuid() == second.uuid() and len(first.uuid()) == 64


def test_inductor_runs_the_pass_inside_regional_compilation() -> None:
    """Through ``compile_layers`` the pass runs inside inductor (C++ on this CPU), and the result is kept."""
    torch.manual_seed(0)
    eager = torch.nn.ModuleList(_Projections() for _ in range(2))
    compiled = copy.deepcopy(eager)
    graph_pass = SharedInputAdapterFusion()
    compile_layers(compiled, graph_pass=graph_pass)
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    out_e = sum(layer(x, y) for layer in eager)
    with uncached_compilation():  # a cached graph is served already fused, without running the pass again
        out_c = sum(layer(x, y) for layer in compiled)
    assert graph_pass.groups_fused == 1  # one graph, shared by the two layers of one class
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    for p_e, p_c in zip(eager.parameters(), compiled.parameters(), strict=True):
        if p_e.requires_grad:
            torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-4, atol=1e-5)


def test_the_start_up_line_says_the_fused_adapters_share_a_dropout_mask(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("lfm2_vl"))
    assert lora_module(path)._dropout_mask_note() == ""
    note = lora_module(path, dropout=0.1)._dropout_mask_note()
    assert "model.lora.dropout 0.1" in note and "share one dropout mask" in note
    assert "fuse_adapter_inputs false" in note
