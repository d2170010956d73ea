"""The output head made the identity for one forward: the model hands back hidden states as ``logits``.

``training/loss.py: causal_lm_loss`` computes the loss of a frozen plain ``nn.Linear`` head inside the chunked
``linear_cross_entropy`` (no ``(rows, vocab)`` logits kept for backward); the model's own forward still calls
``lm_head(hidden_states[:, logits_to_keep])``, so for that one call the head returns its input. Applied per
loss computation (a with-block), the instance's ``forward`` restored on exit, also after an exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def head_bypassed(head: torch.nn.Module) -> Iterator[None]:
    """Make ``head`` return its input (the model then hands back hidden states as ``logits``)."""
    previous = head.__dict__.get("forward")
    head.forward = lambda hidden, *args, **kwargs: hidden  # type: ignore[method-assign]
    try:
        yield
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


__all__ = ["head_bypassed"]
