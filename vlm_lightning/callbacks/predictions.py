"""Collect per-sample rows from test / predict on every rank and write one report on rank 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from vlm_lightning.callbacks.progress import announce
from vlm_lightning.distributed import gather_lists
from vlm_lightning.evaluation.report import write_reports

# the model settings that decide what a test run measures, recorded in metrics.json
EVALUATION_SETTINGS = (
    "name_or_path",
    "mode",
    "generate_max_new_tokens",
    "merge_lora_for_generation",
    "generation_cache",
    "generation_compiler",
    "metrics",
)


def write_skipped_rows(problems: list[Any], folder: str | Path) -> Path | None:
    """Write the rows ``data.on_bad_row: skip`` left out to ``<folder>/skipped_rows.txt``; None if none."""
    if not problems:
        return None
    path = Path(folder) / "skipped_rows.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(str(p) for p in problems) + "\n")
    return path


def run_dir(trainer: L.Trainer) -> Path:
    """The run's log folder (same on every rank)."""
    local = trainer.log_dir if trainer.loggers else trainer.default_root_dir
    return Path(trainer.strategy.broadcast(str(local)))


def in_input_order(rows: list[dict[str, Any]], trainer: L.Trainer) -> list[dict[str, Any]]:
    """Rows gathered rank after rank, put back in the order of the split's records (stable for repeated ids)."""
    datamodule = getattr(trainer, "datamodule", None)
    stage = "test" if trainer.testing else "predict"
    dataset = (getattr(datamodule, "datasets", None) or {}).get(stage)
    if dataset is None:
        return rows
    position: dict[str, int] = {}
    for i, record in enumerate(dataset.records):
        position.setdefault(record.id, i)
    return sorted(rows, key=lambda row: position.get(row["id"], len(position)))


class PredictionWriter(Callback):
    """Writes ``predictions.jsonl``, ``predictions.csv`` and ``metrics.json`` into the run folder."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.written: dict[str, Path] = {}

    def _collect(self, outputs: Any) -> None:
        if outputs:
            self.rows.extend(outputs)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._collect(outputs)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._collect(outputs)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self._write(trainer, metrics)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, None)

    def _write(self, trainer: L.Trainer, metrics: dict[str, float] | None) -> None:
        rows = gather_lists(self.rows)
        folder = run_dir(trainer)
        if trainer.global_rank != 0:
            return
        rows = in_input_order(rows, trainer)
        folder.mkdir(parents=True, exist_ok=True)
        datamodule = getattr(trainer, "datamodule", None)
        hparams = trainer.lightning_module.hparams
        skipped = list(getattr(datamodule, "skipped", None) or [])  # rows left out: listed, never scored
        self.written = write_reports(
            folder,
            rows,
            metrics,
            batch_size=getattr(datamodule, "eval_batch_size", None),
            usd_per_gpu_hour=getattr(hparams, "usd_per_gpu_hour", None),
            settings={
                **{key: hparams[key] for key in EVALUATION_SETTINGS if key in hparams},
                "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,  # None: the base model
            },
            metric_names=(hparams.get("metrics") or ["exact_match"]) if metrics is not None else None,
            skipped_rows=len(skipped),
        )
        listed = write_skipped_rows(skipped, folder)
        if listed:
            self.written["skipped_rows"] = listed
        for name, path in self.written.items():
            announce(f"[vlm_lightning] {name}: {path}")
