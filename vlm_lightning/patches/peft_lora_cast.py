"""PEFT LoRA layers that no longer cast their input to the adapter dtype (mixed precision only).

Applied once per model in ``training/module.py: VLMFineTuner.configure_model`` when the precision is
``*-mixed``; lossless there (tested on the replicas: the same loss and gradients, bit for bit on the CPU).
"""

from __future__ import annotations

import torch


def skip_lora_input_cast(model: torch.nn.Module) -> int:
    """Stop PEFT LoRA layers casting their input to the adapter dtype; return how many layers changed.

    PEFT keeps adapters in float32 and casts every bf16 activation to float32 before the adapter
    (``_cast_input_dtype``); under bf16 autocast the adapter matmul casts it straight back to bf16.
    Each LoRA projection thus writes two full-size activation copies per step (and keeps the float32
    one for backward). Only valid while autocast runs the adapters: call it for mixed precision only.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer  # heavy: peft adds ~0.5 s to CLI start

    changed = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and getattr(module, "cast_input_dtype_enabled", False):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


__all__ = ["skip_lora_input_cast"]
