"""Evaluation hooks of the LightningModule: validation loss and metrics, test and predict rows, generation."""

from __future__ import annotations

import time
from typing import Any

import torch
from torchmetrics import MeanMetric

from vlm_lightning.data.sampling import FILLER
from vlm_lightning.distributed import forward_is_collective
from vlm_lightning.generation import DEFAULT_DECODING_COMPILER, StaticCacheChoice, generate_batch
from vlm_lightning.metrics import DocumentMetrics


class TokenMean(MeanMetric):
    """A token-weighted mean that syncs exactly under DDP (sums of values and weights)."""


def scored(batch: dict[str, Any]) -> list[int]:
    """Indices of a batch's real samples, not ``EvenShardSampler`` fillers (which come last in a shard)."""
    metas = batch.get("meta") or [{}] * len(batch["ids"])
    return [i for i, meta in enumerate(metas) if not meta.get(FILLER)]


class EvaluationSteps:
    """Mixin for ``VLMFineTuner``: validation / test / predict steps, their epoch logs and ``generate``.

    Needs the LightningModule's ``log``, ``hparams`` and ``_trainer``, and the fine-tuner's ``model_step``,
    ``model``, ``tokenizer``, ``stop_ids`` and the metric attributes annotated below.
    """

    model: torch.nn.Module
    tokenizer: Any
    stop_ids: list[int]
    val_loss: TokenMean
    val_token_acc: TokenMean
    val_metrics: DocumentMetrics
    test_metrics: DocumentMetrics
    last_val_samples: list[dict[str, Any]]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, n_tokens, correct = self.model_step(batch)
        self.val_loss.update(loss.detach(), n_tokens)
        self.val_token_acc.update(correct.float() / n_tokens.clamp(min=1), n_tokens)
        if self.hparams.val_generate:
            texts, _ = self.generate(batch)
            real = scored(batch)
            if real:
                self.val_metrics.update([texts[i] for i in real], [batch["answers"][i] for i in real])
            if batch_idx == 0:
                self.last_val_samples = [
                    {"id": i, "prompt": p, "prediction": t, "target": a[0] if len(a) == 1 else a}
                    for i, p, t, a in zip(batch["ids"], batch["prompts"], texts, batch["answers"])
                ][: min(8, len(real))]

    def on_validation_epoch_end(self) -> None:
        self._log_synced("val/loss", self.val_loss.compute(), prog_bar=True)
        self._log_synced("val/token_acc", self.val_token_acc.compute())
        self.val_loss.reset()
        self.val_token_acc.reset()
        if self.hparams.val_generate:
            for name, value in self.val_metrics.compute().items():
                self._log_synced(
                    f"val/{name}", value, prog_bar=name in ("json_valid_rate", "exact_match", "anls")
                )
            self.val_metrics.reset()

    def _log_synced(self, name: str, value: Any, **kwargs: Any) -> None:
        """Log an epoch value that a torchmetrics ``compute()`` already synced over all ranks.

        Every rank holds the same value, so Lightning's sync reduces it with ``max``: exact (a mean of equal
        values can round), one small all-reduce per key and epoch, and no advice from Lightning to mute.
        """
        self.log(name, value, sync_dist=True, reduce_fx="max", **kwargs)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        texts, new_tokens = self.generate(batch)
        latency_ms = 1000 * (time.perf_counter() - start) / max(1, len(texts))
        real = scored(batch)
        if real:
            self.test_metrics.update([texts[i] for i in real], [batch["answers"][i] for i in real])
        return self._rows(batch, texts, latency_ms, with_scores=True)

    def on_test_epoch_end(self) -> None:
        for name, value in self.test_metrics.compute().items():
            self._log_synced(f"test/{name}", value)
        self.test_metrics.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        texts, _ = self.generate(batch)
        latency_ms = 1000 * (time.perf_counter() - start) / max(1, len(texts))
        return self._rows(batch, texts, latency_ms, with_scores=any(batch["answers"]))

    def _rows(
        self, batch: dict[str, Any], texts: list[str], latency_ms: float, with_scores: bool
    ) -> list[dict]:
        rows = []
        for i in scored(batch):
            text, answers = texts[i], batch["answers"][i]
            row = {
                "id": batch["ids"][i],
                "prompt": batch["prompts"][i],
                "prediction": text,
                "target": answers[0]
                if len(answers) == 1
                else (answers or None),  # None: no answer (as infer)
                "latency_ms": round(latency_ms, 2),
                "meta": batch["meta"][i],
            }
            if with_scores and answers:
                row["scores"] = self.test_metrics.score_sample(text, answers)
            rows.append(row)
        return rows

    def generate(self, batch: dict[str, Any], **kwargs: Any) -> tuple[list[str], torch.Tensor]:
        """Greedy batched generation from the batch's left-padded prompts (static cache on CUDA by default)."""
        kwargs.setdefault("max_new_tokens", self.hparams.generate_max_new_tokens)
        # sharded layers gather their weights collectively: every rank runs every decoding step
        collective = self._trainer is not None and forward_is_collective(self.trainer.strategy)
        setting = self.hparams.get("generation_cache", "auto")
        if getattr(self, "_static_cache_choice", None) is None:
            self._static_cache_choice = StaticCacheChoice()
        rows = len(batch["generation_inputs"].get("input_ids", ()))
        static = self._static_cache_choice(self.model, setting, rows, collective)
        if static and not getattr(self, "_static_generation_said", False):
            self._static_generation_said = True
            if self._trainer is None or self.trainer.is_global_zero:
                print(
                    "[vlm_lightning] generation: static cache; its decoding step compiles on the first batch "
                    "and once per longer cache (about 20-60 s each); "
                    "--model.generation_cache dynamic turns it off"
                )
        return generate_batch(
            self.model,
            batch["generation_inputs"],
            self.tokenizer,
            self.stop_ids,
            merge_lora=self.hparams.merge_lora_for_generation,
            static_cache=static,
            decoding_compiler=self.hparams.get("generation_compiler", DEFAULT_DECODING_COMPILER),
            synced_gpus=collective and self.trainer.world_size > 1,
            **kwargs,
        )


__all__ = ["EvaluationSteps", "TokenMean", "scored"]
