"""An evaluation names the prompt / image / budget settings that differ from the checkpoint's training run."""

from __future__ import annotations

import pytest
import torch

from vlm_lightning.checkpoints.settings import evaluation_differences


def test_only_recorded_settings_that_differ_are_named() -> None:
    ckpt = {
        "vlm_lightning": {"data": {"prompt": "Read this receipt.", "image_max_tokens": 64, "system": None}},
        "hyper_parameters": {"generate_max_new_tokens": 200},
    }
    data = {"prompt": "Extract the information.", "image_max_tokens": 64, "system": None}
    assert evaluation_differences(ckpt, data, {"generate_max_new_tokens": 256}) == [
        "data.prompt 'Extract the information.' (trained: 'Read this receipt.')",
        "model.generate_max_new_tokens 256 (trained: 200)",
    ]
    same = {"prompt": "Read this receipt.", "image_max_tokens": 64, "system": None}
    assert evaluation_differences(ckpt, same, {"generate_max_new_tokens": 200}) == []
    assert evaluation_differences({}, data, {"generate_max_new_tokens": 256}) == []  # nothing recorded


def test_adapter_weights_of_another_size_are_refused_naming_the_trained_base(tiny_replica) -> None:  # noqa: ANN001
    """A base model of the same family but another size (SmolVLM 256M vs 500M): one message naming the base
    the checkpoint was trained from, not the state-dict size-mismatch traceback."""
    from fit_helpers import lora_module

    from vlm_lightning.training.checkpoint_state import CheckpointMismatchError

    module = lora_module(str(tiny_replica("qwen2_vl")))
    state = {
        n: torch.zeros(*p.shape[:-1], p.shape[-1] + 1)
        for n, p in module.named_parameters()
        if p.requires_grad
    }
    info = {"family": module.facts.name, "mode": "lora", "name_or_path": "org/other-size"}
    with pytest.raises(
        CheckpointMismatchError, match=r"other shapes than this model's .*trained from org/other-size"
    ):
        module.on_load_checkpoint({"vlm_lightning": info, "state_dict": state})
    same = {n: torch.zeros(p.shape) for n, p in module.named_parameters() if p.requires_grad}
    module.on_load_checkpoint({"vlm_lightning": info, "state_dict": same})  # the right shapes: accepted
