"""Which model settings a checkpoint fixes, and which follow the command line.

A checkpoint holds trained weights of one shape: the family of its base model, the training mode and
the LoRA layout (rank, alpha, targets, ...) and which towers trained. Those settings come from the
checkpoint; giving a different value explicitly is an error, since the weights cannot fit it.
Everything else (the base model's path, generation budget, metrics, precision, compilation, price)
follows the command line / config, so ``test --ckpt_path`` can change how a model is evaluated.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from vlm_lightning.errors import UserError
from vlm_lightning.models.peft_setup import LoraSettings
from vlm_lightning.training.checkpoint_state import PROMPT_SETTINGS
from vlm_lightning.training.module import VLMFineTuner

STRUCTURE_KEYS = ("mode", "train_vision", "train_projector")
LORA_STRUCTURE_KEYS = ("r", "alpha", "targets", "vision", "use_rslora", "extra_modules_to_save")


class CheckpointSettingsError(UserError, ValueError):
    """A setting given on the command line contradicts the structure a checkpoint was trained with."""


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return {k: v for k, v in dict(value).items() if not str(k).startswith("_")}


def trained_structure(model_settings: Any) -> dict[str, Any]:
    """``{"mode": ..., "lora.r": ..., ...}``: the settings that shape the trained weights (defaults filled)."""
    settings = _as_dict(model_settings)
    signature = inspect.signature(VLMFineTuner.__init__).parameters
    structure = {key: settings.get(key, signature[key].default) for key in STRUCTURE_KEYS}
    lora = {**dataclasses.asdict(LoraSettings()), **_as_dict(settings.get("lora"))}
    structure.update({f"lora.{key}": lora[key] for key in LORA_STRUCTURE_KEYS})
    return structure


def settings_from_checkpoint(given: Any, trained: Any, ckpt_path: str) -> tuple[dict[str, Any], list[str]]:
    """The model settings to use with a checkpoint, and a line for each one the checkpoint supplied.

    ``given`` are the command line's / config's model settings, ``trained`` the checkpoint's
    ``hyper_parameters``. Returns the structure keys (with ``lora`` as a dict) to set on the config.
    Raises ``CheckpointSettingsError`` when ``given`` explicitly sets a structure value (one that differs
    from the default) that differs from the trained one.
    """
    wanted, used, default = trained_structure(given), trained_structure(trained), trained_structure({})
    if used["mode"] == "full":  # no adapter: the LoRA settings shape nothing
        for structure in (wanted, used, default):
            for key in LORA_STRUCTURE_KEYS:
                structure.pop(f"lora.{key}")
    conflicts = [
        f"model.{key}: {wanted[key]!r} (trained with {used[key]!r})"
        for key in wanted
        if wanted[key] != used[key] and wanted[key] != default[key]
    ]
    if conflicts:
        raise CheckpointSettingsError(
            f"{ckpt_path} was trained with another model structure than this run sets: "
            + "; ".join(conflicts)
            + ". These settings define the checkpoint's weights: leave them out (the checkpoint's values "
            "are used) or set them to the trained values"
        )
    supplied = [f"model.{key}: {used[key]!r}" for key in wanted if wanted[key] != used[key]]
    lora = {**dataclasses.asdict(LoraSettings()), **_as_dict(_as_dict(given).get("lora"))}
    lora.update({key: used[f"lora.{key}"] for key in LORA_STRUCTURE_KEYS if f"lora.{key}" in used})
    values: dict[str, Any] = {key: used[key] for key in STRUCTURE_KEYS}
    values["lora"] = lora
    return values, supplied


#: ``--ckpt_path`` words Lightning resolves itself (not files)
LIGHTNING_CKPT_ALIASES = ("best", "last", "hpc", "registry")


def newest_checkpoint(root: str | Path, dirpath: str | None = None, name: str = "last.ckpt") -> Path | None:
    """The newest ``name`` (``last.ckpt``, ``best.ckpt``) of the runs under ``root`` (``<root>/version_N/``),
    or in ``checkpoint.dirpath`` when one is given; None when there is none.

    Lightning resolves ``--ckpt_path last`` in the new run's own folder (a new ``version_N``): it finds
    nothing, then trains from step 0 or evaluates the base model, with a warning only; a requeued job, or
    an evaluation, means the run that wrote it."""
    found = [Path(dirpath) / name] if dirpath else sorted(Path(root).glob(f"version_*/{name}"))
    found = [path for path in found if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def evaluation_differences(ckpt: dict[str, Any], data: dict[str, Any], model: dict[str, Any]) -> list[str]:
    """The prompt / image settings and generation budget of an evaluation that differ from the training run's
    (as ``data.prompt 'A' (trained: 'B')``); empty when they agree or the checkpoint does not record them."""
    trained_data = ((ckpt.get("vlm_lightning") or {}).get("data")) or {}
    trained_model = dict(ckpt.get("hyper_parameters") or {})
    pairs = [
        (f"data.{key}", data.get(key), trained_data[key]) for key in PROMPT_SETTINGS if key in trained_data
    ]
    if "generate_max_new_tokens" in trained_model and "generate_max_new_tokens" in model:
        pairs.append(
            (
                "model.generate_max_new_tokens",
                model["generate_max_new_tokens"],
                trained_model["generate_max_new_tokens"],
            )
        )
    return [f"{name} {now!r} (trained: {then!r})" for name, now, then in pairs if now != then]


__all__ = [
    "LIGHTNING_CKPT_ALIASES",
    "CheckpointSettingsError",
    "evaluation_differences",
    "settings_from_checkpoint",
    "trained_structure",
]
