"""Decoder MLPs run over slices of the sequence while the compiler recomputes activations.

With ``gradient_checkpointing`` on a compiled language model (``acceleration.compile_decoder_layers``,
``recompute_activations``) each layer keeps only its input and recomputes the rest in backward. The peak of a
step is then the backward of one layer's MLP: its recomputed ``(tokens, intermediate)`` projections and their
gradients, about eleven such tensors at once on LFM2-VL-1.6B (88 MiB each at 5,632 tokens: ~1 GiB of a 4.8 GiB
peak, measured with ``torch.cuda.memory`` history). An MLP acts on every token on its own, so running it over
``slices`` pieces of the sequence and concatenating gives the same numbers (up to GEMM rounding), while the
compiler's peak-memory scheduling can finish one slice's backward before the next slice's recomputation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vlm_lightning.models.families import FamilyFacts

#: how many pieces of the sequence a decoder MLP runs over under compiler recomputation
RECOMPUTE_MLP_SLICES = 4
#: sequences shorter than this many positions run whole (slicing them saves nothing worth a smaller GEMM)
MIN_SLICED_POSITIONS = 256


def sliced_forward(forward: Callable[..., torch.Tensor], slices: int) -> Callable[..., torch.Tensor]:
    """``forward(hidden_states)`` run on ``slices`` pieces of dim 1 (the sequence), concatenated back.

    Only with autograd recording: slicing lowers the backward's peak, so a forward without one (generation,
    validation loss) runs whole, with its larger GEMMs.
    """

    def run(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        short = hidden_states.dim() < 3 or hidden_states.shape[1] < max(slices, MIN_SLICED_POSITIONS)
        if short or not torch.is_grad_enabled():
            return forward(hidden_states, *args, **kwargs)
        parts = [forward(part, *args, **kwargs) for part in hidden_states.tensor_split(slices, dim=1)]
        return torch.cat(parts, dim=1)

    run.sliced_forward_of = forward  # type: ignore[attr-defined]
    return run


def mlp_container(layer: torch.nn.Module, facts: FamilyFacts) -> torch.nn.Module | None:
    """The submodule holding all of ``facts.mlp_modules`` in ``layer`` (None: the layer has another MLP,
    e.g. a mixture of experts, whose per-expert token sets are not sliced)."""
    parents = {path.rpartition(".")[0] for path in facts.mlp_modules}
    if len(parents) != 1 or not (parent := parents.pop()):
        return None
    try:
        container = layer.get_submodule(parent)
        for path in facts.mlp_modules:
            layer.get_submodule(path)
    except AttributeError:
        return None
    return container


def slice_decoder_mlps(
    layers: torch.nn.ModuleList, facts: FamilyFacts, slices: int = RECOMPUTE_MLP_SLICES
) -> int:
    """Run the dense MLP of each decoder layer over ``slices`` sequence pieces (in place); return the count.

    Call before the layers are compiled, so that their graphs trace the sliced MLP. Idempotent.
    """
    if slices < 2:
        return 0
    count = 0
    for layer in layers:
        mlp = mlp_container(layer, facts)
        if mlp is None or hasattr(mlp.__dict__.get("forward"), "sliced_forward_of"):
            continue
        mlp.forward = sliced_forward(mlp.forward, slices)
        count += 1
    return count
