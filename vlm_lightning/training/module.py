"""The LightningModule: a PEFT-wrapped VLM, one shared step, generation-based evaluation."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import time
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import ModelParallelStrategy
from torchmetrics import MeanMetric

from vlm_lightning.data.sampling import FILLER
from vlm_lightning.errors import UserError
from vlm_lightning.generation import end_of_turn_ids, generate_batch
from vlm_lightning.metrics import build_metrics
from vlm_lightning.models.acceleration import (
    compile_decoder_layers,
    compile_vision_layers,
    skip_lora_input_cast,
)
from vlm_lightning.models.build import build_model
from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.loading import Dtype
from vlm_lightning.models.packed_positions import packed_inputs
from vlm_lightning.models.peft_setup import LoraSettings, Mode, parameter_report
from vlm_lightning.models.sync_free import split_host_inputs
from vlm_lightning.training.loss import causal_lm_loss, fusable_head, labelled_positions, labelled_rows
from vlm_lightning.training.sharding import forward_is_collective, full_value, is_sharded, shard_model

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint does not belong to this model / training mode."""


def compile_by_default(mode: str = "lora") -> bool:
    """Whether ``compile_language_model=None`` compiles: on CUDA, yes (the fast path is the default), except
    for 4-bit QLoRA bases, whose bitsandbytes layers have not been measured compiled (opt in with ``true``)."""
    return torch.cuda.is_available() and mode != "qlora"


def _default_optimizer(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, **kwargs)


