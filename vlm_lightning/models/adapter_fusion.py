"""One GEMM for the LoRA A projections that read the same input (q/k/v; gate/up): a graph pass of the compiler.

A decoder layer's LoRA adapters on ``q_proj``, ``k_proj`` and ``v_proj`` (and on the MLP's gate and up
projections) each multiply the same activation by their own ``A`` matrix: three small GEMMs forward and six
backward where one of each would do. Regional compilation hands each layer's graph to inductor; this pass
rewrites it before autograd is traced: ``linear(x, A_1) ... linear(x, A_n)`` become
``split(linear(x, cat([A_1 ... A_n])))``. The same products in one kernel: equal up to the GEMM's rounding.

Only projections that can gain are fused: no bias, a trainable weight at most a quarter as tall as it is wide
(a low-rank ``A``; the frozen or full-size base weights are left alone, their concatenation would copy
megabytes per step), and the very same input node, with 16 / 32-bit mixed precision (no per-adapter input
cast). With ``lora.dropout`` above 0 PEFT gives each adapter its own dropout of the input (one mask each);
the pass first merges the dropouts of one input that feed only low-rank projections into one (one mask
shared by q/k/v, one by gate/up: what LoRA on a fused ``qkv`` projection does, in PEFT on Phi-3 and in
Megatron / NeMo), then fuses. Each adapter still sees its input dropped at rate ``p``; only the masks'
independence across sibling adapters goes. ``model.fuse_adapter_inputs: false`` keeps PEFT's masks and
GEMMs (a batched GEMM over separately dropped inputs was tried and not kept: docs/benchmarks.md, session 12).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import operator
from collections import defaultdict

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

log = logging.getLogger(__name__)

_LINEAR_TARGETS = (torch._C._nn.linear, torch.nn.functional.linear)


def _example(node: torch.fx.Node) -> torch.Tensor | None:
    value = node.meta.get("example_value", node.meta.get("val"))
    return value if isinstance(value, torch.Tensor) else None


def _low_rank_weight(node: torch.fx.Node) -> torch.fx.Node | None:
    """The weight node of a bias-free ``linear`` whose trainable weight is a low-rank ``A`` (else None)."""
    if node.op != "call_function" or node.target not in _LINEAR_TARGETS:
        return None
    args = list(node.args) + [None] * 3
    weight = args[1] if args[1] is not None else node.kwargs.get("weight")
    bias = args[2] if args[2] is not None else node.kwargs.get("bias")
    if (
        bias is not None
        or not isinstance(weight, torch.fx.Node)
        or weight.op not in ("placeholder", "get_attr")
    ):
        return None
    value = _example(weight)
    if value is None or value.ndim != 2 or not value.requires_grad or value.shape[0] * 4 > value.shape[1]:
        return None
    return weight


def _input(node: torch.fx.Node) -> object:
    return node.args[0] if node.args else node.kwargs.get("input")


def _dropout_key(node: torch.fx.Node) -> tuple | None:
    """``(input, p, training)`` of an out-of-place functional dropout node (else None)."""
    if node.op != "call_function" or node.target is not torch.nn.functional.dropout:
        return None
    names = ("input", "p", "training", "inplace")
    values = dict(zip(names, (None, 0.5, True, False), strict=True))
    values.update(zip(names, node.args, strict=False))
    values.update(node.kwargs)
    if values["inplace"] or not isinstance(values["input"], torch.fx.Node):
        return None
    return values["input"], float(values["p"]), bool(values["training"])


def share_dropout_masks(graph: torch.fx.Graph) -> int:
    """Merge the dropouts of one input that feed only low-rank projections into one; return those removed."""
    first: dict[tuple, torch.fx.Node] = {}
    removed = 0
    for node in list(graph.nodes):
        key = _dropout_key(node)
        if (
            key is None
            or not node.users
            or not all(_low_rank_weight(user) is not None for user in node.users)
        ):
            continue
        if key not in first:
            first[key] = node
            continue
        node.replace_all_uses_with(first[key])
        graph.erase_node(node)
        removed += 1
    return removed


def _groups(graph: torch.fx.Graph) -> dict[torch.fx.Node, list[tuple[torch.fx.Node, torch.fx.Node]]]:
    """Low-rank projections keyed by the input node they read."""
    groups: dict[torch.fx.Node, list[tuple[torch.fx.Node, torch.fx.Node]]] = defaultdict(list)
    for node in graph.nodes:
        weight = _low_rank_weight(node)
        source = _input(node)
        if weight is not None and isinstance(source, torch.fx.Node):
            groups[source].append((node, weight))
    return groups


def _replace(
    graph: torch.fx.Graph, members: list[tuple[torch.fx.Node, torch.fx.Node]], parts: torch.fx.Node
) -> None:
    """Point each fused projection's users at its slice of ``parts`` and erase the projection."""
    for index, (node, _) in enumerate(members):
        with graph.inserting_after(parts):
            part = graph.call_function(operator.getitem, (parts, index))
        part.meta.update(node.meta)
        node.replace_all_uses_with(part)
        graph.erase_node(node)


def _fuse_shared(graph: torch.fx.Graph, source: torch.fx.Node, members: list, weights: list) -> None:
    """One input: ``split(linear(x, cat(A_i)))``."""
    with graph.inserting_before(members[0][0]):
        stacked = graph.call_function(torch.cat, ([w for _, w in members],), {"dim": 0})
        stacked.meta["example_value"] = torch.cat(weights, dim=0)
        product = graph.call_function(torch._C._nn.linear, (source, stacked))
        parts = graph.call_function(torch.split, (product, [w.shape[0] for w in weights]), {"dim": -1})
    _replace(graph, members, parts)


def fuse_shared_input_projections(graph: torch.fx.Graph) -> int:
    """Rewrite each group of low-rank projections of one input (after ``share_dropout_masks``) into one GEMM;
    return the groups fused."""
    share_dropout_masks(graph)
    fused = 0
    for source, members in _groups(graph).items():
        weights = [_example(w) for _, w in members]
        if len(members) < 2 or len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
            continue
        _fuse_shared(graph, source, members, weights)
        fused += 1
    if fused:
        graph.lint()
        log.debug("fused %d groups of LoRA A projections that share an input", fused)
    return fused


class SharedInputAdapterFusion(CustomGraphPass):
    """``fuse_shared_input_projections`` as inductor's ``pre_grad_custom_pass`` (with a cache key)."""

    def __init__(self) -> None:
        self.groups_fused = 0

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.groups_fused += fuse_shared_input_projections(graph)

    def uuid(self) -> str:
        """Changes when this module's code does, so inductor's cache never serves another pass's graph."""
        source = inspect.getsource(inspect.getmodule(SharedInputAdapterFusion))
        return hashlib.sha256(source.encode()).hexdigest()
