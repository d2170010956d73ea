"""Callbacks: run-folder checkpoints, prediction and metric reports."""

from vlm_lightning.callbacks.checkpoint import RunCheckpoint
from vlm_lightning.callbacks.predictions import PredictionWriter, run_dir

__all__ = ["PredictionWriter", "RunCheckpoint", "run_dir"]
