"""The real-size architectures: each checkpoint's published numbers and the writer of its folder.

A writer pairs the numbers with a byte-level tokenizer holding the family's special tokens, writes the
processor (tokenizer, chat template, image processor) to a folder and returns the config, with real or, with
``shrink``, tiny dimensions. ``real_size`` builds folders and models from ``REAL_ARCHITECTURES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    Lfm2VlConfig,
    Lfm2VlImageProcessor,
    Lfm2VlProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLProcessor,
)

from vlm_lightning.replicas.common import byte_level_tokenizer, padded_vocab_size
from vlm_lightning.replicas.qwen_common import (
    QWEN_SPECIAL_TOKENS,
    qwen2_style_processors,
    qwen_vision_token_ids,
)
from vlm_lightning.replicas.qwen_templates import QWEN2_VL_CHAT_TEMPLATE

# --------------------------------------------------------------------------------------------
# Qwen2-VL-2B-Instruct
# Source: huggingface.co/Qwen/Qwen2-VL-2B-Instruct/blob/main/config.json (vision_config and the
# text fields below) and preprocessor_config.json (min_pixels 3136 = 56*56, patch 14, merge 2).
# Check: the built model has 2,208,985,600 parameters (tied embeddings), the published size.
# --------------------------------------------------------------------------------------------
QWEN2_VL_2B_TEXT = {
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
}
QWEN2_VL_2B_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 1536,  # the merger projects to the LM width
    "num_heads": 16,
    "mlp_ratio": 4,
    "hidden_act": "quick_gelu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
# Qwen2-VL-7B-Instruct (huggingface.co/Qwen/Qwen2-VL-7B-Instruct/blob/main/config.json): the same vision
# tower merging into a 3584-wide LM; untied embeddings. Published size 8.29B parameters (8,291,375,616).
QWEN2_VL_7B_TEXT = {
    **QWEN2_VL_2B_TEXT,
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
}
QWEN2_VL_7B_VISION = {**QWEN2_VL_2B_VISION, "hidden_size": 3584}

# --------------------------------------------------------------------------------------------
# LFM2-VL-1.6B (LiquidAI/LFM2-VL-1.6B)
# Model card (huggingface.co/LiquidAI/LFM2-VL-1.6B): LM backbone LFM2-1.2B ("Parameters (LM only)
# 1.2B"), vision encoder "SigLIP2 NaFlex shape-optimized (400M)", vocab 65,536, bf16.
#
# Text = LFM2-1.2B, huggingface.co/LiquidAI/LFM2-1.2B/blob/main/config.json: hidden_size 2048,
# num_hidden_layers 16, num_attention_heads 32, num_key_value_heads 8, block_ff_dim 12288 with
# block_auto_adjust_ff_dim true, block_multiple_of 256, block_ffn_dim_multiplier 1.0 (so the SwiGLU
# width is 256 * ceil(int(2 * 12288 / 3) / 256) = 8192), full_attn_idxs [2, 5, 8, 10, 12, 14]
# (10 short-conv + 6 GQA blocks, as in transformers' docs/source/en/model_doc/lfm2.md), conv_L_cache 3,
# conv_bias false, norm_eps 1e-5, rope_theta 1e6, max_position_embeddings 128000, vocab_size 65536,
# tie_embedding true. transformers' Lfm2Config maps block_ff_dim -> intermediate_size.
#
# Vision = SigLIP2 so400m/16 NaFlex: hidden 1152, intermediate 4304, 27 layers, 16 heads, patch 16,
# num_patches 256, gelu_pytorch_tanh, layer_norm_eps 1e-6, vision_use_head false; top level
# vision_feature_layer -2, downsample_factor 2, projector_hidden_size 2560, projector_bias true,
# projector gelu, image_token_index 396 (the geometry of the checkpoint's config.json as quoted by the
# mlx-community/LFM2-VL-1.6B-4bit conversion; the LFM2-VL-450M config.json has the same top-level keys
# with the 86M base tower). The original remote code (modeling_lfm2_vl.py shipped with the checkpoint)
# slices ``encoder.layers[: vision_feature_layer + 1]``, so 26 of the 27 layers run; transformers'
# native Lfm2VlModel always uses the tower's last_hidden_state, so the replica has 26 layers: what
# runs in the real model. Image processor defaults (min/max image tokens 64/256, tile 512, encoder
# patch 16, thumbnail on) are transformers' Lfm2VlImageProcessor defaults = the checkpoint's.
# --------------------------------------------------------------------------------------------
LFM2_1_2B_TEXT = {
    "model_type": "lfm2",
    "vocab_size": 65536,
    "hidden_size": 2048,
    "intermediate_size": 12288,  # = block_ff_dim; auto-adjusted to 8192 inside Lfm2MLP
    "block_auto_adjust_ff_dim": True,
    "block_multiple_of": 256,
    "block_ffn_dim_multiplier": 1.0,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "layer_types": ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
    "conv_L_cache": 3,
    "conv_bias": False,
    "norm_eps": 1e-5,
    "max_position_embeddings": 128000,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
}
LFM2_VL_1_6B_VISION = {
    "model_type": "siglip2_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,  # 27-layer so400m tower, vision_feature_layer -2 -> 26 layers run
    "num_attention_heads": 16,
    "num_channels": 3,
    "patch_size": 16,
    "num_patches": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}
LFM2_VL_1_6B_TOP = {
    "projector_hidden_size": 2560,
    "projector_hidden_act": "gelu",
    "projector_bias": True,
    "projector_use_layernorm": True,
    "downsample_factor": 2,
}
LFM2_VL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LFM2_VL_SPECIALS = [
    "<|pad|>",
    "<|startoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "<|image_start|>",
    "<|image_end|>",
    "<|img_thumbnail|>",
    *[f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11)],
]


def _text_config(
    dims: dict[str, Any],
    tokenizer: PreTrainedTokenizerFast,
    shrink: bool,
    shrunk: dict[str, Any],
    *,
    bos: str,
    eos: str,
    pad: str,
) -> dict[str, Any]:
    """The checkpoint's text ``dims`` with the special token ids and no KV cache.

    With ``shrink``, tiny dimensions on top: the byte tokenizer's (padded) vocabulary, 64 wide, 4 query and
    2 key-value heads, and the family's ``shrunk`` fields (MLP width, layers, rope or layer kinds).
    """
    text = dict(dims)
    if shrink:
        text.update(
            vocab_size=padded_vocab_size(tokenizer),
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            **shrunk,
        )
    ids = tokenizer.convert_tokens_to_ids
    text.update(bos_token_id=ids(bos), eos_token_id=ids(eos), pad_token_id=ids(pad), use_cache=False)
    return text


def _qwen2_vl_2b(out_dir: Path, shrink: bool) -> Any:
    """Write the Qwen2-VL-2B processor; return its config (real or shrunk dims)."""
    return _qwen2_vl(out_dir, shrink, QWEN2_VL_2B_TEXT, QWEN2_VL_2B_VISION, tie=True)


def _qwen2_vl_7b(out_dir: Path, shrink: bool) -> Any:
    """Write the Qwen2-VL-7B processor; return its config (real or shrunk dims)."""
    return _qwen2_vl(out_dir, shrink, QWEN2_VL_7B_TEXT, QWEN2_VL_7B_VISION, tie=False)


def _qwen2_vl(out_dir: Path, shrink: bool, text_dims: dict, vision_dims: dict, tie: bool) -> Any:
    """A Qwen2-VL processor written to ``out_dir`` and the config of the given dimensions."""
    tokenizer = byte_level_tokenizer(QWEN_SPECIAL_TOKENS, eos="<|im_end|>", pad="<|endoftext|>")
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    shrunk_text = {
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
    }
    text = _text_config(
        text_dims, tokenizer, shrink, shrunk_text, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>"
    )
    vision = dict(vision_dims)
    if shrink:
        vision.update(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        **qwen_vision_token_ids(ids),
        tie_word_embeddings=tie,
    )
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    processor = Qwen2VLProcessor(
        tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE, **qwen2_style_processors(size)
    )
    processor.save_pretrained(out_dir)
    return config


def _lfm2_vl_1_6b(out_dir: Path, shrink: bool) -> Any:
    """Write the LFM2-VL-1.6B processor; return its config (real or shrunk dims)."""
    tokenizer = byte_level_tokenizer(LFM2_VL_SPECIALS, bos="<|startoftext|>", eos="<|im_end|>", pad="<|pad|>")
    tokenizer.chat_template = LFM2_VL_CHAT_TEMPLATE
    shrunk_text = {
        "intermediate_size": 192,
        "num_hidden_layers": 3,
        "layer_types": ["conv", "full_attention", "conv"],
    }
    text = _text_config(
        LFM2_1_2B_TEXT, tokenizer, shrink, shrunk_text, bos="<|startoftext|>", eos="<|im_end|>", pad="<|pad|>"
    )
    vision = dict(LFM2_VL_1_6B_VISION)
    top = dict(LFM2_VL_1_6B_TOP)
    if shrink:
        vision.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        top.update(projector_hidden_size=64)
    config = Lfm2VlConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
        **top,
    )
    processor = Lfm2VlProcessor(
        image_processor=Lfm2VlImageProcessor(), tokenizer=tokenizer, chat_template=LFM2_VL_CHAT_TEMPLATE
    )
    processor.save_pretrained(out_dir)
    return config


@dataclass(frozen=True)
class RealArchitecture:
    """One real-size architecture: which family it belongs to and how to write its folder."""

    name: str
    family: str
    checkpoint: str
    write: Callable[[Path, bool], Any]


REAL_ARCHITECTURES: dict[str, RealArchitecture] = {
    "qwen2_vl_2b": RealArchitecture("qwen2_vl_2b", "qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct", _qwen2_vl_2b),
    "qwen2_vl_7b": RealArchitecture("qwen2_vl_7b", "qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct", _qwen2_vl_7b),
    "lfm2_vl_1_6b": RealArchitecture("lfm2_vl_1_6b", "lfm2_vl", "LiquidAI/LFM2-VL-1.6B", _lfm2_vl_1_6b),
}
