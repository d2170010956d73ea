"""A family's ``host_inputs``: model inputs kept on the CPU when a batch moves to the GPU, and the model
methods that read them there (bound at the model build; the methods are in ``patches/lfm2_host_shapes.py``)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from vlm_lightning.models.families import FamilyFacts

log = logging.getLogger(__name__)


def split_host_inputs(
    inputs: dict[str, Any], facts: FamilyFacts, also: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``inputs`` split into (what moves to the GPU, what stays on the CPU: the family's ``host_inputs`` and
    the keys in ``also``)."""
    host = {k: v for k, v in inputs.items() if k in facts.host_inputs or k in also}
    return {k: v for k, v in inputs.items() if k not in host}, host


def use_host_shapes(model: torch.nn.Module, facts: FamilyFacts) -> int:
    """Bind the family's sync-free methods (``FamilyFacts.bind_host_shape_methods``); return the count."""
    if facts.bind_host_shape_methods is None:
        return 0
    patched = facts.bind_host_shape_methods(model)
    log.info("sync-free image features on %d %s module(s)", patched, facts.name)
    return patched
