"""Compatibility path: the experiment tracking names, importable from where they used to live.

Configs written earlier name ``vlm_lightning.callbacks.tracking.PredictionTable`` as a callback
``class_path``; that keeps working. The code lives in one module per job:

* ``vlm_lightning.callbacks.prediction_table``: ``PredictionTable`` (W&B table of sample predictions).
* ``vlm_lightning.callbacks.logger_checks``: ``check_logger_config``, ``check_loggers``,
  ``check_cli_config`` and the LightningCLI mixin ``TrackingChecks``.
* ``vlm_lightning.callbacks.logger_secrets``: ``refuse_secret_arguments``, ``secret_arguments``
  (credentials never reach a config).
* ``vlm_lightning.callbacks.wandb_credentials``: ``wandb_key_source`` (where a W&B key comes from).
* ``vlm_lightning.callbacks.logger_entries``: ``TrackingConfigError`` and the ``trainer.logger`` readers.
"""

from __future__ import annotations

from vlm_lightning.callbacks.logger_checks import (
    TrackingChecks,
    check_cli_config,
    check_logger_config,
    check_loggers,
)
from vlm_lightning.callbacks.logger_entries import TrackingConfigError
from vlm_lightning.callbacks.logger_secrets import refuse_secret_arguments, secret_arguments
from vlm_lightning.callbacks.prediction_table import PredictionTable
from vlm_lightning.callbacks.wandb_credentials import wandb_key_source

__all__ = [
    "PredictionTable",
    "TrackingChecks",
    "TrackingConfigError",
    "check_cli_config",
    "check_logger_config",
    "check_loggers",
    "refuse_secret_arguments",
    "secret_arguments",
    "wandb_key_source",
]
