"""Whether a W&B logger can reach its server: where its key comes from, or why it needs none.

* ``wandb_key_source()``: where wandb would find credentials (``WANDB_API_KEY`` /
  ``WANDB_IDENTITY_TOKEN_FILE`` in the environment, in ``.env`` loaded through
  ``vlm_lightning.cli.secrets.load_env_file``, or an entry in ``~/.netrc`` / ``$NETRC`` written by
  ``wandb login``); a description, never the value.
* ``wandb_offline(args, env)``: why a W&B logger runs without the server (``WANDB_MODE=offline`` /
  ``disabled``, ``offline: true`` or ``mode: offline``), if it does.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vlm_lightning.callbacks.logger_entries import plain

try:
    from vlm_lightning.cli.secrets import load_env_file
except ImportError:  # pragma: no cover
    load_env_file = None

OFFLINE_MODES = ("offline", "dryrun", "disabled")
DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def wandb_key_source(env: Mapping[str, str] | None = None, load_dotenv: bool = True) -> str | None:
    """Where wandb would find credentials (a description, never the value), or ``None``.

    Looks at ``WANDB_API_KEY`` / ``WANDB_IDENTITY_TOKEN_FILE``, then ``.env`` in the working directory
    (loaded into ``os.environ`` through ``vlm_lightning.cli.secrets.load_env_file`` when ``env`` is the real
    environment and ``load_dotenv``), then the netrc file wandb reads (``$NETRC``, ``~/.netrc``, ``~/_netrc``)
    for the host of ``WANDB_BASE_URL``.
    """
    real_env = env is None
    env = os.environ if env is None else env
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if env.get(name):
            return f"${name}"
    if real_env and load_dotenv and load_env_file is not None:
        loaded = load_env_file(".env")
        for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
            if name in loaded and env.get(name):
                return f"${name} from .env"
    return _netrc_source(env)


def _netrc_source(env: Mapping[str, str]) -> str | None:
    if env.get("NETRC"):
        candidates = [Path(env["NETRC"]).expanduser()]
    else:
        home = Path(env.get("HOME") or Path.home())
        candidates = [home / ".netrc", home / "_netrc"]
    host = urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST).netloc
    for path in candidates:
        if not path.is_file():
            continue
        try:
            creds = netrc.netrc(str(path)).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            continue
        if creds and creds[2]:
            return str(path)
    return None


def wandb_offline(args: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """Why this W&B logger needs no server (``offline: true``, ``mode: offline``, ``WANDB_MODE``), or None."""
    if args.get("offline"):
        return "offline: true"
    mode = args.get("mode")
    settings = plain(args.get("settings"))
    if mode is None and settings is not None:
        mode = settings.get("mode") if isinstance(settings, Mapping) else getattr(settings, "mode", None)
    if isinstance(mode, str) and mode.lower() in OFFLINE_MODES:
        return f"mode: {mode}"
    env_mode = (env.get("WANDB_MODE") or "").lower()
    if env_mode in OFFLINE_MODES:
        return f"WANDB_MODE={env_mode}"
    if (env.get("WANDB_DISABLED") or "").lower() in ("1", "true", "yes"):
        return "WANDB_DISABLED"
    return None


__all__ = ["DEFAULT_WANDB_HOST", "OFFLINE_MODES", "wandb_key_source", "wandb_offline"]
