"""Regional ``torch.compile`` of a loaded (PEFT) model's repeated layers.

Compiling decoder layers changes kernels, not the computation (loss curves compared in docs/benchmarks.md).
The other speed lever, LoRA without input casts, patches PEFT: ``patches/peft_lora_cast.py``. Compilation
raises process-wide dynamo limits (listed in the ``vlm_lightning.patches`` docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from vlm_lightning.models.adapter_fusion import SharedInputAdapterFusion
from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.sliced_mlp import RECOMPUTE_MLP_SLICES, slice_decoder_mlps

log = logging.getLogger(__name__)


def repeated_layers(model: torch.nn.Module, path: str) -> torch.nn.ModuleList:
    """The repeated blocks (longest ``ModuleList``) of the submodule at ``path`` (PEFT-wrapped or not)."""
    root = None
    for name, module in model.named_modules():
        if name == path or name.endswith("." + path):
            root = module
            break
    if root is None:
        raise ValueError(f"module {path!r} not found in {type(model).__name__}")
    lists = [m for m in root.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"no list of repeated layers found under {path!r}")
    return max(lists, key=len)


def decoder_layers(model: torch.nn.Module, facts: FamilyFacts) -> torch.nn.ModuleList:
    """The language model's decoder layers."""
    return repeated_layers(model, facts.language_model)


def compile_layers(
    layers: torch.nn.ModuleList,
    dynamic: bool | None = None,
    backend: str = "inductor",
    graph_pass: CustomGraphPass | None = None,
) -> int:
    """``torch.compile`` the ``forward`` of each layer in place (regional compilation); return the count.

    Layers of one class share compiled code, so compile time grows with the number of layer classes
    and shapes, not with depth. ``forward`` rather than the module call is compiled so that wrappers
    around the call (transformers' gradient checkpointing) stay eager around compiled code.
    ``graph_pass`` (inductor only) rewrites each layer's graph before autograd is traced.
    """
    options = (
        {"pre_grad_custom_pass": graph_pass} if graph_pass is not None and backend == "inductor" else None
    )
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):  # renamed across torch versions; per-layer guards need headroom
            setattr(config, name, max(getattr(config, name), 8 * len(layers)))
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=dynamic, backend=backend, options=options)
    return len(layers)


def _compiled_forward(module: torch.nn.Module) -> object | None:
    """The ``torch.compile`` wrapper that ``compile_layers`` put on ``module`` (None if it has none)."""
    forward = module.__dict__.get("forward")
    return forward if getattr(forward, "_torchdynamo_orig_callable", None) is not None else None


@contextmanager
def uncompiled_layers(model: torch.nn.Module) -> Iterator[int]:
    """Inside the block, layers compiled by ``compile_layers`` run their class's own ``forward``.

    Generation needs this: the training-shaped regional graphs would recompile for every prefill and
    decoding shape, and transformers compiles the whole static-cache decoding step itself (its graph traces
    the plain layers). Yields how many layers were switched; the compiled wrappers are back on exit.
    """
    switched = [(module, fn) for module in model.modules() if (fn := _compiled_forward(module)) is not None]
    for module, _ in switched:
        del module.forward  # the instance attribute: the class's forward shows through
    try:
        yield len(switched)
    finally:
        for module, fn in switched:
            module.forward = fn


def compile_decoder_layers(
    model: torch.nn.Module,
    facts: FamilyFacts,
    dynamic: bool | None = None,
    backend: str = "inductor",
    recompute_activations: bool = False,
    fuse_adapter_inputs: bool = True,
) -> int:
    """Compile each language-model decoder layer; embeddings, vision tower and loss stay eager.

    Pad batches to a multiple (``data.pad_to_multiple_of``) or group them by length so that few
    shapes occur; after the second shape ``dynamic=None`` compiles a shape-generic graph.
    ``recompute_activations`` is activation checkpointing done by the compiler: each layer keeps
    only its inputs and recomputes the rest in backward (``activation_memory_budget = 0``), which
    works where transformers' checkpoint wrapper around compiled layers fails to compile.
    ``fuse_adapter_inputs``: one GEMM for the LoRA A projections that read one input
    (``models/adapter_fusion.py``; with LoRA dropout, one mask per shared input). With recomputation each
    dense MLP also runs over slices of the sequence (``models/sliced_mlp.py``: a lower backward peak).
    """
    layers = decoder_layers(model, facts)
    sliced = 0
    if recompute_activations:
        torch._functorch.config.activation_memory_budget = 0.0
        sliced = slice_decoder_mlps(layers, facts)
    graph_pass = SharedInputAdapterFusion() if fuse_adapter_inputs else None
    n = compile_layers(layers, dynamic=dynamic, backend=backend, graph_pass=graph_pass)
    log.info(
        "torch.compile: %d decoder layers (dynamic=%s, backend=%s, fused LoRA A inputs: %s, MLPs over "
        "sequence slices: %d)",
        n,
        dynamic,
        backend,
        fuse_adapter_inputs,
        sliced,
    )
    return n


def compile_vision_layers(
    model: torch.nn.Module, facts: FamilyFacts, dynamic: bool | None = None, backend: str = "inductor"
) -> int:
    """Compile each encoder layer of the vision tower (image sizes vary: shape-generic after two)."""
    n = compile_layers(repeated_layers(model, facts.vision_tower), dynamic=dynamic, backend=backend)
    log.info("torch.compile: %d vision encoder layers (dynamic=%s, backend=%s)", n, dynamic, backend)
    return n


def compile_notice(layers: int, vision: bool, recompute: bool) -> str:
    """The start-up line of a run with compiled layers: what compiles, how long it takes, how to turn it off."""
    return (
        f"[vlm_lightning] torch.compile of {layers} decoder layers"
        + (" and the vision tower's layers" if vision else "")
        + (
            f", activations recomputed by the compiler (each dense MLP over {RECOMPUTE_MLP_SLICES} sequence slices)"
            if recompute
            else ""
        )
        + ": the first steps compile (about 10-80 s on a GPU machine, minutes on a small CPU; cached on disk for "
        "later runs); --model.compile_language_model false turns it off"
    )
