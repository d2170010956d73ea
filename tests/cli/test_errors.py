"""One base for user mistakes: the command line catches ``UserError`` once and prints one line."""

from __future__ import annotations

import pytest

from vlm_lightning.callbacks.nonfinite import NonFiniteLossError
from vlm_lightning.callbacks.tracking import TrackingConfigError
from vlm_lightning.checkpoints.io import CheckpointError
from vlm_lightning.checkpoints.settings import CheckpointSettingsError
from vlm_lightning.cli.lightning_cli import _user_errors
from vlm_lightning.data.collator import SampleTooLongError
from vlm_lightning.data.datamodule import ImageLoadError
from vlm_lightning.data.leakage import LeakageError
from vlm_lightning.data.masking import TemplateMismatchError
from vlm_lightning.data.records import DataValidationError
from vlm_lightning.data.sources import HubUnreachableError
from vlm_lightning.deploy.export import ExportError
from vlm_lightning.errors import SettingError, UserError
from vlm_lightning.models.families import UnknownFamilyError
from vlm_lightning.models.loading import ModelLoadError
from vlm_lightning.training.module import CheckpointMismatchError

USER_ERRORS = [
    NonFiniteLossError, TrackingConfigError, CheckpointError, CheckpointSettingsError, SampleTooLongError,
    ImageLoadError, LeakageError, TemplateMismatchError, DataValidationError, HubUnreachableError, ExportError,
    SettingError, UnknownFamilyError, ModelLoadError, CheckpointMismatchError,
]  # fmt: skip


@pytest.mark.parametrize("kind", USER_ERRORS, ids=lambda k: k.__name__)
def test_every_user_error_is_a_user_error_and_keeps_its_builtin_kind(kind: type[Exception]) -> None:
    assert issubclass(kind, UserError)
    assert any(
        base is not UserError and issubclass(kind, base)
        for base in (ValueError, OSError, RuntimeError, ArithmeticError)
    )


def test_the_cli_catches_the_base_once() -> None:
    assert _user_errors() == (UserError, FileNotFoundError)
    assert not issubclass(KeyError, UserError)  # a bug stays a traceback


def test_an_attention_kernel_the_model_lacks_names_the_setting(tiny_replica) -> None:  # noqa: ANN001
    from vlm_lightning.models.loading import ModelLoadError, load_model

    with pytest.raises(
        ModelLoadError, match=r"does not support .*flex_attention.*--model.attn_implementation sdpa"
    ):
        load_model(str(tiny_replica("qwen2_vl")), attn_implementation="flex_attention")


def test_a_mistyped_relative_folder_is_named_as_a_folder_and_a_hub_id(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    from vlm_lightning.models.loading import ModelLoadError, load_processor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=rf"'models/nope' is no folder here \(from {tmp_path}\)"):
        load_processor("models/nope")
