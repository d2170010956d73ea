"""An evaluation names the prompt / image / budget settings that differ from the checkpoint's training run."""

from __future__ import annotations

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
