"""PEFT's LoRA input cast switched off under mixed precision (``patches/peft_lora_cast.py``): same results."""

from __future__ import annotations

import torch
from fit_helpers import lora_module, loss_and_grads
from fixtures_data import chat_batch
from peft.tuners.tuners_utils import BaseTunerLayer

from vlm_lightning.patches.peft_lora_cast import skip_lora_input_cast


def test_skipping_lora_input_cast_keeps_loss_and_grads_under_bf16_autocast(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("qwen2_vl"))
    module = lora_module(path)
    batch = chat_batch(path, n=2)
    loss_cast, grads_cast = loss_and_grads(module, batch, autocast=True)
    changed = skip_lora_input_cast(module.model)
    lora_layers = [m for m in module.model.modules() if isinstance(m, BaseTunerLayer)]
    assert changed == len(lora_layers) > 0
    assert all(not m.cast_input_dtype_enabled for m in lora_layers)
    loss_nocast, grads_nocast = loss_and_grads(module, batch, autocast=True)
    # bf16 -> fp32 -> bf16 is lossless: the same computation, bit for bit on CPU
    assert loss_nocast == loss_cast
    assert grads_cast.keys() == grads_nocast.keys() and grads_cast
    for name in grads_cast:
        torch.testing.assert_close(grads_nocast[name], grads_cast[name], rtol=0, atol=0)
    assert skip_lora_input_cast(module.model) == 0  # idempotent
