"""Pieces every offline replica shares: byte-level tokenizer, vocabulary padding, tiny text config, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def byte_level_tokenizer(
    special_tokens: list[str], *, bos: str | None = None, eos: str, pad: str, unk: str | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the 256 byte symbols, no merges, and the given special tokens."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special_tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk
    )


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
