"""Position ids of packed rows, per family (``FamilyFacts.packed_positions``), built on the CPU.

``text``: positions restart at 0 for every sample; transformers derives the block-diagonal mask from them.
``mrope`` (Qwen2 / 2.5 / 3-VL): each sample's 3-D M-RoPE index from the model's own ``get_rope_index``, with
a text plane first (``[4, rows, width]``): transformers 5 takes the text plane for the packed mask and the
other three for the rotary embedding (``Qwen2VLTextModel.forward``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

from vlm_lightning.data.packing import segment_index, segment_positions
from vlm_lightning.models.families import FamilyFacts

_OWNERS: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()


def rope_index_owner(model: torch.nn.Module) -> Any:
    """The submodule with ``get_rope_index`` (Qwen2VLModel & co., under PEFT's and the task wrappers), found
    once per model (batches ask for it every step; the walk covers every module)."""
    if model not in _OWNERS:
        owner = next(
            (m for m in model.modules() if hasattr(m, "get_rope_index") and hasattr(m, "config")), None
        )
        if owner is None:
            raise ValueError(
                f"{type(model).__name__} has no get_rope_index: its M-RoPE positions cannot be built"
            )
        _OWNERS[model] = owner
    return _OWNERS[model]


def _image_runs(token_types: torch.Tensor) -> int:
    """How many images a segment holds: the runs of image tokens (``mm_token_type_ids == 1``)."""
    image = (token_types == 1).long()
    return int((torch.diff(image, prepend=image.new_zeros(1)) == 1).sum())


def packed_position_ids(
    model: torch.nn.Module,
    facts: FamilyFacts,
    inputs: dict[str, Any],
    segments: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Position ids for a packed batch: ``[rows, width]`` (text) or ``[4, rows, width]`` (M-RoPE)."""
    text = segment_positions(segments)
    if facts.packed_positions == "text":
        return text
    owner = rope_index_owner(model)
    input_ids, token_types = inputs["input_ids"], inputs["mm_token_type_ids"]
    grids = inputs.get("image_grid_thw")
    planes = text.unsqueeze(0).repeat(3, 1, 1)  # text-only segments (and padding): plain positions
    used = 0
    for r, row in enumerate(segments):
        start = 0
        for n in row:
            types = token_types[r, start : start + n]
            images = _image_runs(types)
            if images:
                with torch.no_grad():
                    positions, _ = owner.get_rope_index(
                        input_ids[r, start : start + n].unsqueeze(0),
                        mm_token_type_ids=types.unsqueeze(0),
                        image_grid_thw=grids[used : used + images],
                        attention_mask=None,
                    )
                planes[:, r, start : start + n] = positions[:, 0].to(planes.dtype)
                used += images
            start += n
    return torch.cat([text.unsqueeze(0), planes], dim=0)


#: attention kernels that keep packed samples apart in rows of any count: transformers builds their block mask
#: from the restarting positions (``masking_utils.find_packed_sequence_indices``; tested per family on both)
PACKING_ATTENTION = ("sdpa", "eager")


def packing_attention_problem(attn_implementation: str | None) -> str | None:
    """Why ``data.packing`` cannot use this attention kernel (``None``: it can; ``None`` in = the model's
    default, sdpa or eager). transformers' flash-attention path reads sample boundaries from the positions
    only for a batch of one row (``_is_packed_sequence``): with more rows samples would attend to each other."""
    if attn_implementation is None or attn_implementation in PACKING_ATTENTION:
        return None
    return (
        f"model.attn_implementation {attn_implementation!r} does not keep packed samples apart in transformers "
        f"(only {' and '.join(PACKING_ATTENTION)} build the per-sample mask for every row). Set "
        "--model.attn_implementation sdpa, or --data.packing false"
    )


def packed_inputs(
    model: torch.nn.Module, facts: FamilyFacts, inputs: dict[str, Any], segments: Sequence[Sequence[int]]
) -> dict[str, torch.Tensor]:
    """What a packed batch adds to the model inputs: ``position_ids``, and ``seq_idx`` where the family needs it."""
    added = {"position_ids": packed_position_ids(model, facts, inputs, segments)}
    if facts.packed_seq_idx:
        added["seq_idx"] = segment_index(segments)
    return added


__all__ = [
    "PACKING_ATTENTION",
    "packed_inputs",
    "packed_position_ids",
    "packing_attention_problem",
    "rope_index_owner",
]
