"""The LightningModule: a PEFT-wrapped VLM, its batches on the device, one shared step, optimisation.

Batch hooks live in ``batch_transfer.py``, evaluation hooks in ``evaluation_steps.py``, checkpoint hooks in
``checkpoint_state.py`` (mixins).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import ModelParallelStrategy

from vlm_lightning.callbacks.nonfinite import NonFiniteGuard
from vlm_lightning.errors import SettingError
from vlm_lightning.generation import (
    DEFAULT_DECODING_COMPILER,
    DecodingCompiler,
    GenerationCache,
    end_of_turn_ids,
)
from vlm_lightning.metrics import build_metrics, metric_names
from vlm_lightning.models.acceleration import compile_decoder_layers, compile_notice, compile_vision_layers
from vlm_lightning.models.build import build_model
from vlm_lightning.models.compile_support import compile_problem
from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.host_masks import host_decided_masks
from vlm_lightning.models.loading import Dtype
from vlm_lightning.models.packed_positions import packing_attention_problem
from vlm_lightning.models.peft_setup import LoraSettings, Mode, parameter_report
from vlm_lightning.patches.peft_lora_cast import skip_lora_input_cast
from vlm_lightning.training.batch_transfer import BatchTransfer
from vlm_lightning.training.checkpoint_state import CheckpointHooks, CheckpointMismatchError
from vlm_lightning.training.evaluation_steps import EvaluationSteps, TokenMean
from vlm_lightning.training.loss import (
    StepTokenMean,
    causal_lm_loss,
    fusable_head,
    scale_gradients,
)
from vlm_lightning.training.sharding import full_value, is_sharded, shard_model

log = logging.getLogger(__name__)


def compile_by_default(mode: str = "lora") -> bool:
    """Whether ``compile_language_model=None`` compiles: on CUDA, yes (the fast path is the default), except
    for 4-bit QLoRA bases, whose bitsandbytes layers have not been measured compiled (opt in with ``true``)."""
    return torch.cuda.is_available() and mode != "qlora"


def _default_optimizer(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, **kwargs)


class VLMFineTuner(BatchTransfer, EvaluationSteps, CheckpointHooks, L.LightningModule):
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
        fuse_adapter_inputs: in compiled decoder layers, one GEMM for the LoRA A projections that read the
            same input (q/k/v, gate/up); with ``lora.dropout`` above 0 they share one dropout mask
            (``false``: PEFT's own mask and GEMM per adapter).
        host_built_inputs: Qwen2 / 2.5 / 3-VL: build the M-RoPE index and the vision tower's positions and
            boundaries on the CPU copy of each training / validation batch (fewer host syncs per step;
            ``models/host_precompute.py``), and (every text model in ``PREPARED_MASK_FORMS``) answer the
            text masks' padding / packed-row question there (``models/host_masks.py``); ``false`` leaves
            both to transformers' forward.
        merge_lora_for_generation: generate with each LoRA projection folded into one temporary merged
            linear layer (faster decoding; the trained weights are untouched; needs memory for one copy of
            the merged weights; 4-bit QLoRA bases keep the adapter path).
        generation_cache: ``static`` decodes with a fixed-length key / value cache whose decoding step
            transformers compiles (with CUDA graphs) once per cache length; ``dynamic`` is HF ``generate``'s
            growing cache, eager; ``auto`` (the default): static on CUDA, except 4-bit bases, FSDP and a
            smaller last batch (which would compile once more).
        generation_compiler: how the static cache's decoding step compiles: ``inductor`` (generated kernels
            under CUDA graphs) or ``cudagraphs`` (PyTorch's eager kernels under CUDA graphs, nothing to
            generate: a shorter first batch); see ``generation.decoding_compile_config``.

    Under mixed precision (``bf16-mixed`` / ``16-mixed``) PEFT's cast of every LoRA input to the float32
    adapter dtype is switched off: autocast runs the adapter matmuls in 16 bit either way, so the cast
    only costs two activation copies per projection (``patches.peft_lora_cast.skip_lora_input_cast``).
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
        metrics: list[str] | str | None = None,
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
        fuse_adapter_inputs: bool = True,
        host_built_inputs: bool = True,
        merge_lora_for_generation: bool = True,
        generation_cache: GenerationCache = "auto",
        generation_compiler: DecodingCompiler = DEFAULT_DECODING_COMPILER,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.compiled_layers = (
            compile_language_model if compile_language_model is not None else compile_by_default(mode)
        )
        self.compiled_vision = (
            compile_vision_tower if compile_vision_tower is not None else self.compiled_layers
        )
        self._check_compile_support(compile_language_model, compile_vision_tower)
        if os.path.isdir(name_or_path):  # checkpoints name their base model wherever they are used from
            self.hparams["name_or_path"] = os.path.abspath(name_or_path)
        self.lora = lora or LoraSettings()
        self.optimizer_factory = optimizer
        names = metric_names(metrics)
        self.hparams["metrics"] = names  # the names scored, also when given as one name or left unset
        if self.hparams.generate_max_new_tokens < 1:
            raise SettingError(
                f"model.generate_max_new_tokens must be >= 1, got {self.hparams.generate_max_new_tokens}"
            )
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
        self.val_loss = TokenMean()
        self.step_loss = StepTokenMean()
        self._grad_norm: torch.Tensor | None = None  # this optimizer step's, before clipping
        self.val_token_acc = TokenMean()
        self.last_val_samples: list[dict[str, Any]] = []  # first val batch, for tracking.PredictionTable

    def _dropout_mask_note(self) -> str:
        """How the fused LoRA A projections drop their input ('' without dropout or fusion)."""
        if self.hparams.mode == "full" or not self.hparams.fuse_adapter_inputs or self.lora.dropout == 0:
            return ""
        return (
            f"; model.lora.dropout {self.lora.dropout}: the LoRA adapters of one input (q/k/v, gate/up) share "
            "one dropout mask and one GEMM (model.fuse_adapter_inputs false: PEFT's mask and GEMM per adapter)"
        )

    def _check_compile_support(self, language_model: bool | None, vision_tower: bool | None) -> None:
        """Compilation asked for on a platform that cannot compile stops here, before the model loads;
        the ``null`` default falls back to eager layers with a warning."""
        problem = (
            compile_problem(torch.cuda.is_available())
            if self.compiled_layers or self.compiled_vision
            else None
        )
        if problem is None:
            return
        asked = [
            f"model.{n}"
            for n, v in (("compile_language_model", language_model), ("compile_vision_tower", vision_tower))
            if v
        ]
        if asked:
            raise SettingError(
                f"{' and '.join(asked)}: true, but {problem}. Set it to false (or null: compiled where possible)"
            )
        log.warning("the layers run eager (model.compile_language_model: null): %s", problem)
        self.compiled_layers = self.compiled_vision = False

    # --- one shared step ----------------------------------------------------------------------
    def model_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward; return mean loss over labelled tokens, labelled-token count and correct-token count."""
        inputs = batch["inputs"]
        if "padded_rows" in batch or "packed_sequence_ids" in batch:  # answered on the CPU copy
            inputs = host_decided_masks(
                self.model, inputs, batch.get("padded_rows", False), batch.get("packed_sequence_ids")
            )
        return causal_lm_loss(
            self.model,
            inputs,
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
        return self.step_loss.add(loss, n_tokens, correct)  # logged per optimizer step, as its token mean

    def _progress_bar_shown(self) -> bool:
        return self._trainer is not None and self.trainer.progress_bar_callback is not None

    def _nonfinite_guard(self) -> NonFiniteGuard | None:
        """The ``NonFiniteGuard`` callback that handles non-finite losses (it names step and batch ids)."""
        if self._trainer is None:
            return None
        return next((c for c in self.trainer.callbacks if isinstance(c, NonFiniteGuard)), None)

    def _nonfinite_guarded(self) -> bool:
        return self._nonfinite_guard() is not None

    def _step_grad_norm(self, grads: list[torch.Tensor], factor: torch.Tensor | None) -> torch.Tensor:
        """The total norm of this step's (rescaled) gradients: the norm the guard computed before the
        rescale, times the rescale ``factor`` (one norm per step, not two), else computed here."""
        guard = self._nonfinite_guard()
        seen = guard.step_grad_norm if guard is not None else None
        if seen is not None and seen[0] == self.trainer.global_step:
            return seen[1] if factor is None else seen[1] * factor.to(seen[1].device)
        return full_value(torch.nn.utils.get_total_norm(grads, foreach=True))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Rescale the gradients to the step's token-mean loss (``StepTokenMean``), log it, then the norm."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        step = self.step_loss.finish(
            grads, self.trainer.strategy.reduce, self.trainer.world_size, self.trainer.accumulate_grad_batches
        )
        if step is not None:
            # Lightning turns progress-bar values into Python floats every step (a GPU sync): only with a bar
            self.log("train/loss", step.loss, prog_bar=self._progress_bar_shown())
            self.log("train/token_acc", step.token_acc)
            self.log("train/tokens", step.tokens)
        self._grad_norm = None
        if grads:  # one foreach kernel per dtype/device group, not one norm per parameter
            self._grad_norm = self._step_grad_norm(grads, step.grad_factor if step is not None else None)
            self.log("train/grad_norm", self._grad_norm)  # before clipping (configure_gradient_clipping)

    # --- model set-up: mixed-precision casts, compilation, FSDP2 ------------------------------------
    def _trains_packed(self) -> bool:
        """Whether the trainer's data module packs training rows (``data.packing``)."""
        return bool(self._data_settings().get("packing", False))

    def _eager_vision_for_packing(self) -> None:
        """Packed training rows run the vision tower eager, unless its compilation was asked for, in the
        families whose vision attention splits per image behind a graph break (Qwen-style ``image_grid_thw``
        input: ``FamilyFacts.vision_recompiles_per_image_count``). Packed batches hold a different number of
        images every step, and those compiled vision layers recompile for each new count
        (``test_packed_compile.py``; measured 0.11x eager); the decoder layers, and the vision layers of the
        families that take a batch of images (LFM2-VL, Idefics3 / SmolVLM, InternVL), compile one
        shape-generic graph after the second shape. Measured on Qwen2-VL-2B, 8 rows x 1,024 tokens: compiled
        LM + eager vision 114 samples/s at 6.8 GiB, all eager 119 samples/s at 27.7 GiB (docs/benchmarks.md)."""
        if not self._trains_packed() or getattr(self, "_vision_compiled", False):
            return
        if not self.facts.vision_recompiles_per_image_count:
            return
        if self.hparams.compile_vision_tower is None and self.compiled_vision:
            self.compiled_vision = False
            if self.trainer.is_global_zero:
                print(
                    f"[vlm_lightning] data.packing: the vision tower runs eager ({self.facts.name}'s compiled "
                    "vision layers recompile for every image count); --model.compile_vision_tower true "
                    "compiles it anyway"
                )

    def configure_model(self) -> None:
        precision = str(getattr(self._trainer, "precision", "")) if self._trainer is not None else ""
        if precision.endswith("-mixed") and not getattr(self, "_lora_cast_skipped", False):
            skip_lora_input_cast(self.model)  # a PEFT patch applied here (registry: vlm_lightning.patches)
            self._lora_cast_skipped = True
        if self._trains_packed():  # the kernel the model loaded with (the CLI checked the setting already)
            problem = packing_attention_problem(getattr(self.model.config, "_attn_implementation", None))
            if problem:
                raise SettingError(problem)
        self._eager_vision_for_packing()
        if self.compiled_layers and not getattr(self, "_compiled", False):
            n = compile_decoder_layers(
                self.model,
                self.facts,
                recompute_activations=self.hparams.gradient_checkpointing,
                fuse_adapter_inputs=self.hparams.fuse_adapter_inputs,
            )
            self._compiled = True
            if self._trainer is not None and self.trainer.is_global_zero:
                recompute = self.hparams.gradient_checkpointing
                print(compile_notice(n, self.compiled_vision, recompute) + self._dropout_mask_note())
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
        under ``16-mixed``), so clipping here is what the plugin would do. By norm: with the norm
        ``on_before_optimizer_step`` logged (``_step_grad_norm``), scaled as ``clip_grads_with_norm_`` does.
        """
        if not gradient_clip_val:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val, foreach=True)
            return
        grads = [p.grad for p in params]
        if not grads:
            return
        norm = self._grad_norm if self._grad_norm is not None else self._step_grad_norm(grads, None)
        # torch's clip_grads_with_norm_ coefficient (tests compare); sharded gradients scale their shard
        scale_gradients(grads, (gradient_clip_val / (norm + 1e-6)).clamp(max=1.0))

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
        from transformers import get_scheduler  # heavy: transformers.optimization imports peft (~0.5 s)

        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = self.hparams.warmup_steps or int(self.hparams.warmup_ratio * total)
        name = {"constant": "constant_with_warmup"}.get(self.hparams.scheduler, self.hparams.scheduler)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["VLMFineTuner", "CheckpointMismatchError"]
