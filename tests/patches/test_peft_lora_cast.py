"""PEFT's LoRA input cast switched off under mixed precision (``patches/peft_lora_cast.py``): same results."""

from __future__ import annotations

import torch
from fixtures_data import chat_batch
from peft.tuners.tuners_utils import BaseTunerLayer

from vlm_lightning.models.peft_setup import LoraSettings
from vlm_lightning.patches.peft_lora_cast import skip_lora_input_cast
from vlm_lightning.training.module import VLMFineTuner


def _lora_module(path: str) -> VLMFineTuner:
    torch.manual_seed(0)
    module = VLMFineTuner(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0), metrics=["exact_match"])
    with torch.no_grad():  # non-zero lora_B so the adapters change the output
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return module


def _loss_and_grads(
    module: VLMFineTuner, batch: dict, autocast: bool
) -> tuple[float, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, _, _ = module.model_step(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.item(), grads


def test_skipping_lora_input_cast_keeps_loss_and_grads_under_bf16_autocast(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("qwen2_vl"))
    module = _lora_module(path)
    batch = chat_batch(path, n=2)
    loss_cast, grads_cast = _loss_and_grads(module, batch, autocast=True)
    changed = skip_lora_input_cast(module.model)
    lora_layers = [m for m in module.model.modules() if isinstance(m, BaseTunerLayer)]
    assert changed == len(lora_layers) > 0
    assert all(not m.cast_input_dtype_enabled for m in lora_layers)
    loss_nocast, grads_nocast = _loss_and_grads(module, batch, autocast=True)
    # bf16 -> fp32 -> bf16 is lossless: the same computation, bit for bit on CPU
    assert loss_nocast == loss_cast
    assert grads_cast.keys() == grads_nocast.keys() and grads_cast
    for name in grads_cast:
        torch.testing.assert_close(grads_nocast[name], grads_cast[name], rtol=0, atol=0)
    assert skip_lora_input_cast(module.model) == 0  # idempotent
