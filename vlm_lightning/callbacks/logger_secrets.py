"""Credentials never reach a config: logger arguments named like a credential are refused.

A logger argument named like a credential (``api_key``, ``settings.api_key``, ``api_token``, ...) is
refused with a message to use the environment, so the resolved ``config.yaml`` that LightningCLI saves
cannot contain one: ``refuse_secret_arguments`` checks the command line and ``--config`` files before
parsing, ``secret_arguments`` finds them in a parsed logger config (used by ``check_logger_config``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vlm_lightning.callbacks.logger_entries import (
    TrackingConfigError,
    logger_class_name,
    logger_entries,
    plain,
)

try:  # shared with the config.yaml redaction when available
    from vlm_lightning.cli.secrets import SECRET_KEY_PATTERN
except ImportError:  # pragma: no cover
    SECRET_KEY_PATTERN = re.compile(
        r"(api[_-]?key|token|secret|password|passwd|credential)s?$", re.IGNORECASE
    )

# where each logger reads its credential from when it is not an argument
ENV_HINTS: dict[str, str] = {
    "wandb": "WANDB_API_KEY",
    "comet": "COMET_API_KEY",
    "neptune": "NEPTUNE_API_TOKEN",
    "mlflow": "MLFLOW_TRACKING_TOKEN",
}


def secret_arguments(value: Any, prefix: str = "") -> list[str]:
    """Dotted names of non-empty string values under credential-like keys (``api_key``, ``token``...)."""
    value = plain(value)
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, sub in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if SECRET_KEY_PATTERN.search(str(key)) and isinstance(sub, (str, bytes)) and sub:
                found.append(name)
            else:
                found.extend(secret_arguments(sub, name))
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            found.extend(secret_arguments(sub, f"{prefix}[{i}]"))
    elif value is not None and not isinstance(value, (str, bytes, int, float, bool)):
        # an object such as wandb.Settings: look at its credential-like attributes only
        for attr in ("api_key", "api_token", "token"):
            sub = getattr(value, attr, None)
            if isinstance(sub, str) and sub:
                found.append(f"{prefix}.{attr}")
    return found


def _env_hint(class_name: str) -> str | None:
    lowered = class_name.lower()
    for tool, variable in ENV_HINTS.items():
        if tool in lowered:
            return variable
    return None


def secret_error(names: list[str], class_name: str) -> TrackingConfigError:
    """The error for credentials given as arguments ``names`` of logger ``class_name``: use the environment."""
    variable = _env_hint(class_name)
    where = ", ".join(sorted(set(names)))
    if variable:
        how = f"set {variable} in the environment or in .env instead (`export {variable}=...`)"
    else:
        known = ", ".join(f"{v} for {k}" for k, v in ENV_HINTS.items())
        how = f"set the logger's variable in the environment or in .env instead ({known})"
    return TrackingConfigError(
        f"credentials must not be passed as logger arguments ({where}): they would be saved in the run's "
        f"config.yaml. Remove them and {how}."
    )


def _option_name(token: str) -> str | None:
    if not token.startswith("--"):
        return None
    return token[2:].split("=", 1)[0]


def refuse_secret_arguments(args: Any) -> None:
    """Refuse credential-like logger options before parsing (command line tokens and ``--config`` files).

    jsonargparse would reject ``--trainer.logger.init_args.api_key`` with an obscure union error and
    accept ``--trainer.logger.init_args.settings.api_key`` (then save it in ``config.yaml``); both get
    the same clear message here. ``args`` is the CLI's argument list (``None``: ``sys.argv[1:]``); dicts
    and namespaces are checked by ``check_logger_config`` after parsing.
    """
    if args is None:
        args = sys.argv[1:]
    if not isinstance(args, (list, tuple)):
        return
    tokens = [str(a) for a in args]
    logger_class = ""
    for i, token in enumerate(tokens):
        if _option_name(token) in ("trainer.logger", "trainer.logger.class_path"):
            logger_class = (
                token.split("=", 1)[1] if "=" in token else tokens[i + 1] if i + 1 < len(tokens) else ""
            )
    for i, token in enumerate(tokens):
        name = _option_name(token)
        if name is None:
            continue
        value = token.split("=", 1)[1] if "=" in token else (tokens[i + 1] if i + 1 < len(tokens) else "")
        if name.startswith("trainer.logger"):
            leaf = name.rsplit(".", 1)[-1]
            if SECRET_KEY_PATTERN.search(leaf):
                raise secret_error([name], logger_class or name)
            if value.lstrip().startswith(("{", "[")):
                _check_yaml_text(value, name)
        elif name == "config" and value and Path(value).is_file():
            _check_config_file(Path(value))


def _check_yaml_text(text: str, where: str) -> None:
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    for entry in logger_entries(loaded):
        names = secret_arguments(entry if isinstance(entry, Mapping) else {}, where)
        if names:
            raise secret_error(names, logger_class_name(entry))


def _check_config_file(path: Path) -> None:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # jsonargparse reports unreadable configs itself
    if not isinstance(loaded, Mapping):
        return
    for section in (
        loaded,
        loaded.get("fit"),
        loaded.get("test"),
        loaded.get("validate"),
        loaded.get("predict"),
    ):
        trainer = section.get("trainer") if isinstance(section, Mapping) else None
        if isinstance(trainer, Mapping) and trainer.get("logger") is not None:
            for entry in logger_entries(trainer["logger"]):
                if isinstance(entry, Mapping):
                    names = secret_arguments(entry, f"{path}: trainer.logger")
                    if names:
                        raise secret_error(names, logger_class_name(entry))


__all__ = ["ENV_HINTS", "SECRET_KEY_PATTERN", "refuse_secret_arguments", "secret_arguments", "secret_error"]
