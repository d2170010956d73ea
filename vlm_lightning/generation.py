"""Batched, left-padded greedy generation and decoding of the new tokens only."""

from __future__ import annotations

from typing import Any, Literal

import torch
from transformers import CompileConfig

from vlm_lightning.models.acceleration import uncompiled_layers
from vlm_lightning.patches.merged_lora import merged_lora

GenerationCache = Literal["auto", "static", "dynamic"]
DecodingCompiler = Literal["inductor", "cudagraphs"]

#: how the static-cache decoding step compiles unless a caller says otherwise
DEFAULT_DECODING_COMPILER: DecodingCompiler = "inductor"

#: static caches are sized in steps of this many positions, so that a run compiles its decoding step for a
#: few cache lengths only (transformers keeps the longest cache length seen for later calls)
CACHE_LENGTH_STEP = 256


def static_cache_length(prompt_width: int, max_new_tokens: int, step: int = CACHE_LENGTH_STEP) -> int:
    """The static cache length for a batch: prompt + new tokens, rounded up to a multiple of ``step``."""
    return -(-(prompt_width + max_new_tokens) // step) * step


def decoding_compile_config(compiler: DecodingCompiler) -> CompileConfig:
    """How transformers compiles the static-cache decoding step (``generate``'s ``compile_config``).

    ``inductor`` is transformers' default: generated kernels replayed as CUDA graphs (``reduce-overhead``),
    whose code generation takes seconds on a cold compiler cache. ``cudagraphs`` replays PyTorch's own eager
    kernels as CUDA graphs: no kernels to generate, so the first batch is ready sooner.
    """
    if compiler == "cudagraphs":
        return CompileConfig(backend="cudagraphs", mode=None)
    return CompileConfig()


def uses_static_cache(model: torch.nn.Module, setting: GenerationCache, collective: bool = False) -> bool:
    """Whether to decode with a static cache (which transformers compiles, with CUDA graphs, on CUDA).

    ``auto`` is on for a model on CUDA, except quantized bases that cannot compile (bitsandbytes 4-bit) and
    sharded models whose forward is collective (FSDP): there the dynamic cache, eager, is the faster path.
    """
    if setting != "auto":
        return setting == "static"
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cuda" or collective:
        return False
    quantizer = getattr(model, "hf_quantizer", None)
    return quantizer is None or bool(getattr(quantizer, "is_compileable", False))


class StaticCacheChoice:
    """Decides per batch whether to decode with a static cache, for one evaluation run or predictor.

    ``uses_static_cache`` for the setting and device, except under ``auto`` for a batch smaller than the widest
    one seen (the last batch of a split): it would compile the decoding step once more, eager is faster.
    """

    def __init__(self) -> None:
        self.widest = 0

    def __call__(
        self, model: torch.nn.Module, setting: GenerationCache, rows: int, collective: bool = False
    ) -> bool:
        self.widest = max(self.widest, rows)
        static = uses_static_cache(model, setting, collective)
        return static and not (setting == "auto" and rows < self.widest)


def end_of_turn_ids(tokenizer: Any, end_of_turn: str) -> list[int]:
    """Token ids that stop generation: the family's end-of-turn token and the tokenizer's eos."""
    ids = []
    eot = tokenizer.convert_tokens_to_ids(end_of_turn)
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        ids.append(eot)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def with_checkpoint_stops(model: torch.nn.Module, stop_ids: list[int]) -> list[int]:
    """``stop_ids`` plus the checkpoint's own ``generation_config.eos_token_id`` (Qwen's Instruct models also
    stop at ``<|endoftext|>``): passing ``eos_token_id`` to ``generate`` replaces those, it does not add to them."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    extra = [eos] if isinstance(eos, int) else list(eos or [])
    return list(dict.fromkeys([*stop_ids, *extra]))


@torch.no_grad()
def generate_batch(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    tokenizer: Any,
    stop_ids: list[int],
    max_new_tokens: int = 256,
    merge_lora: bool = True,
    static_cache: bool = False,
    decoding_compiler: DecodingCompiler = DEFAULT_DECODING_COMPILER,
    **generation_kwargs: Any,
) -> tuple[list[str], torch.Tensor]:
    """Generate for a left-padded batch; return decoded texts (special tokens removed) and new token ids.

    With ``merge_lora`` each LoRA projection runs as one merged linear layer while generating
    (``patches.merged_lora``: the stored weights are untouched; costs one copy of the merged weights).
    With ``static_cache`` the key / value cache has a fixed length (``static_cache_length``), so that
    transformers compiles the decoding step once per cache length on CUDA; greedy tokens equal the dynamic
    cache's in fp32 (tests/test_generation.py); ``decoding_compiler`` picks how
    (``decoding_compile_config``). Regionally compiled layers run uncompiled while generating.
    """
    stops = with_checkpoint_stops(model, stop_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    # a key / value cache even when the checkpoint's config says ``use_cache: false`` (as many fine-tuned
    # checkpoints saved after activation checkpointing do): without one every new token re-reads the prompt
    kwargs: dict[str, Any] = {"do_sample": False, "num_beams": 1, "use_cache": True}
    kwargs.update(generation_kwargs)
    if static_cache:
        kwargs.setdefault("cache_implementation", "static")
        kwargs.setdefault("max_cache_len", static_cache_length(inputs["input_ids"].shape[1], max_new_tokens))
        kwargs.setdefault("compile_config", decoding_compile_config(decoding_compiler))
    if not kwargs.get("do_sample"):
        kwargs.pop("temperature", None)
        kwargs.pop("top_p", None)
        kwargs.pop("min_p", None)
    with uncompiled_layers(model), merged_lora(model, enabled=merge_lora):
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=pad,
            **kwargs,
        )
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [t.strip() for t in texts], new_tokens
