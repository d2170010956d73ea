"""Model methods that read shapes from the CPU instead of the GPU: no host sync inside a forward.

A host sync (the CPU waiting for the GPU to answer ``.item()``, slicing by a GPU tensor, ``if tensor``)
empties the queue of launched kernels, so a training step costs host time + GPU time instead of the
larger of the two. The trainer keeps each family's ``FamilyFacts.host_inputs`` on the CPU; the methods
here use them. Each replacement is bound to one model instance, takes its fast path only when the
shapes really are on the CPU (else it calls the library's method), and gives identical outputs (tested
on the replicas). Each family names its binder in ``FamilyFacts.bind_host_shape_methods``; the model
build applies it (``models/host_inputs.py: use_host_shapes``; registry: ``vlm_lightning.patches``).

LFM2-VL (transformers 5.x ``Lfm2VlModel``):
* ``get_image_features`` cut each image's features to ``pixel_attention_mask.sum()`` (a GPU tensor:
  one sync per image); the NaFlex processor marks exactly the first ``h * w`` patches of an image with
  ``spatial_shapes = (h, w)``, so the CPU ``spatial_shapes`` give the same lengths.
* the SigLIP2 tower asked on the host whether ``pixel_attention_mask`` masks any patch (``masking_utils.
  _ignore_bidirectional_mask_sdpa``: one sync); the same shapes answer it, and the tower gets the mask the
  library would build (sdpa kernel, no pooling head; else the library's own path).
* ``get_placeholder_mask`` checked on the host that image tokens and features agree (one sync); the
  check becomes a device-side assertion (``torch._assert_async``).
"""

from __future__ import annotations

import types
from typing import Any

import torch
from transformers import masking_utils


def _lfm2_image_features(
    self: Any,
    pixel_values: torch.Tensor,
    spatial_shapes: torch.Tensor,
    pixel_attention_mask: torch.Tensor,
    **kwargs: Any,
) -> Any:
    if spatial_shapes.device.type != "cpu":
        return type(self).get_image_features(
            self, pixel_values, spatial_shapes, pixel_attention_mask, **kwargs
        )
    kwargs.pop("return_dict", None)
    outputs = self.vision_tower(
        pixel_values=pixel_values,
        spatial_shapes=spatial_shapes,
        pixel_attention_mask=_tower_mask(self.vision_tower, spatial_shapes, pixel_attention_mask),
        return_dict=True,
        **kwargs,
    )
    hidden = outputs.last_hidden_state
    features = []
    for index, (height, width) in enumerate(spatial_shapes.tolist()):
        feature = hidden[index, : height * width].reshape(1, height, width, -1)
        embedding = self.multi_modal_projector(feature)
        features.append(embedding.reshape(-1, embedding.size(-1)))
    outputs.pooler_output = features
    return outputs


def _tower_mask(
    vision_tower: Any, spatial_shapes: torch.Tensor, pixel_attention_mask: torch.Tensor
) -> torch.Tensor | None:
    """The SigLIP2 tower's attention mask, its padding question answered by the CPU ``spatial_shapes``
    (an image of ``h x w`` patches fills the first ``h * w`` of the row); the 2-D mask where that cannot be
    done here (another kernel, a pooling head that reads the 2-D mask, another tower)."""
    tower = getattr(vision_tower, "vision_model", vision_tower)  # the transformer (older releases wrap it)
    config = getattr(tower, "config", None)
    if (
        getattr(tower, "use_head", True)
        or getattr(config, "_attn_implementation", None) != "sdpa"
        or pixel_attention_mask.ndim != 2
    ):
        return pixel_attention_mask
    if not bool((spatial_shapes.prod(-1) < pixel_attention_mask.shape[1]).any()):
        return None  # every patch is real: sdpa runs without a mask, as the library decides
    shape_only = torch.empty((*pixel_attention_mask.shape, 0), device=pixel_attention_mask.device)
    return masking_utils.create_bidirectional_mask(
        config=config,
        inputs_embeds=shape_only,  # read for its batch size, length and device (sdpa masks are boolean)
        attention_mask=pixel_attention_mask,
        allow_is_bidirectional_skip=False,
    )


def _lfm2_placeholder_mask(
    self: Any, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
) -> torch.Tensor:
    if input_ids is None or input_ids.device.type == "cpu":
        return type(self).get_placeholder_mask(
            self, input_ids=input_ids, inputs_embeds=inputs_embeds, image_features=image_features
        )
    return _device_side_placeholder_mask(self, input_ids, inputs_embeds, image_features)


def _device_side_placeholder_mask(
    self: Any, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor
) -> torch.Tensor:
    """The library's mask, its token / feature count check asserted on the device (no host sync)."""
    mask = input_ids == self.config.image_token_id
    torch._assert_async(mask.sum() * inputs_embeds.shape[-1] == image_features.numel())
    return mask.unsqueeze(-1).to(inputs_embeds.device)


def bind_lfm2_vl_host_shapes(model: torch.nn.Module) -> int:
    """Bind the sync-free LFM2-VL methods to each ``Lfm2VlModel`` in ``model``; return how many."""
    patched = 0
    for module in model.modules():
        if type(module).__name__ == "Lfm2VlModel" and hasattr(module, "get_image_features"):
            module.get_image_features = types.MethodType(_lfm2_image_features, module)
            module.get_placeholder_mask = types.MethodType(_lfm2_placeholder_mask, module)
            patched += 1
    return patched


__all__ = ["bind_lfm2_vl_host_shapes"]
