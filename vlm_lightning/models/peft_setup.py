"""Training modes: LoRA, QLoRA (4-bit NF4 base) and full fine-tuning of the language model."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import BitsAndBytesConfig

from vlm_lightning.errors import SettingError
from vlm_lightning.models.families import FamilyFacts, LoraScope
from vlm_lightning.patches.frozen_tower import run_frozen_tower_without_autograd

log = logging.getLogger(__name__)
Mode = Literal["lora", "qlora", "full"]


@dataclass
class LoraSettings:
    """LoRA hyper-parameters; ``targets`` is a scope name or an explicit regex over module names.

    ``dropout`` defaults to 0.0 (as PEFT's): compiled layers then give the LoRA A projections of one input one
    GEMM (``models/adapter_fusion.py``); with dropout each adapter draws its own mask and they stay apart.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: LoraScope | str = "attention_mlp"
    vision: bool = False
    use_rslora: bool = False
    extra_modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            problems.append(f"model.lora.r must be a whole number >= 1, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or self.alpha <= 0:
            problems.append(f"model.lora.alpha must be a number > 0, got {self.alpha!r}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, int | float)
            or not 0 <= self.dropout < 1
        ):
            problems.append(
                f"model.lora.dropout must be in [0, 1) (the share of adapter inputs dropped), got {self.dropout!r}"
            )
        if problems:
            raise SettingError("; ".join(problems))


def qlora_config() -> object:
    """4-bit NF4 with double quantization and bf16 compute (bitsandbytes)."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def target_regex(facts: FamilyFacts, lora: LoraSettings) -> str:
    """The PEFT ``target_modules`` regex for these settings."""
    if lora.targets in ("attention", "attention_mlp", "all_linear"):
        pattern = facts.lora_target_regex(lora.targets)  # type: ignore[arg-type]
    else:
        pattern = lora.targets
    if lora.vision:
        pattern = f"({pattern})|({facts.vision_lora_regex()})"
    return pattern


def _check_targets_match(model: torch.nn.Module, pattern: str, given: str) -> None:
    """Refuse LoRA targets that match no linear layer (PEFT would fail deep inside with its own message)."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise SettingError(f"model.lora.targets {given!r} is not a valid regex: {exc}") from None
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    if not any(regex.fullmatch(name) for name in linear):
        shown = ", ".join(linear[:4])
        raise SettingError(
            f"model.lora.targets {given!r} (regex {pattern!r}) matches no linear layer of this model; the regex "
            f"must match whole module names, e.g. {shown}: use a preset (attention, attention_mlp, all_linear)"
        )


def _submodule(model: torch.nn.Module, dotted: str) -> torch.nn.Module | None:
    try:
        return model.get_submodule(dotted)
    except AttributeError:
        return None


def apply_training_mode(
    model: torch.nn.Module,
    facts: FamilyFacts,
    mode: Mode,
    lora: LoraSettings,
    *,
    train_vision: bool = False,
    train_projector: bool = False,
    gradient_checkpointing: bool = False,
) -> torch.nn.Module:
    """Freeze / wrap the model for the mode; return the model to train."""
    if mode == "qlora":
        from peft import prepare_model_for_kbit_training  # heavy: peft adds ~0.5 s to CLI start

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        # transformers 5.23's name (gradient_checkpointing_enable is its deprecated alias and warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()

    for p in model.parameters():
        p.requires_grad_(False)
    if mode == "full":
        lm = _submodule(model, facts.language_model)
        if lm is None:
            raise ValueError(f"language model not found at {facts.language_model} in {type(model).__name__}")
        for p in lm.parameters():
            p.requires_grad_(True)
        head = getattr(model, "lm_head", None)
        if head is not None:
            for p in head.parameters():
                p.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model  # heavy: peft adds ~0.5 s to CLI start

        modules_to_save = list(lora.extra_modules_to_save)
        pattern = target_regex(facts, lora)
        _check_targets_match(model, pattern, lora.targets)
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=pattern,
            use_rslora=lora.use_rslora,
            modules_to_save=modules_to_save or None,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    for flag, path in ((train_vision, facts.vision_tower), (train_projector, facts.projector)):
        if flag:
            sub = _find(model, path)
            for p in sub.parameters():
                p.requires_grad_(True)
    if not train_vision and not train_projector and not lora.vision:
        _run_frozen_tower_without_autograd(model, facts)
    return model


def _find(model: torch.nn.Module, path: str) -> torch.nn.Module:
    for name, module in model.named_modules():
        if name == path or name.endswith("." + path):  # PEFT wraps the model: base_model.model.<path>
            return module
    raise ValueError(f"module {path} not found")


def _run_frozen_tower_without_autograd(model: torch.nn.Module, facts: FamilyFacts) -> None:
    """A fully frozen vision tower (projector included) keeps no graph: run it under no_grad."""
    try:
        tower = _find(model, facts.vision_tower)
    except ValueError:
        return
    run_frozen_tower_without_autograd(tower)  # patches/frozen_tower.py


def parameter_report(model: torch.nn.Module) -> tuple[int, int, str]:
    """Trainable and total parameter counts with a one-line summary."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    line = f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
    return trainable, total, line
