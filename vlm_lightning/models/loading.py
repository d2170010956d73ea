"""Load processors and models from a hub id or a local folder through ``from_pretrained``."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from vlm_lightning.data.collator import ChatCollator
from vlm_lightning.data.prefix_collator import PrefixSuffixCollator
from vlm_lightning.errors import SettingError, UserError
from vlm_lightning.models.families import FamilyFacts, family_for_model_type

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class ModelLoadError(UserError, OSError):
    """The model or processor could not be loaded; says why in user terms."""


def _explain(name_or_path: str, exc: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if "does not support an attention implementation" in str(exc):
        hint = f"{str(exc).split('. ')[0]}: set --model.attn_implementation sdpa (the default) or eager"
    elif Path(name_or_path).exists():
        hint = (
            f"the folder {name_or_path} exists but is not a complete checkpoint ({type(exc).__name__}: {exc})"
        )
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        hint = f"no such folder: {name_or_path}"
    elif offline:
        hint = (
            f"'{name_or_path}' is no folder here (from {os.getcwd()}), and as a hub id it is not in the local "
            "cache (HF_HUB_OFFLINE=1): check the path, download the model once online, or point "
            "model.name_or_path at a local folder"
        )
    else:
        hint = f"could not load '{name_or_path}' from the hub or disk: {type(exc).__name__}: {exc}"
    return ModelLoadError(f"cannot load model/processor: {hint}")


def _check_remote_code(name_or_path: str, trust_remote_code: bool) -> None:
    if trust_remote_code:
        return
    try:
        AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
    except OSError as exc:
        raise _explain(name_or_path, exc) from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(
                f"'{name_or_path}' needs code from its repository to run. That code executes on your machine: "
                "set model.trust_remote_code=true only if you trust its authors (not verified by vlm_lightning)."
            ) from exc
        # e.g. a folder without a usable config.json ("Unrecognized model ... model_type")
        raise ModelLoadError(f"cannot load model/processor from '{name_or_path}': {exc}") from exc


def family_of(name_or_path: str, trust_remote_code: bool = False) -> FamilyFacts:
    """The family facts of a checkpoint, from its config's ``model_type`` (read once per config file)."""
    config_file = Path(name_or_path) / "config.json"
    stamp = config_file.stat().st_mtime_ns if config_file.is_file() else None
    return family_for_model_type(_model_type(name_or_path, trust_remote_code, stamp))


@functools.lru_cache(maxsize=32)
def _model_type(name_or_path: str, trust_remote_code: bool, stamp: int | None) -> str:
    """``config.model_type``; ``stamp`` (the local config's mtime) keys the cache, so a rewritten file is re-read."""
    _check_remote_code(name_or_path, trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _explain(name_or_path, exc) from exc
    return config.model_type


def load_processor(
    name_or_path: str,
    *,
    image_max_tokens: int | None = None,
    image_min_tokens: int | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load the processor and apply an image-token budget through the family's own knobs."""
    facts = family_of(name_or_path, trust_remote_code)
    try:
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _explain(name_or_path, exc) from exc
    if (image_max_tokens or image_min_tokens) and facts.set_image_tokens is not None:
        try:
            facts.set_image_tokens(processor, image_min_tokens, image_max_tokens)
        except ValueError as exc:  # a budget the family's knob cannot give
            raise SettingError(f"data.image_max_tokens / image_min_tokens for {facts.name}: {exc}") from exc
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


_PROBE_ANSWER = "vlm-lightning-probe-answer"


def with_template_end_of_turn(facts: FamilyFacts, processor: Any) -> FamilyFacts:
    """``facts`` with the end-of-turn token this checkpoint's chat template closes an answer with.

    Checkpoints of one model type may ship different templates (ibm-granite/granite-docling-258M is an
    ``idefics3`` model whose Granite template ends turns with ``<|end_of_text|>``, not SmolVLM's
    ``<end_of_utterance>``): a probe answer is rendered and the special token right after it is used, for
    label masking and as a generation stop. Unchanged when the template ends turns as the family does, or
    when no special token follows (masking then reports the mismatch).
    """
    template = getattr(processor, "chat_template", None)
    if facts.prompt_style != "chat" or not template:
        return facts
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": _PROBE_ANSWER}]},
    ]
    try:
        rendered = processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=False, **dict(facts.chat_template_kwargs)
        )
    except Exception:  # noqa: BLE001 - a template that cannot render this probe: masking reports it later
        return facts
    tail = rendered[rendered.find(_PROBE_ANSWER) + len(_PROBE_ANSWER) :] if _PROBE_ANSWER in rendered else ""
    if not tail or tail.startswith(facts.end_of_turn):
        return facts
    tokenizer = processor.tokenizer
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special
    }
    closing = max((t for t in specials if t and tail.startswith(t)), key=len, default=None)
    return facts if closing is None else dataclasses.replace(facts, end_of_turn=closing)


def make_collator(processor: Any, facts: FamilyFacts, **kwargs: Any) -> Any:
    """The collator adapter for the family's prompt style."""
    facts = with_template_end_of_turn(facts, processor)
    if facts.prompt_style == "chat":
        return ChatCollator(processor, facts, **kwargs)
    if facts.prompt_style == "prefix_suffix":
        return PrefixSuffixCollator(processor, facts, **kwargs)
    raise ValueError(f"unknown prompt style {facts.prompt_style!r} for family {facts.name}")


def load_model(
    name_or_path: str,
    *,
    dtype: Dtype = "auto",
    quantization: Any = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """Load an image-text-to-text model by hub id or folder."""
    _check_remote_code(name_or_path, trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype == "auto":
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    else:
        kwargs["dtype"] = DTYPES[dtype]
    if quantization is not None:
        if not torch.cuda.is_available():
            raise ModelLoadError("mode=qlora loads the base in 4 bits with bitsandbytes and needs a CUDA GPU")
        kwargs["quantization_config"] = quantization
        # 4-bit weights are quantized while loading onto this process's GPU (DDP: one per LOCAL_RANK)
        kwargs["device_map"] = {"": f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _explain(name_or_path, exc) from exc
