"""Training throughput and peak memory, measured after a warm-up, printed at the end of ``fit``."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from vlm_lightning.data.sampling import FILLER


class Throughput(Callback):
    """Samples/s and tokens/s over optimizer steps after ``warmup_steps``, across all ranks; peak GPU memory.

    Writes ``throughput.json`` into the run folder and logs ``train/samples_per_s``.
    """

    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self._start: float | None = None
        self._samples = 0
        self._tokens: torch.Tensor | int = 0  # summed on the device: reading it per step would sync
        self._steps = 0
        self.result: dict[str, Any] = {}

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._start is None:
            if step >= self.warmup_steps:
                self._sync(trainer)
                self._start = time.perf_counter()
                self._steps_at_start = step
            return
        if "meta" in batch:  # packed: rows != samples; fillers (ranks kept in step) are not trained on
            self._samples += sum(not meta.get(FILLER) for meta in batch["meta"])
        else:
            self._samples += len(batch["ids"]) if "ids" in batch else int(batch["labels"].shape[0])
        if "real_tokens" in batch:  # packed rows: the samples' lengths, counted by the collator
            self._tokens = self._tokens + batch["real_tokens"]
        else:
            self._tokens = self._tokens + batch["inputs"]["attention_mask"].sum()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None:
            return
        self._sync(trainer)
        elapsed = time.perf_counter() - self._start
        tokens = float(self._tokens) if torch.is_tensor(self._tokens) else self._tokens
        totals = torch.tensor([self._samples, tokens], dtype=torch.float64, device=pl_module.device)
        totals = trainer.strategy.reduce(totals, reduce_op="sum")
        on_gpu = pl_module.device.type == "cuda"
        # GPU: peak allocated memory per device; CPU: peak resident memory of each process (no GPU figure)
        peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else _peak_rss_gib()
        peaks = trainer.strategy.all_gather(torch.tensor(peak, device=pl_module.device))
        steps = trainer.global_step - self._steps_at_start
        self.result = {
            "world_size": trainer.world_size,
            "timed_optimizer_steps": steps,
            "seconds": elapsed,
            "samples_per_s": float(totals[0]) / elapsed,
            "tokens_per_s": float(totals[1]) / elapsed,
            ("peak_gib_per_device" if on_gpu else "peak_rss_gib_per_process"): [
                round(float(x), 2) for x in peaks.flatten()
            ],
        }
        if trainer.global_rank == 0:
            print(f"[vlm_lightning] throughput: {json.dumps(self.result)}")
            folder = trainer.loggers[0].log_dir if trainer.loggers else trainer.default_root_dir
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)
                (Path(folder) / "throughput.json").write_text(json.dumps(self.result, indent=2) + "\n")


def _peak_rss_gib() -> float:
    """Peak resident set size of this process in GiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)
