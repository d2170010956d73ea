"""Batched, left-padded greedy generation and decoding of the new tokens only."""

from __future__ import annotations

from typing import Any

import torch

from vlm_lightning.patches.merged_lora import merged_lora


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
    **generation_kwargs: Any,
) -> tuple[list[str], torch.Tensor]:
    """Generate for a left-padded batch; return decoded texts (special tokens removed) and new token ids.

    With ``merge_lora`` each LoRA projection runs as one merged linear layer while generating
    (``patches.merged_lora``: the stored weights are untouched; costs one copy of the merged weights).
    """
    stops = with_checkpoint_stops(model, stop_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    kwargs: dict[str, Any] = {"do_sample": False, "num_beams": 1}
    kwargs.update(generation_kwargs)
    if not kwargs.get("do_sample"):
        kwargs.pop("temperature", None)
        kwargs.pop("top_p", None)
        kwargs.pop("min_p", None)
    with merged_lora(model, enabled=merge_lora):
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
