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


@pytest.mark.parametrize(("family", "explicit"), [("qwen2_vl", None), ("qwen2_vl", True), ("lfm2_vl", None)])
def test_packed_rows_run_a_per_image_vision_tower_eager_unless_its_compilation_is_asked_for(
    family: str,
    explicit: bool | None,
    tiny_replica,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from types import SimpleNamespace

    from vlm_lightning.training.module import VLMFineTuner

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # where compilation is on by default
    module = VLMFineTuner(str(tiny_replica(family)), metrics=["exact_match"], compile_vision_tower=explicit)
    assert module.compiled_layers and module.compiled_vision
    packed = SimpleNamespace(datamodule=SimpleNamespace(hparams={"packing": True}), is_global_zero=True)
    monkeypatch.setattr(VLMFineTuner, "trainer", property(lambda self: packed))
    module._trainer = packed
    module._eager_vision_for_packing()
    assert module.compiled_layers  # the decoder layers do not recompile on packed rows: they stay compiled
    if family == "lfm2_vl":  # a batch of images: one shape-generic graph for every image count, compiled
        assert module.compiled_vision and "runs eager" not in capsys.readouterr().out
    elif explicit is None:
        assert not module.compiled_vision
        assert "data.packing: the vision tower runs eager (qwen2_vl's" in capsys.readouterr().out
    else:  # asked for: compiled
        assert module.compiled_vision


@pytest.mark.parametrize("cuda", [False, True])
def test_dataloader_workers_default_to_the_cpus_per_process_on_cuda(
    cuda: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without workers the main process decodes images and runs the processor between GPU steps (measured:
    LFM2-VL-1.6B `fit` 40.5 -> 64.2 samples/s with the default workers, docs/benchmarks.md)."""
    from types import SimpleNamespace

    from vlm_lightning.data.loaders import DEFAULT_MAX_WORKERS, workers_for

    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert workers_for(3) == 3 and workers_for(0) == 0  # an explicit setting always wins
    if not cuda:
        assert workers_for(None) == 0  # workers would compete with training for the CPU's cores
        return
    assert workers_for(None) == min(DEFAULT_MAX_WORKERS, 15)
    assert workers_for(None, SimpleNamespace(num_devices=4)) == 3  # 16 CPUs shared by 4 processes
    assert workers_for(None, SimpleNamespace(num_devices=32)) == 1  # at least one
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert workers_for(None) == 1


@pytest.mark.parametrize("explicit", [None, True])
def test_compilation_on_a_platform_that_cannot_compile(
    explicit: bool | None, tiny_replica, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:  # noqa: ANN001
    """Asked for: a SettingError naming the setting before the model loads; the default: eager, warned."""
    from vlm_lightning.errors import SettingError
    from vlm_lightning.models import compile_support
    from vlm_lightning.training.module import VLMFineTuner

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr(compile_support.torch.utils._triton, "has_triton_package", lambda: False)
    loads: list[str] = []
    monkeypatch.setattr(
        "vlm_lightning.training.module.build_model", lambda *a, **k: loads.append("load") or 1 / 0
    )
    if explicit:
        with pytest.raises(SettingError, match=r"model\.compile_language_model: true, but .*Triton"):
            VLMFineTuner(str(tiny_replica("qwen2_vl")), compile_language_model=True)
        assert loads == []  # before the model loads
        return
    monkeypatch.undo()
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr(compile_support.torch.utils._triton, "has_triton_package", lambda: False)
    with caplog.at_level("WARNING"):
        module = VLMFineTuner(str(tiny_replica("qwen2_vl")))
    assert not module.compiled_layers and not module.compiled_vision
    assert "needs Triton" in caplog.text


def test_compile_problem_reads_the_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlm_lightning.models import compile_support

    assert compile_support.compile_problem(cuda=False) is None  # this machine builds C++ (CI has g++)
    monkeypatch.setattr(
        compile_support.cpp_builder, "get_cpp_compiler", lambda: (_ for _ in ()).throw(RuntimeError("no g++"))
    )
    assert "C++ compiler" in compile_support.compile_problem(cuda=False)
    monkeypatch.setattr(compile_support.torch._dynamo, "is_dynamo_supported", lambda: False)
    assert "does not support" in compile_support.compile_problem(cuda=True)


@pytest.mark.parametrize(("setting", "static"), [("auto", False), ("static", True), ("dynamic", False)])
def test_evaluation_generation_asks_for_the_cache_the_setting_resolves_to(
    setting: str, static: bool, tiny_replica, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:  # noqa: ANN001
    import torch

    from vlm_lightning.training.module import VLMFineTuner

    module = VLMFineTuner(str(tiny_replica("qwen2_vl")), metrics=["exact_match"], generation_cache=setting)
    asked: list[dict] = []

    def recording_generate(*args: object, **kwargs: object) -> tuple[list[str], torch.Tensor]:
        asked.append(kwargs)
        return ["x"], torch.zeros(1, 1, dtype=torch.long)

    monkeypatch.setattr("vlm_lightning.training.evaluation_steps.generate_batch", recording_generate)
    for _ in range(2):
        module.generate({"generation_inputs": {}})
    assert [call["static_cache"] for call in asked] == [static, static]  # auto on the CPU: dynamic
    assert asked[0]["max_new_tokens"] == module.hparams.generate_max_new_tokens
    said = capsys.readouterr().out.count("generation: static cache")
    assert said == (1 if static else 0)  # said once per run


def test_a_smaller_last_batch_keeps_the_dynamic_cache_under_auto(
    tiny_replica, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    import torch

    from vlm_lightning.training.module import VLMFineTuner

    module = VLMFineTuner(str(tiny_replica("qwen2_vl")), metrics=["exact_match"])
    asked: list[bool] = []

    def recording_generate(*args: object, **kwargs: object) -> tuple[list[str], torch.Tensor]:
        asked.append(kwargs["static_cache"])
        return ["x"], torch.zeros(1, 1, dtype=torch.long)

    monkeypatch.setattr("vlm_lightning.training.evaluation_steps.generate_batch", recording_generate)
    monkeypatch.setattr("vlm_lightning.generation.uses_static_cache", lambda *a: True)  # CUDA
    for rows in (4, 4, 2):
        module.generate({"generation_inputs": {"input_ids": torch.zeros(rows, 3, dtype=torch.long)}})
    assert asked == [True, True, False]  # the last, smaller batch: no second compilation
    module.hparams.generation_cache = "static"  # asked for: every batch
    module.generate({"generation_inputs": {"input_ids": torch.zeros(2, 3, dtype=torch.long)}})
    assert asked[-1] is True


def test_metrics_may_be_one_name_or_a_comma_list_and_the_budget_must_be_positive(tiny_replica) -> None:  # noqa: ANN001
    from vlm_lightning.errors import SettingError
    from vlm_lightning.metrics import metric_names
    from vlm_lightning.training.module import VLMFineTuner

    assert metric_names("anls") == ["anls"] and metric_names("json, exact_match") == ["json", "exact_match"]
    assert metric_names(None) == ["exact_match"] and metric_names(["cer"]) == ["cer"]
    path = str(tiny_replica("qwen2_vl"))
    module = VLMFineTuner(path, metrics="anls")
    assert module.hparams.metrics == ["anls"] and list(module.val_metrics.metrics) == ["anls"]
    with pytest.raises(SettingError, match="model.generate_max_new_tokens must be >= 1, got 0"):
        VLMFineTuner(path, generate_max_new_tokens=0)
