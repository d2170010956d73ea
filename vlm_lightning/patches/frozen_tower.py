"""A fully frozen vision tower (projector included) keeps no graph: its ``forward`` runs under ``no_grad``.

With the tower and projector frozen and no LoRA on the tower, nothing upstream of the language model needs a
gradient, so autograd would only keep the tower's activations alive for nothing. The tower's own ``forward`` is
wrapped on the instance (``nn.Module.__call__`` runs an instance's ``forward`` attribute), at the model build
(``models/peft_setup.py: apply_training_mode``); the outputs are the same tensors, without a graph.
"""

from __future__ import annotations

import torch


def run_frozen_tower_without_autograd(tower: torch.nn.Module) -> bool:
    """Wrap ``tower.forward`` in ``torch.no_grad`` when none of its parameters trains; return whether it did."""
    if any(p.requires_grad for p in tower.parameters()):
        return False
    original = tower.forward
    tower.forward = torch.no_grad()(original)
    return True


__all__ = ["run_frozen_tower_without_autograd"]
