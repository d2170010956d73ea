"""QLoRA builds the documented 4-bit config; without CUDA it stops with a clear message (the 4-bit forward
itself is tests/gpu/test_cuda.py)."""

from __future__ import annotations

import pytest
import torch

from vlm_lightning.models.loading import ModelLoadError, load_model
from vlm_lightning.models.peft_setup import qlora_config


def test_qlora_config_is_nf4_double_quant_bf16() -> None:
    config = qlora_config()
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_qlora_without_cuda_is_a_clear_error(tiny_replica) -> None:  # noqa: ANN001
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        load_model(str(tiny_replica("qwen2_vl")), quantization=qlora_config())
