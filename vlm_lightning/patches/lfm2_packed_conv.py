"""LFM2's (and LFM3's) short convolutions made to respect sample boundaries in packed rows.

``Lfm2ShortConv`` (transformers 5.x; ``Lfm3ShortConv`` is the same module with 7 taps) runs a depthwise
causal convolution of ``conv_L_cache`` taps over the sequence; in a packed row the first taps of a sample
would read the previous sample's last tokens. transformers passes sequence boundaries (``seq_idx``) only to
the optional ``causal_conv1d`` CUDA kernel (LFM3 has no kernel path at all) and its torch path ignores them.
The method bound here takes ``seq_idx`` (each token's sample index in its row, given with packed batches)
and zeroes every tap that reaches into another sample; without ``seq_idx`` or with a cache (generation) it
calls the library's own forward. Bound per instance at the model build (like the sync-free methods:
``FamilyFacts.bind_packing_methods``, registry in ``vlm_lightning.patches``), so nothing changes for models
built elsewhere; tested against the library's forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch


def _segment_causal_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor
):  # noqa: ANN202
    """Depthwise causal conv of ``x`` (batch, channels, length) whose taps stay inside each ``seq_idx`` segment.

    Segments are coloured by ``seq_idx % taps``: a tap reaches at most ``taps - 1`` tokens back, so across at
    most ``taps - 1`` boundaries, into segments of other colours only. One ``conv1d`` per colour over the row
    with the other colours zeroed, kept at that colour's positions, gives each token the very sum the
    library's ``conv1d`` (zero left padding) gives it in its sample alone: the same arithmetic, not merely
    the same value up to rounding (a per-tap sum differed by an ulp, which LFM3's gradients amplify).
    """
    taps = weight.shape[-1]  # weight: (channels, taps); tap taps-1 reads the current token
    length = x.shape[-1]
    colour = (seq_idx % taps).unsqueeze(1)  # (batch, 1, length)
    kernel = weight.unsqueeze(1)
    out = None
    for c in range(taps):
        keep = (colour == c).to(x.dtype)
        part = torch.nn.functional.conv1d(x * keep, kernel, bias, padding=taps - 1, groups=x.shape[1])
        part = part[..., :length] * keep
        out = part if out is None else out + part
    return out


def _packed_short_conv_forward(
    self: Any,
    hidden_states: torch.Tensor,
    past_key_values: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    seq_idx = kwargs.get("seq_idx")
    if seq_idx is None or past_key_values is not None:
        return type(self).forward(self, hidden_states, past_key_values, attention_mask, **kwargs)
    projected = self.in_proj(hidden_states).transpose(-1, -2)
    gate_b, gate_c, x = projected.chunk(3, dim=-2)
    conv = _segment_causal_conv(gate_b * x, self.conv.weight.squeeze(1), self.conv.bias, seq_idx)
    return self.out_proj((gate_c * conv).transpose(-1, -2).contiguous())


# the language models' short convolutions (same forward); not LFM3-VL's vision ``Lfm3VlVisionShortConv`` (2D)
SHORT_CONV_CLASSES = ("Lfm2ShortConv", "Lfm3ShortConv")


def bind_lfm2_packed_conv(model: torch.nn.Module) -> int:
    """Bind the boundary-respecting forward to each LFM2 / LFM3 short conv in ``model``; return how many."""
    patched = 0
    for module in model.modules():
        if type(module).__name__ in SHORT_CONV_CLASSES:
            module.forward = types.MethodType(_packed_short_conv_forward, module)
            patched += 1
    return patched


__all__ = ["bind_lfm2_packed_conv"]
