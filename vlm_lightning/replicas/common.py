"""Pieces every offline replica shares: byte-level tokenizer, vocabulary padding, tiny text and vision
configs, mean/std 0.5 normalization, seeded random weights, generation ids, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def byte_level_tokenizer(
    special_tokens: list[str],
    *,
    bos: str | None = None,
    eos: str,
    pad: str,
    unk: str | None = None,
    chat_template: str | None = None,
    **named: Any,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the 256 byte symbols, no merges, and the given special tokens.

    ``named``: further ``PreTrainedTokenizerFast`` settings, such as the named tokens a processor reads
    (``mask_token``, ``extra_special_tokens``) or ``padding_side``.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special_tokens)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, **named
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def token_ids(tokenizer: PreTrainedTokenizerFast, tokens: list[str]) -> dict[str, int]:
    """The id of each of ``tokens``."""
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


def padded_vocab_size(tokenizer: PreTrainedTokenizerFast, multiple: int = 64) -> int:
    return -(-len(tokenizer) // multiple) * multiple


def tiny_text_config(vocab_size: int, hidden_size: int, layers: int, **fields: Any) -> dict[str, Any]:
    """A tiny LM's ``text_config``: 4 query / 2 key-value heads, MLP twice as wide, 4096 positions.

    ``fields`` add the family's own keys and override any of these (e.g. a wider MLP, one key-value head).
    """
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        **fields,
    }


def tiny_vision_config(**fields: Any) -> dict[str, Any]:
    """A tiny vision tower's ``vision_config``: one layer 32 wide, MLP 64, 2 heads.

    ``fields`` add the family's own keys (model type, image and patch size, ...) and override any of these.
    """
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        **fields,
    }


def half_normalization() -> dict[str, list[float]]:
    """Image processor mean and std of 0.5 per channel (pixels to [-1, 1])."""
    return {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def random_model(model_cls: Any, config: Any, *, seed: int) -> Any:
    """``model_cls`` with random weights of ``config``, drawn from ``seed``."""
    torch.manual_seed(seed)
    return model_cls(config)


def save_replica(model, processor, out_dir: Path) -> Path:
    """Save model and processor where ``from_pretrained`` finds them."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def set_generation_ids(model, *, eos: int | list[int], pad: int, bos: int | None = None) -> None:
    """The ids ``generate`` stops at, pads with and starts from."""
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    if bos is not None:
        model.generation_config.bos_token_id = bos