class VLMFineTuner(L.LightningModule):
    """Fine-tune a vision-language model with LoRA, QLoRA or full LM training.

    Args:
        name_or_path: hub id (e.g. ``Qwen/Qwen2-VL-2B-Instruct``) or local folder.
        mode: ``lora`` (default), ``qlora`` (4-bit NF4 base, bf16 compute) or ``full`` (language model).
        lora: LoRA rank, alpha, dropout and targets (``attention``, ``attention_mlp``, ``all_linear`` or a regex).
        optimizer: optimizer factory (AdamW by default; fused on CUDA).
        scheduler: ``cosine``, ``linear`` or ``constant``, after ``warmup_steps`` (or ``warmup_ratio``) of warm-up.
        metrics: document metrics computed from generated text (``json``, ``receipt``, ``anls``, ...).
        generate_max_new_tokens: generation budget during validation / test / predict.
        val_generate: generate during validation (costly); otherwise only val/loss.
        train_vision / train_projector: unfreeze the vision tower / projector.
        gradient_checkpointing: non-reentrant activation checkpointing of the language model (with
            ``compile_language_model``: recomputation planned by the compiler inside each layer).
        dtype: weight dtype (``auto``: bf16 on CUDA, fp32 on CPU).
        trust_remote_code: allow models whose code lives in their hub repository (off by default).
        usd_per_gpu_hour: price used to report the cost per 1,000 images in test reports.
        compile_language_model: ``torch.compile`` each decoder layer of the language model for training
            and loss evaluation (regional compilation; ``data.pad_to_multiple_of`` keeps the shapes few);
            generation and the loss head stay eager. ``None`` (the default): on when CUDA is available
            (except QLoRA), off otherwise — the fast path is the default on GPUs; the first steps compile.
        compile_vision_tower: also compile each encoder layer of the frozen vision tower (forward only);
            ``None``: as ``compile_language_model`` resolves.
        merge_lora_for_generation: generate with each LoRA projection folded into one temporary merged
            linear layer (faster decoding; the trained weights are untouched; needs memory for one copy of
            the merged weights; 4-bit QLoRA bases keep the adapter path).

    Under mixed precision (``bf16-mixed`` / ``16-mixed``) PEFT's cast of every LoRA input to the float32
    adapter dtype is switched off: autocast runs the adapter matmuls in 16 bit either way, so the cast
    only costs two activation copies per projection (``models.acceleration.skip_lora_input_cast``).
    """

    def __init__(
        self,
        name_or_path: str,
        mode: Mode = "lora",
        lora: LoraSettings | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: Literal["cosine", "linear", "constant"] = "cosine",
        warmup_steps: int = 0,
        warmup_ratio: float = 0.0,
        metrics: list[str] | None = None,
        generate_max_new_tokens: int = 256,
        val_generate: bool = True,
        train_vision: bool = False,
        train_projector: bool = False,
        gradient_checkpointing: bool = False,
        dtype: Dtype = "auto",
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        usd_per_gpu_hour: float | None = None,
        compile_language_model: bool | None = None,
        compile_vision_tower: bool | None = None,
        merge_lora_for_generation: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.compiled_layers = (
            compile_language_model if compile_language_model is not None else compile_by_default(mode)
        )
        self.compiled_vision = (
            compile_vision_tower if compile_vision_tower is not None else self.compiled_layers
        )
        if os.path.isdir(name_or_path):  # checkpoints name their base model wherever they are used from
            self.hparams["name_or_path"] = os.path.abspath(name_or_path)
        self.lora = lora or LoraSettings()
        self.optimizer_factory = optimizer
        names = list(metrics or ["exact_match"])
        self.val_metrics = build_metrics(names)  # an unknown name fails before the model loads
        self.test_metrics = build_metrics(names)
        built = build_model(
            name_or_path,
            mode=mode,
            lora=self.lora,
            train_vision=train_vision,
            train_projector=train_projector,
            gradient_checkpointing=gradient_checkpointing and not self.compiled_layers,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        self.facts: FamilyFacts = built.facts
        self.processor = built.processor  # for the tokenizer (the data module's carries the image budget)
        self.tokenizer = self.processor.tokenizer
        self.stop_ids = end_of_turn_ids(self.tokenizer, self.facts.end_of_turn)
        self.model = built.model
        self.model.train()
        self.trainable, self.total, summary = parameter_report(self.model)
        log.info("%s", summary)
        print(f"[vlm_lightning] {self.facts.name} {mode}: {summary}")
        self.strict_loading = False
        self.val_loss = _TokenMean()
        self.train_token_acc = MeanMetric()
        self.val_token_acc = _TokenMean()
        self.last_val_samples: list[dict[str, Any]] = []  # first val batch, for tracking.PredictionTable

    # --- batches on the device without host syncs -----------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Find the labelled positions and rows on the CPU copy (on the GPU each is a sync: ``nonzero``)."""
        if isinstance(batch, dict) and torch.is_tensor(batch.get("labels")):
            for i, meta in enumerate(batch.get("meta") or []):
                if meta.get(FILLER):  # an evaluation filler (sharded ranks in step): no loss, no score
                    batch["labels"][i] = IGNORE_INDEX
        if (
            isinstance(batch, dict)
            and torch.is_tensor(batch.get("labels"))
            and batch["labels"].device.type == "cpu"
        ):
            batch["label_positions"] = labelled_positions(batch["labels"])
            batch["label_rows"] = labelled_rows(batch["labels"], batch["label_positions"])
        if isinstance(batch, dict) and "packed_segments" in batch and "position_ids" not in batch["inputs"]:
            # packed rows: positions restart per sample (the model keeps samples apart by them)
            batch["inputs"].update(
                packed_inputs(self.model, self.facts, batch["inputs"], batch["packed_segments"])
            )
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the batch, except the family's ``host_inputs`` (shapes read as Python numbers)."""
        kept: dict[str, dict[str, Any]] = {}
        if isinstance(batch, dict):
            for part in ("inputs", "generation_inputs"):
                if isinstance(batch.get(part), dict):
                    batch[part], kept[part] = split_host_inputs(batch[part], self.facts)
        moved = super().transfer_batch_to_device(batch, device, dataloader_idx)
        for part, host in kept.items():
            batch[part].update(host)  # the caller's batch keeps them too (nothing lost on the host)
            moved[part].update(host)
        return moved

    # --- one shared step ----------------------------------------------------------------------
    def model_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward; return mean loss over labelled tokens, labelled-token count and correct-token count."""
        return causal_lm_loss(
            self.model,
            batch["inputs"],
            batch["labels"],
            keep=batch.get("label_positions"),
            rows=batch.get("label_rows"),
            head=self._loss_head,
        )

    @functools.cached_property
    def _loss_head(self) -> torch.nn.Linear | None:
        """The frozen output head the fused loss runs (None: the unfused loss), looked up at the first
        step, after ``configure_model``; kept out of the module's submodules (no second state-dict entry)."""
        return fusable_head(self.model)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, n_tokens, correct = self.model_step(batch)
        # With a NonFiniteGuard the check waits for the optimizer step (one host sync per step, not
        # one per micro-batch); the per-step log then shows the NaN of a skipped update as it was.
        if not self._nonfinite_guarded() and not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at global step {self.global_step}, batch ids {batch['ids']}"
            )
        bsz = batch["labels"].shape[0]
        # Lightning turns progress-bar values into Python floats every step (a GPU sync): only with a bar
        self.log("train/loss", loss, prog_bar=self._progress_bar_shown(), batch_size=bsz)
        self.log("train/token_acc", correct / n_tokens.clamp(min=1), batch_size=bsz)
        self.log("train/tokens", n_tokens.float(), reduce_fx="sum", batch_size=bsz)
        return loss

    def _progress_bar_shown(self) -> bool:
        return self._trainer is not None and self.trainer.progress_bar_callback is not None

    def _nonfinite_guarded(self) -> bool:
        """Whether a ``NonFiniteGuard`` callback handles non-finite losses (it names step and batch ids)."""
        from vlm_lightning.callbacks.nonfinite import NonFiniteGuard

        return self._trainer is not None and any(
            isinstance(c, NonFiniteGuard) for c in self.trainer.callbacks
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        clip = self._trainer is not None and self.trainer.gradient_clip_val
        if clip and self.trainer.gradient_clip_algorithm != "value":
            return  # configure_gradient_clipping logs the norm it computes anyway
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:  # one foreach kernel per dtype/device group, not one norm per parameter
            self.log("train/grad_norm", full_value(torch.nn.utils.get_total_norm(grads, foreach=True)))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, n_tokens, correct = self.model_step(batch)
        self.val_loss.update(loss.detach(), n_tokens)
        self.val_token_acc.update(correct.float() / n_tokens.clamp(min=1), n_tokens)
        if self.hparams.val_generate:
            texts, _ = self.generate(batch)
            real = _scored(batch)
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
        """Log an epoch value a torchmetrics ``compute()`` already synced over all ranks.

        Lightning cannot tell and, under DDP, warns that ``sync_dist=True`` is recommended; syncing again
        would only average equal values (that warning is muted for val/ and test/ keys in ``library_noise``).
        """
        self.log(name, value, sync_dist=False, **kwargs)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        texts, new_tokens = self.generate(batch)
        latency_ms = 1000 * (time.perf_counter() - start) / max(1, len(texts))
        real = _scored(batch)
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
        for i in _scored(batch):
            text, answers = texts[i], batch["answers"][i]
            row = {
                "id": batch["ids"][i],
                "prompt": batch["prompts"][i],
                "prediction": text,
                "target": answers[0] if len(answers) == 1 else answers,
                "latency_ms": round(latency_ms, 2),
                "meta": batch["meta"][i],
            }
            if with_scores and answers:
                row["scores"] = self.test_metrics.score_sample(text, answers)
            rows.append(row)
        return rows

    def generate(self, batch: dict[str, Any], **kwargs: Any) -> tuple[list[str], torch.Tensor]:
        """Greedy batched generation from the batch's left-padded prompts."""
        kwargs.setdefault("max_new_tokens", self.hparams.generate_max_new_tokens)
        with torch.compiler.set_stance("force_eager"):  # decoding shapes would recompile the layers
            return generate_batch(
                self.model,
                batch["generation_inputs"],
                self.tokenizer,
                self.stop_ids,
                merge_lora=self.hparams.merge_lora_for_generation,
                # sharded layers gather their weights collectively: every rank runs every decoding step
                synced_gpus=self._trainer is not None
                and self.trainer.world_size > 1
                and forward_is_collective(self.trainer.strategy),
                **kwargs,
            )

    def configure_model(self) -> None:
        precision = str(getattr(self._trainer, "precision", "")) if self._trainer is not None else ""
        if precision.endswith("-mixed") and not getattr(self, "_lora_cast_skipped", False):
            skip_lora_input_cast(self.model)
            self._lora_cast_skipped = True
        if self.compiled_layers and not getattr(self, "_compiled", False):
            n = compile_decoder_layers(
                self.model, self.facts, recompute_activations=self.hparams.gradient_checkpointing
            )
            self._compiled = True
            if self._trainer is not None and self.trainer.is_global_zero:
                print(
                    f"[vlm_lightning] torch.compile of {n} decoder layers"
                    + (" and the vision tower's layers" if self.compiled_vision else "")
                    + ": the first steps compile (about 10-80 s, cached on disk for later runs); "
                    "--model.compile_language_model false turns it off"
                )
        if self.compiled_vision and not getattr(self, "_vision_compiled", False):
            compile_vision_layers(self.model, self.facts)
            self._vision_compiled = True
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, ModelParallelStrategy) and not is_sharded(self.model):
            # FSDP2: after compilation (each compiled layer becomes one shard unit), before the optimizer
            units = shard_model(
                self.model,
                self.facts,
                self.device_mesh["data_parallel"],
                param_dtype=torch.bfloat16 if precision.startswith("bf16") else None,
                cpu_offload=bool(getattr(strategy, "cpu_offload", False)),
            )
            if self.trainer.is_global_zero:
                print(f"[vlm_lightning] FSDP2: {units} shard units over {strategy.world_size} processes")

    # --- optimisation -------------------------------------------------------------------------
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip with torch directly: Lightning's mixed-precision plugin refuses fused optimizers.

        Lightning has already unscaled fp16 gradients at this point (and fused AdamW is not requested
        under ``16-mixed``), so clipping here is what the plugin would do.
        """
        if not gradient_clip_val:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val, foreach=True)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=True)
            self.log("train/grad_norm", full_value(norm))  # the norm before clipping, as without clipping

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        grad_scaler = str(self.trainer.precision) == "16-mixed"  # fused AdamW would unscale by itself
        if (
            isinstance(optimizer, torch.optim.AdamW)
            and self.device.type == "cuda"
            and not grad_scaler
            and not optimizer.defaults["fused"]
        ):
            optimizer = self.optimizer_factory(params, fused=True)  # fused kernel, set at construction
        from transformers import get_scheduler

        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = self.hparams.warmup_steps or int(self.hparams.warmup_ratio * total)
        name = {"constant": "constant_with_warmup"}.get(self.hparams.scheduler, self.hparams.scheduler)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- checkpoints hold trainable weights only ----------------------------------------------
    def trainable_state_dict(
        self, state_dict: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Only the weights that train (LoRA adapters, or the LM in full mode), of ``state_dict`` (the
        strategy's: under FSDP2 full on rank 0, or this rank's shards) or of the module's own."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        if state_dict is None:
            state_dict = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return {k: v for k, v in state_dict.items() if k in names}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict(checkpoint.get("state_dict"))
        checkpoint["vlm_lightning"] = {
            "family": self.facts.name,
            "mode": self.hparams.mode,
            "name_or_path": self.hparams.name_or_path,
            "trainable_keys": len(checkpoint["state_dict"]),
            "lora": dataclasses.asdict(self.lora),
            "data": self._inference_settings(),
        }
        checkpoint["rng_states"] = _collect_rng_states()

    def _inference_settings(self) -> dict[str, Any]:
        """Prompt and image settings inference needs to reproduce training inputs."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        hparams = getattr(datamodule, "hparams", {}) or {}
        keys = (
            "prompt",
            "system",
            "image_max_tokens",
            "image_min_tokens",
            "max_image_side",
            "max_length",
            "mask",
        )
        return {k: hparams[k] for k in keys if k in hparams}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("vlm_lightning")
        if info is None:
            raise CheckpointMismatchError("this checkpoint was not written by vlm_lightning")
        if info.get("mode") != self.hparams.mode or info.get("family") != self.facts.name:
            raise CheckpointMismatchError(
                f"checkpoint is a {info.get('family')} {info.get('mode')} run; this model is "
                f"{self.facts.name} {self.hparams.mode}"
            )
        expected = {n for n, p in self.named_parameters() if p.requires_grad}
        got = (
            set(checkpoint["state_dict"]) if "state_dict" in checkpoint else expected
        )  # sharded: loaded already
        if got != expected:
            missing, extra = sorted(expected - got)[:3], sorted(got - expected)[:3]
            raise CheckpointMismatchError(
                f"checkpoint weights do not match this model's trainable weights (missing e.g. {missing}, "
                f"unexpected e.g. {extra}): was it trained with other LoRA settings?"
            )
        if "rng_states" in checkpoint and self._trainer is not None and self.trainer.state.fn == "fit":
            _set_rng_states(checkpoint["rng_states"])


def _scored(batch: dict[str, Any]) -> list[int]:
    """Indices of a batch's real samples, not ``EvenShardSampler`` fillers (which come last in a shard)."""
    metas = batch.get("meta") or [{}] * len(batch["ids"])
    return [i for i, meta in enumerate(metas) if not meta.get(FILLER)]


def _collect_rng_states() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _TokenMean(MeanMetric):
    """A token-weighted mean that syncs exactly under DDP (sums of values and weights)."""


__all__ = ["VLMFineTuner", "CheckpointMismatchError"]
