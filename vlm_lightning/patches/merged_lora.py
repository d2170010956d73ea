"""Generation with each LoRA projection folded into one temporary merged linear layer.

An unmerged PEFT LoRA projection runs the frozen matmul, dropout, the two adapter matmuls, a scale and an
add, plus PEFT's Python bookkeeping, for every decoded token. Decoding is bound by that per-kernel and
per-call overhead, so generation swaps each LoRA projection for a plain ``nn.Linear`` whose weight is
``W + scale * B @ A`` (summed in float32, rounded once to the weight dtype) and swaps the original modules
back afterwards. Unlike PEFT's ``merge_adapter`` / ``unmerge_adapter``, the stored base weights are never
modified, so training resumes on bit-identical weights; the cost is one extra copy of the merged weights
while generating. Applied per generate call (``generation.py: generate_batch``, a with-block).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)


def _mergeable(module: torch.nn.Module) -> bool:
    """A PEFT LoRA ``Linear`` over a plain ``nn.Linear`` whose active adapters fold into one weight."""
    from peft.tuners.lora import Linear as LoraLinear  # heavy: peft adds ~0.5 s to CLI start

    if not isinstance(module, LoraLinear) or module.merged or module.disable_adapters:
        return False
    base = module.base_layer
    if type(base) is not torch.nn.Linear:  # 4-bit / 8-bit bases keep the PEFT path
        return False
    weight = base.weight
    if type(weight.data) is not torch.Tensor or weight.shape != (base.out_features, base.in_features):
        return False  # sharded (FSDP / DTensor) or flattened weights: merging needs the whole matrix
    active = [a for a in module.active_adapters if a in module.lora_A]
    if not active:
        return False
    uses_dora = any(module.use_dora.get(a, False) for a in active)
    uses_bias = any(getattr(module, "lora_bias", {}).get(a, False) for a in active)
    return not uses_dora and not uses_bias


def _device_room(device: torch.device) -> int | None:
    """Bytes that can still be allocated on a CUDA device (free + cached by torch); None elsewhere."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _fits_in_memory(weights: list[torch.Tensor]) -> bool:
    """Whether merged copies of ``weights`` (plus one float32 working copy) fit on their device; logs why not."""
    room = _device_room(weights[0].device)
    if room is None:
        return True
    needed = sum(w.numel() * w.element_size() for w in weights) + 4 * max(w.numel() for w in weights)
    if needed + (256 << 20) <= room:
        return True
    log.warning(
        "generation keeps the LoRA adapter path: merged weights need %.1f GiB, %.1f GiB is free",
        needed / 2**30,
        room / 2**30,
    )
    return False


@torch.no_grad()
def _merged_linear(module: torch.nn.Module) -> torch.nn.Linear:
    """A new ``nn.Linear`` computing base + active adapters; the bias is shared with the base layer."""
    base = module.base_layer
    weight = base.weight.to(torch.float32, copy=True)
    for adapter in module.active_adapters:
        if adapter in module.lora_A:
            weight += module.get_delta_weight(adapter).float()
    merged = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
    merged.weight = torch.nn.Parameter(weight.to(base.weight.dtype), requires_grad=False)
    if base.bias is not None:
        merged.bias = base.bias
    return merged


@contextmanager
def merged_lora(model: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Inside the block, every mergeable LoRA projection of ``model`` is a merged ``nn.Linear``.

    Yields how many projections were swapped (0 for a model without LoRA, a quantized base,
    ``enabled=False``, or when the merged copies would not fit in free GPU memory); the original modules
    are restored on exit, also after an exception.
    """
    swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    if enabled:
        targets = [
            (parent, name, child)
            for parent in model.modules()
            for name, child in parent.named_children()
            if _mergeable(child)
        ]
        if targets and not _fits_in_memory([child.base_layer.weight for _, _, child in targets]):
            targets = []
        try:
            for parent, name, child in targets:
                setattr(parent, name, _merged_linear(child))
                swaps.append((parent, name, child))
        except BaseException:
            for parent, name, child in reversed(swaps):
                setattr(parent, name, child)
            raise
    try:
        yield len(swaps)
    finally:
        for parent, name, child in reversed(swaps):
            setattr(parent, name, child)
