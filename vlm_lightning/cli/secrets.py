"""Credentials: read them from ``.env`` without overriding the environment, and keep them out of run files.

Hub and tracker tokens (``HF_TOKEN``, ``WANDB_API_KEY``, ...) are read by the libraries that need them
straight from the environment; nothing in vlm_lightning takes a token as an argument. These helpers
make sure a token that still reaches a saved config, hyper-parameters, a log line or a printed
command is replaced by ``***``:

* ``load_env_file(".env")``: fills in variables that are not already set and returns their *names*.
* ``redact(obj)``: a copy of ``obj`` (str / bytes / dict / list / tuple) with secret values replaced;
  values under secret-looking keys (``api_key``, ``token``, ``password``...) are replaced too.
* ``find_secrets(text)``: which secrets occur in a text or byte string (used by tests to scan run files).
* ``RedactingSaveConfigCallback``: LightningCLI's ``config.yaml`` writer with ``redact`` applied.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

SECRET_NAMES: tuple[str, ...] = ("HF_TOKEN", "WANDB_API_KEY", "HUGGING_FACE_HUB_TOKEN")
# config keys whose string values are credentials (``pad_token``, ``image_max_tokens``... are not)
SECRET_KEY_PATTERN = re.compile(
    r"^(?:.*[_-])?(?:api[_-]?key|api[_-]?token|access[_-]?token|auth[_-]?token|hf[_-]?token|hub[_-]?token"
    r"|secret(?:[_-]?key)?|password|passwd|credentials?)$|^token$",
    re.IGNORECASE,
)
# values that look like credentials even when no variable names them
SECRET_VALUE_PATTERNS: dict[str, re.Pattern[str]] = {
    "hf_token_pattern": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
}
REPLACEMENT = "***"
MIN_SECRET_LENGTH = 6  # shorter values would redact common substrings everywhere


def load_env_file(path: str | os.PathLike[str] = ".env", override: bool = False) -> list[str]:
    """Load ``KEY=VALUE`` lines of ``path`` (python-dotenv syntax) into ``os.environ``.

    Variables already set in the environment win unless ``override``; a missing file is not an error.
    Returns the names (never the values) of the variables that were set.
    """
    file = Path(path)
    if not file.is_file():
        return []
    loaded: list[str] = []
    for key, value in dotenv_values(file).items():
        if value is None or (key in os.environ and not override):
            continue
        os.environ[key] = value
        loaded.append(key)
    return loaded


def secret_values(
    names: Iterable[str] = SECRET_NAMES, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``{name: value}`` of the named secrets that are set (values shorter than 6 characters are ignored)."""
    env = os.environ if env is None else env
    return {n: env[n] for n in names if len(env.get(n, "")) >= MIN_SECRET_LENGTH}


def find_secrets(
    text: str | bytes,
    names: Iterable[str] = SECRET_NAMES,
    env: Mapping[str, str] | None = None,
    patterns: bool = True,
) -> list[str]:
    """Names of the secrets whose values occur in ``text`` (plus ``hf_token_pattern`` for token-like strings).

    ``bytes`` are searched as raw bytes (UTF-8 encoded values), so binary files such as checkpoints can
    be scanned without decoding.
    """
    found: list[str] = []
    for name, value in secret_values(names, env).items():
        needle: str | bytes = value.encode() if isinstance(text, bytes) else value
        if needle in text:  # type: ignore[operator]
            found.append(name)
    if patterns:
        haystack = text.decode("latin-1") if isinstance(text, bytes) else text
        for name, pattern in SECRET_VALUE_PATTERNS.items():
            if pattern.search(haystack):
                found.append(name)
    return found


def _redact_str(text: str, values: list[str]) -> str:
    for value in values:
        text = text.replace(value, REPLACEMENT)
    for pattern in SECRET_VALUE_PATTERNS.values():
        text = pattern.sub(REPLACEMENT, text)
    return text


def redact(obj: Any, names: Iterable[str] = SECRET_NAMES, env: Mapping[str, str] | None = None) -> Any:
    """A copy of ``obj`` with secret values (and values under secret-looking keys) replaced by ``***``.

    Walks dicts, jsonargparse ``Namespace`` configs, lists and tuples; other objects are returned as is.
    """
    values = sorted(secret_values(names, env).values(), key=len, reverse=True)

    def walk(value: Any, key: str | None = None) -> Any:
        if key is not None and SECRET_KEY_PATTERN.search(key) and isinstance(value, (str, bytes)) and value:
            return REPLACEMENT if isinstance(value, str) else REPLACEMENT.encode()
        if isinstance(value, str):
            return _redact_str(value, values)
        if isinstance(value, bytes):
            return _redact_str(value.decode("utf-8", "surrogateescape"), values).encode(
                "utf-8", "surrogateescape"
            )
        if _is_namespace(value):
            out = value.clone()
            for k, v in value.items():
                out[k] = walk(v, k.rsplit(".", 1)[-1])
            return out
        if isinstance(value, Mapping):
            items = {k: walk(v, str(k)) for k, v in value.items()}
            try:
                return type(value)(items)
            except TypeError:
                return items
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, tuple):
            return tuple(walk(v) for v in value)
        return value

    return walk(obj)


def _is_namespace(obj: Any) -> bool:
    """A jsonargparse ``Namespace`` (LightningCLI configs), without importing jsonargparse."""
    return (
        type(obj).__name__ == "Namespace" and callable(getattr(obj, "clone", None)) and hasattr(obj, "items")
    )


try:  # LightningCLI is optional for users of the helpers above
    from lightning.pytorch.cli import SaveConfigCallback
except ImportError:  # pragma: no cover
    SaveConfigCallback = object  # type: ignore[assignment,misc]


class RedactingSaveConfigCallback(SaveConfigCallback):  # type: ignore[misc,valid-type]
    """LightningCLI's ``config.yaml`` writer, with secrets replaced by ``***`` in the saved file.

    The run itself uses the real values; only the copy written next to the run is redacted.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Write the redacted config (same file name, ranks and overwrite rules as Lightning)."""
        original = self.config
        self.config = redact(original)
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            self.config = original


__all__ = [
    "RedactingSaveConfigCallback",
    "SECRET_NAMES",
    "find_secrets",
    "load_env_file",
    "redact",
    "secret_values",
]
