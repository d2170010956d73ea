"""Inputs of the Qwen-VL families built on the CPU copy of a batch, so that the forward has fewer host syncs.

transformers builds them inside the forward from ``image_grid_thw`` and the token types, on the GPU: the
M-RoPE index (``get_rope_index``: boolean indexing, ``.tolist()`` and ``.item()`` per sample and per image)
and the vision tower's patch positions and image boundaries (``.tolist()`` of the grids, a
``repeat_interleave`` of unknown size). Each sync empties the queue of launched kernels. Given the same
tensors, transformers' own hooks skip that work:

* ``position_ids``: the model's own ``get_rope_index`` on the CPU tensors (the index it would compute);
* ``image_position_ids`` and ``image_cu_seqlens``: ``transformers.vision_utils``' getters, which the vision
  tower pops from its kwargs (``accepts_precomputed_kwargs`` strips the ``image_`` prefix).

All of them move to the GPU with the batch. (The sdpa / eager vision attention still reads the boundaries as
Python numbers in every layer, one sync each; kept on the CPU they would not be, but a CPU tensor inside the
compiled vision layers has not been run on a GPU yet.) Families opt in with ``FamilyFacts.host_rope_inputs``;
the trainer calls ``host_rope_inputs`` in ``on_before_batch_transfer`` of fit and validate batches (test and
predict only generate).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.packed_positions import rope_index_owner


def host_rope_inputs(model: torch.nn.Module, facts: FamilyFacts, inputs: dict[str, Any]) -> dict[str, Any]:
    """The model inputs to add to a CPU batch (``{}`` when the family does not opt in or nothing applies)."""
    grids = inputs.get("image_grid_thw")
    if (
        not facts.host_rope_inputs
        or not torch.is_tensor(grids)
        or grids.device.type != "cpu"
        or "mm_token_type_ids" not in inputs
        or inputs.get("video_grid_thw") is not None
    ):
        return {}
    owner = rope_index_owner(model)
    added: dict[str, Any] = {}
    if "position_ids" not in inputs:  # packed rows bring their own (models/packed_positions.py)
        with torch.no_grad():
            added["position_ids"], _ = owner.get_rope_index(
                inputs["input_ids"],
                mm_token_type_ids=inputs["mm_token_type_ids"],
                image_grid_thw=grids,
                attention_mask=inputs.get("attention_mask"),
            )
    added["image_position_ids"] = get_vision_position_ids(
        grids, owner.config.vision_config.spatial_merge_size
    )
    added["image_cu_seqlens"] = get_vision_cu_seqlens(grids)
    return added


__all__ = ["host_rope_inputs"]
