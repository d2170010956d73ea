"""Reading a ``trainer.logger`` value: its logger entries, their class names and constructor arguments.

A ``trainer.logger`` value may be a parsed config (dicts or jsonargparse namespaces), a list of them,
``True`` / ``False`` / ``None``, or instantiated loggers; the tracking checks see each through these
helpers. ``TrackingConfigError`` is the error for a logger configuration that cannot work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlm_lightning.errors import UserError


class TrackingConfigError(UserError, ValueError):
    """The logger configuration cannot work as given (no W&B key, or a credential in the config)."""


def plain(obj: Any) -> Any:
    """jsonargparse ``Namespace`` -> dict (recursively); other objects unchanged."""
    if hasattr(obj, "as_dict") and callable(obj.as_dict) and type(obj).__name__ == "Namespace":
        return obj.as_dict()
    return obj


def logger_entries(logger_cfg: Any) -> list[Any]:
    """The ``trainer.logger`` value as a list of logger entries (config dicts or logger objects)."""
    logger_cfg = plain(logger_cfg)
    if logger_cfg is None or isinstance(logger_cfg, bool):
        return []
    if isinstance(logger_cfg, (list, tuple)):
        return [plain(e) for e in logger_cfg if e is not None and not isinstance(e, bool)]
    return [logger_cfg]


def logger_class_name(entry: Any) -> str:
    """The class path of a logger entry (``class_path`` of a config, or the instance's class)."""
    if isinstance(entry, Mapping):
        return str(entry.get("class_path") or "")
    if isinstance(entry, str):
        return entry
    return f"{type(entry).__module__}.{type(entry).__qualname__}"


def logger_init_args(entry: Any) -> dict[str, Any]:
    """Constructor arguments of a logger entry (config dict or an instantiated logger)."""
    if isinstance(entry, Mapping):
        args = entry.get("init_args") or {}
        return dict(plain(args)) if isinstance(plain(args), Mapping) else {}
    if hasattr(entry, "_wandb_init"):  # lightning's WandbLogger keeps wandb.init's arguments
        return {"offline": getattr(entry, "_offline", False), **entry._wandb_init}
    return {}


def is_wandb(entry: Any) -> bool:
    """True for a ``WandbLogger`` entry (class path or instance)."""
    return "wandb" in logger_class_name(entry).lower()


__all__ = [
    "TrackingConfigError",
    "is_wandb",
    "logger_class_name",
    "logger_entries",
    "logger_init_args",
    "plain",
]
