"""Cut the vision patch padding that NaFlex-style processors add up to their maximum patch count.

LFM2-VL's image processor (SigLIP2 NaFlex) pads every image's patch sequence to ``max_num_patches``
(``image_max_tokens`` x 4): with ``image_max_tokens: 1024`` a 512 px receipt (1,024 real patches) is
padded to 4,096, and the vision tower's attention and MLPs run on the padding. The model only reads the
mask's per-image sums (padding sits at the end), so the batch can be cut to its longest image.
"""

from __future__ import annotations

from typing import Any

import torch


def trim_patch_padding(image_tensors: dict[str, Any], multiple: int = 64) -> dict[str, Any]:
    """Return ``image_tensors`` with ``pixel_values`` / ``pixel_attention_mask`` cut to the batch's
    longest image, rounded up to ``multiple`` patches (fewer distinct shapes for compiled layers).

    Batches without a 2-D patch mask (Qwen's flattened patches, Idefics3's pixel masks, fixed-size
    towers) and masks whose padding is not all at the end are returned unchanged.
    """
    mask = image_tensors.get("pixel_attention_mask")
    values = image_tensors.get("pixel_values")
    if not torch.is_tensor(mask) or not torch.is_tensor(values) or mask.dim() != 2 or values.dim() != 3:
        return image_tensors
    if values.shape[:2] != mask.shape or mask.shape[1] == 0:
        return image_tensors
    longest = int(mask.sum(dim=1).max())
    keep = min(mask.shape[1], -(-max(longest, 1) // multiple) * multiple)
    if keep >= mask.shape[1] or bool(mask[:, keep:].any()):
        return image_tensors
    out = dict(image_tensors)
    out["pixel_values"] = values[:, :keep].contiguous()
    out["pixel_attention_mask"] = mask[:, :keep].contiguous()
    return out
