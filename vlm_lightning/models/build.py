"""The one model build: family -> processor (with the image-token budget) -> weights -> host shapes -> mode.

Training (``VLMFineTuner``), export (``export.rebuild_model``) and inference (``Predictor.load``) all call
``build_model``, so the same settings give the same module tree everywhere. What happens after it is
each caller's own: Lightning's precision plugin and compilation (``VLMFineTuner.configure_model``),
loading trained weights (export), moving to a device (inference).

The model-build patches of library methods (``vlm_lightning.patches``: LFM2 host shapes, packed short
convolutions, the frozen tower under ``no_grad``) are applied here, to this model instance only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.host_inputs import use_host_shapes
from vlm_lightning.models.loading import (
    Dtype,
    family_of,
    load_model,
    load_processor,
    with_template_end_of_turn,
)
from vlm_lightning.models.peft_setup import LoraSettings, Mode, apply_training_mode, qlora_config


@dataclass
class BuiltModel:
    """A model ready for its caller, with the processor and family facts it was built with."""

    model: torch.nn.Module
    processor: Any
    facts: FamilyFacts


def build_model(
    name_or_path: str,
    *,
    mode: Mode | None = "lora",
    lora: LoraSettings | None = None,
    train_vision: bool = False,
    train_projector: bool = False,
    gradient_checkpointing: bool = False,
    dtype: Dtype = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    image_max_tokens: int | None = None,
    image_min_tokens: int | None = None,
) -> BuiltModel:
    """Build the model for ``mode`` (``None``: the plain base, frozen, for inference / loading weights).

    The family is resolved once; ``qlora`` loads the base in 4 bits (CUDA only), other modes in ``dtype``.
    """
    facts = family_of(name_or_path, trust_remote_code)
    processor = load_processor(
        name_or_path,
        image_max_tokens=image_max_tokens,
        image_min_tokens=image_min_tokens,
        trust_remote_code=trust_remote_code,
    )
    facts = with_template_end_of_turn(facts, processor)  # the checkpoint's own template decides
    model = load_model(
        name_or_path,
        dtype=dtype,
        quantization=qlora_config() if mode == "qlora" else None,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    use_host_shapes(model, facts)  # with host_inputs on the CPU: no sync per image (else the library path)
    if facts.bind_packing_methods is not None:  # packed rows keep samples apart (unpacked: the library path)
        facts.bind_packing_methods(model)
    if mode is None:
        model.requires_grad_(False)
        return BuiltModel(model, processor, facts)
    model = apply_training_mode(
        model,
        facts,
        mode,
        lora or LoraSettings(),
        train_vision=train_vision,
        train_projector=train_projector,
        gradient_checkpointing=gradient_checkpointing,
    )
    return BuiltModel(model, processor, facts)


__all__ = ["BuiltModel", "build_model"]
