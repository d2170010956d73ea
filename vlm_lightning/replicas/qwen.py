"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL replicas (real classes, byte or real Qwen2 BPE tokenizer).

The chat templates live in ``qwen_templates`` and the pieces shared with Qwen3.5, LFM3-VL and the real-size
Qwen2-VL in ``qwen_common``; both are imported here, so ``qwen.QWEN2_VL_CHAT_TEMPLATE`` and the like resolve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from vlm_lightning.replicas import common
from vlm_lightning.replicas.qwen_bpe import QWEN_EMBEDDING_ROWS, qwen_tokenizer
from vlm_lightning.replicas.qwen_common import (
    QWEN_SPECIAL_TOKENS,
    qwen2_style_processors,
    qwen3_style_image_processors,
    qwen_mrope_section,
    qwen_vision_config,
    qwen_vision_token_ids,
)
from vlm_lightning.replicas.qwen_templates import (
    QWEN2_5_VL_CHAT_TEMPLATE,
    QWEN2_VL_CHAT_TEMPLATE,
    QWEN3_VL_CHAT_TEMPLATE,
)

#: tokenizers a Qwen replica can be built with: "byte" (256 byte symbols, no merges; ~600 embedding rows) or
#: "qwen" (the real Qwen2-family BPE from the ``qwen-tokenizer`` dev dependency, ``replicas/qwen_bpe.py``: real
#: ids, 151,936 embedding rows tied to the output layer as in the 2B/3B checkpoints; 151,936 x hidden fp32 =
#: 19.4 MB at hidden 32, 38.9 MB at hidden 64)
QWEN_TOKENIZERS = ("byte", "qwen")
REAL_TOKENIZER_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@dataclass(frozen=True)
class _QwenTokenizer:
    """A Qwen replica's tokenizer with what the config and the generation config take from it."""

    tokenizer: PreTrainedTokenizerFast
    ids: dict[str, int]  # id of each of QWEN_SPECIAL_TOKENS
    vocab_size: int  # the config's vocab_size (embedding rows)
    tie: bool  # tie_word_embeddings
    generation_eos: int | list[int]  # generation_config eos_token_id


def _qwen_tokenizer(kind: str, family: str, template: str) -> _QwenTokenizer:
    """The tokenizer of a Qwen replica: the byte-level one or the real Qwen2 BPE (``QWEN_TOKENIZERS``).

    With the real tokenizer the generation config stops at ``<|im_end|>`` and ``<|endoftext|>``, as the
    Instruct checkpoints' ``generation_config.json`` do (``eos_token_id: [151645, 151643]``).
    """
    if kind == "byte":
        tokenizer = common.byte_level_tokenizer(
            QWEN_SPECIAL_TOKENS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=template
        )
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        vocab_size, tie = common.padded_vocab_size(tokenizer), False
    elif kind == "qwen":
        tokenizer = qwen_tokenizer(family, chat_template=template)
        eos = [
            tokenizer.convert_tokens_to_ids("<|im_end|>"),
            tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        ]
        vocab_size, tie = QWEN_EMBEDDING_ROWS, True
    else:
        raise ValueError(
            f"unknown tokenizer '{kind}' for a Qwen replica; known: {', '.join(QWEN_TOKENIZERS)}"
        )
    ids = common.token_ids(tokenizer, QWEN_SPECIAL_TOKENS)
    return _QwenTokenizer(tokenizer, ids, vocab_size, tie, eos)


def _special_ids(tok: _QwenTokenizer) -> dict[str, int]:
    """bos / eos / pad fields of a Qwen2-style text config."""
    return {
        "bos_token_id": tok.ids["<|endoftext|>"],
        "eos_token_id": tok.ids["<|im_end|>"],
        "pad_token_id": tok.ids["<|endoftext|>"],
    }


def _save(
    model_cls: Any, config: Any, processor: Any, out_dir: Path, *, seed: int, tok: _QwenTokenizer, bos: bool
) -> Path:
    """Seeded random weights of ``config``, the generation ids (bos only when ``bos``), saved with ``processor``."""
    endoftext = tok.ids["<|endoftext|>"]
    model = common.random_model(model_cls, config, seed=seed)
    common.set_generation_ids(model, eos=tok.generation_eos, pad=endoftext, bos=endoftext if bos else None)
    return common.save_replica(model, processor, out_dir)


