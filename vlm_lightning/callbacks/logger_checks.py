"""Start-up checks of the experiment loggers, before any model is loaded.

* ``check_logger_config(cfg)`` / ``check_loggers(loggers)``: W&B is used only when it is configured
  AND a key exists (see ``vlm_lightning.callbacks.wandb_credentials``), or when it runs without the
  server. Otherwise a ``TrackingConfigError`` says how to fix it: never a hang or an interactive login
  prompt. A logger argument holding a credential is refused as well
  (``vlm_lightning.callbacks.logger_secrets``).
* ``TrackingChecks``: a LightningCLI mixin running both checks at the right moments.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from vlm_lightning.callbacks.logger_entries import (
    TrackingConfigError,
    is_wandb,
    logger_class_name,
    logger_entries,
    logger_init_args,
)
from vlm_lightning.callbacks.logger_secrets import refuse_secret_arguments, secret_arguments, secret_error
from vlm_lightning.callbacks.wandb_credentials import wandb_key_source, wandb_offline


def check_logger_config(
    trainer_logger_config: Any, env: Mapping[str, str] | None = None, load_dotenv: bool = True
) -> list[str]:
    """Validate ``trainer.logger`` (a parsed config, a list of them, or instantiated loggers).

    Raises ``TrackingConfigError`` when a logger argument holds a credential, or when a W&B logger would
    need the server but no key can be found. Returns one line per W&B logger saying how it will run
    (``online (key from $WANDB_API_KEY)``, ``offline (WANDB_MODE=offline)``...); empty without W&B.
    """
    given_env = env
    env = os.environ if env is None else env
    report: list[str] = []
    for entry in logger_entries(trainer_logger_config):
        class_name = logger_class_name(entry)
        args = logger_init_args(entry)
        names = secret_arguments(args, "init_args")
        if names:
            raise secret_error(names, class_name)
        if not is_wandb(entry):
            continue
        offline = wandb_offline(args, env)
        if offline:
            report.append(f"W&B offline ({offline})")
            continue
        source = wandb_key_source(given_env, load_dotenv=load_dotenv)
        if source is None:
            raise TrackingConfigError(
                "W&B logging is configured (trainer.logger: WandbLogger) but no W&B API key was found "
                "(checked $WANDB_API_KEY, $WANDB_IDENTITY_TOKEN_FILE, .env and ~/.netrc). Either set the key: "
                "`export WANDB_API_KEY=...` (or put WANDB_API_KEY=... in .env, or run `wandb login`), "
                "or log without the server: `WANDB_MODE=offline` or `--trainer.logger.init_args.offline true` "
                "(upload later with `wandb sync <save_dir>/wandb/offline-run-*`)."
            )
        report.append(f"W&B online (key from {source})")
    return report


def check_loggers(loggers: Iterable[Any], env: Mapping[str, str] | None = None) -> list[str]:
    """``check_logger_config`` for instantiated loggers (e.g. ``trainer.loggers``)."""
    return check_logger_config(list(loggers), env=env)


def check_cli_config(config: Any, subcommand: str | None = None) -> list[str]:
    """``check_logger_config`` on a LightningCLI config (before its classes are instantiated)."""
    section = config.get(subcommand) if subcommand and config.get(subcommand) is not None else config
    trainer = section.get("trainer") if section is not None else None
    logger_cfg = trainer.get("logger") if trainer is not None else None
    return check_logger_config(logger_cfg)


class TrackingChecks:
    """LightningCLI mixin: refuse credentials in logger options, and W&B without a key, before loading.

    Use as ``class MyCLI(TrackingChecks, LightningCLI)``; cooperative (calls ``super()``).
    """

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Refuse credential-like logger options, then parse as usual."""
        refuse_secret_arguments(args)
        super().parse_arguments(parser, args)  # type: ignore[misc]

    def before_instantiate_classes(self) -> None:
        """Check the parsed logger config and print how each W&B logger will run."""
        for line in check_cli_config(self.config, getattr(self, "subcommand", None)):  # type: ignore[attr-defined]
            print(f"[vlm_lightning] {line}")
        super().before_instantiate_classes()  # type: ignore[misc]


__all__ = ["TrackingChecks", "check_cli_config", "check_logger_config", "check_loggers"]
