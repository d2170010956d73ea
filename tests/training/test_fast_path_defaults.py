"""The fast path's defaults resolve by device: on with CUDA, off on CPU; explicit settings always win."""

from __future__ import annotations

import pytest

from vlm_lightning.data.datamodule import DocumentDataModule
from vlm_lightning.training.module import compile_by_default


@pytest.mark.parametrize("cuda", [False, True])
def test_defaults_follow_the_device(cuda: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)
    assert compile_by_default("lora") is cuda and compile_by_default("full") is cuda
    assert compile_by_default("qlora") is False  # 4-bit layers compiled: not measured, opt in
    data = DocumentDataModule(train="t.jsonl")
    assert data.pad_to_multiple_of == (64 if cuda else None)
    assert data.group_by_length is cuda
    assert DocumentDataModule(train="t.jsonl", check_lengths=False).group_by_length is False  # needs lengths
    explicit = DocumentDataModule(train="t.jsonl", pad_to_multiple_of=None, group_by_length=False)
    assert explicit.pad_to_multiple_of is None and explicit.group_by_length is False
    assert DocumentDataModule(train="t.jsonl", pad_to_multiple_of=8).pad_to_multiple_of == 8


@pytest.mark.parametrize("explicit", [None, True])
def test_packed_rows_run_eager_unless_compilation_is_asked_for(
    explicit: bool | None, tiny_replica, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from vlm_lightning.training.module import VLMFineTuner

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # where compilation is on by default
    module = VLMFineTuner(
        str(tiny_replica("qwen2_vl")), metrics=["exact_match"], compile_language_model=explicit
    )
    assert module.compiled_layers and module.compiled_vision
    packed = SimpleNamespace(datamodule=SimpleNamespace(hparams={"packing": True}), is_global_zero=True)
    monkeypatch.setattr(VLMFineTuner, "trainer", property(lambda self: packed))
    module._trainer = packed
    module._eager_for_packing()
    if explicit is None:
        assert not module.compiled_layers and not module.compiled_vision
        assert "data.packing: the layers run eager" in capsys.readouterr().out
    else:  # asked for: compiled (the vision tower follows the language model's setting)
        assert module.compiled_layers and module.compiled_vision
