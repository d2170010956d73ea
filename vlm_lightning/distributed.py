"""Process-group facts shared by data loading, training and callbacks (no-ops without a process group)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy


def gather_lists(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` concatenated in rank order; ``items`` itself when not distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(items)
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def forward_is_collective(strategy: Any) -> bool:
    """Whether the strategy's forward passes talk to the other ranks (sharded weights gather per layer),
    so that every rank must run the same evaluation batches and decoding steps."""
    return isinstance(strategy, (ModelParallelStrategy, FSDPStrategy, DeepSpeedStrategy))


__all__ = ["forward_is_collective", "gather_lists"]
