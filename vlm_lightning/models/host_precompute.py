"""Inputs of the Qwen-VL families built on the CPU copy of a batch, so that the forward has fewer host syncs.

transformers builds them inside the forward from ``image_grid_thw`` and the token types, on the GPU: the
M-RoPE index (``get_rope_index``: boolean indexing, ``.tolist()`` and ``.item()`` per sample and per image)
and the vision tower's inputs (``.tolist()`` of the grids, ``repeat_interleave`` of unknown size). Each sync
empties the queue of launched kernels. Given the same tensors, transformers' own hooks skip that work:

* ``position_ids``: the model's own ``get_rope_index`` on the CPU tensors (the index it would compute);
* ``transformers.vision_utils``' getters, which the vision tower pops from its kwargs
  (``accepts_precomputed_kwargs`` strips the ``image_`` prefix): ``image_position_ids`` and
  ``image_cu_seqlens`` (every Qwen-VL tower), ``image_window_index`` and ``image_cu_window_seqlens``
  (Qwen2.5-VL's window attention), ``image_interp_indices`` and ``image_interp_weights`` (Qwen3-VL's
  interpolated learned positions).

``HOST_KEPT`` stay on the CPU when the batch moves (``kept_on_host``): the sdpa / eager vision attention
reads the boundaries as Python numbers in every layer, and ``get_image_features`` splits the features by the
grids' sizes; on the CPU neither is a sync. (Flash attention's varlen kernel takes the boundaries on the
GPU: with it they move.) Families opt in with ``FamilyFacts.host_rope_inputs``; the trainer calls
``host_rope_inputs`` in ``on_before_batch_transfer`` of fit and validate batches (test and predict only
generate); ``model.host_built_inputs: false`` leaves it all to transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils.generic import is_flash_attention_requested
from transformers.vision_utils import (
    get_vision_cu_seqlens,
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
    get_vision_window_index,
)

from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.packed_positions import rope_index_owner

HOST_KEPT = ("image_grid_thw", "image_cu_seqlens", "image_cu_window_seqlens")


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
    added.update(vision_tower_inputs(owner.visual, grids))
    return added


def vision_tower_inputs(visual: torch.nn.Module, grids: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a Qwen-VL vision tower would compute from ``grids``, under the ``image_`` names it pops."""
    merge = visual.spatial_merge_size
    added = {
        "image_position_ids": get_vision_position_ids(grids, merge),
        "image_cu_seqlens": get_vision_cu_seqlens(grids),
    }
    if hasattr(visual, "window_size"):  # Qwen2.5-VL: attention within windows in most layers
        added["image_window_index"], added["image_cu_window_seqlens"] = get_vision_window_index(
            grids, spatial_merge_size=merge, window_size=visual.window_size, patch_size=visual.patch_size
        )
    if hasattr(visual, "num_grid_per_side"):  # Qwen3-VL: learned positions interpolated to each grid
        added["image_interp_indices"], added["image_interp_weights"] = (
            get_vision_interpolation_indices_and_weights(
                grids,
                num_grid_per_side=visual.num_grid_per_side,
                mode=visual.interpolation_mode,
                align_corners=visual.interpolation_align_corners,
                spatial_merge_size=merge,
            )
        )
    return added


def kept_on_host(model: torch.nn.Module, facts: FamilyFacts) -> tuple[str, ...]:
    """The host-built inputs (and grids) that stay on the CPU: ``HOST_KEPT``, unless the vision tower runs
    flash attention (its varlen kernel reads the boundaries on the GPU)."""
    if not facts.host_rope_inputs:
        return ()
    if is_flash_attention_requested(rope_index_owner(model).visual.config):
        return ()
    return HOST_KEPT


__all__ = ["HOST_KEPT", "host_rope_inputs", "kept_on_host", "vision_tower_inputs"]