def build_qwen2_vl(
    out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0, tokenizer: str = "byte"
) -> Path:
    """Tiny Qwen2-VL: real Qwen2VLForConditionalGeneration + Qwen2VLProcessor, byte tokenizer.

    ``tokenizer="qwen"``: the real Qwen2 BPE tokenizer and vocabulary size instead (see ``QWEN_TOKENIZERS``).
    """
    tok = _qwen_tokenizer(tokenizer, "qwen2_vl", QWEN2_VL_CHAT_TEMPLATE)
    rope = {
        "rope_type": "default",
        "mrope_section": qwen_mrope_section(hidden_size // 4),
        "rope_theta": 10000.0,
    }
    config = Qwen2VLConfig(
        text_config=common.tiny_text_config(
            tok.vocab_size, hidden_size, layers, rope_parameters=rope, **_special_ids(tok)
        ),
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": hidden_size,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **qwen_vision_token_ids(tok.ids),
        tie_word_embeddings=tok.tie,
    )
    size = {"shortest_edge": 56 * 56, "longest_edge": 224 * 224}
    processor = Qwen2VLProcessor(
        tokenizer=tok.tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE, **qwen2_style_processors(size)
    )
    return _save(Qwen2VLForConditionalGeneration, config, processor, out_dir, seed=seed, tok=tok, bos=False)


def build_qwen2_5_vl(
    out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0, tokenizer: str = "byte"
) -> Path:
    """Tiny Qwen2.5-VL: real Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor, byte tokenizer.

    Vision patch 14, merge 2 (28 px per image token), 4..64 image tokens; windowed vision attention
    with the one vision block listed as a full-attention block. ``tokenizer="qwen"``: the real Qwen2 BPE
    tokenizer and vocabulary size instead (see ``QWEN_TOKENIZERS``).
    """
    tok = _qwen_tokenizer(tokenizer, "qwen2_5_vl", QWEN2_5_VL_CHAT_TEMPLATE)
    rope = {
        "rope_type": "default",
        "mrope_section": qwen_mrope_section(hidden_size // 4),
        "rope_theta": 1000000.0,
    }
    config = Qwen2_5_VLConfig(
        text_config=common.tiny_text_config(
            tok.vocab_size,
            hidden_size,
            layers,
            max_window_layers=layers,
            rope_parameters=rope,
            **_special_ids(tok),
        ),
        vision_config=qwen_vision_config(
            hidden_size, patch_size=14, window_size=56, fullatt_block_indexes=[0]
        ),
        **qwen_vision_token_ids(tok.ids),
        tie_word_embeddings=tok.tie,
    )
    size = {"shortest_edge": 56 * 56, "longest_edge": 224 * 224}
    processor = Qwen2_5_VLProcessor(
        tokenizer=tok.tokenizer, chat_template=QWEN2_5_VL_CHAT_TEMPLATE, **qwen2_style_processors(size)
    )
    return _save(Qwen2_5_VLForConditionalGeneration, config, processor, out_dir, seed=seed, tok=tok, bos=True)


def build_qwen3_vl(
    out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0, tokenizer: str = "byte"
) -> Path:
    """Tiny Qwen3-VL: real Qwen3VLForConditionalGeneration + Qwen3VLProcessor, byte tokenizer.

    Vision patch 16, merge 2 (32 px per image token), 4..64 image tokens, interleaved mrope,
    deepstack from the single vision block, explicit head_dim. ``tokenizer="qwen"``: the real Qwen2 BPE
    tokenizer and vocabulary size instead (see ``QWEN_TOKENIZERS``).
    """
    tok = _qwen_tokenizer(tokenizer, "qwen3_vl", QWEN3_VL_CHAT_TEMPLATE)
    head_dim = hidden_size // 4
    rope = {
        "rope_type": "default",
        "mrope_section": qwen_mrope_section(head_dim),
        "mrope_interleaved": True,
        "rope_theta": 5000000.0,
    }
    config = Qwen3VLConfig(
        text_config=common.tiny_text_config(
            tok.vocab_size,
            hidden_size,
            layers,
            head_dim=head_dim,
            rope_parameters=rope,
            pad_token_id=tok.ids["<|endoftext|>"],
        ),
        vision_config=qwen_vision_config(
            hidden_size, patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0]
        ),
        **qwen_vision_token_ids(tok.ids),
        tie_word_embeddings=tok.tie,
    )
    size = {"shortest_edge": 64 * 64, "longest_edge": 256 * 256}
    processor = Qwen3VLProcessor(
        tokenizer=tok.tokenizer, chat_template=QWEN3_VL_CHAT_TEMPLATE, **qwen3_style_image_processors(size)
    )
    return _save(Qwen3VLForConditionalGeneration, config, processor, out_dir, seed=seed, tok=tok, bos=True)
