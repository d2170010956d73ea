"""Gathering Python lists from every rank (a no-op without an initialised process group)."""

from __future__ import annotations

from typing import Any

import torch


def gather_lists(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` concatenated in rank order; ``items`` itself when not distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(items)
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


__all__ = ["gather_lists"]
