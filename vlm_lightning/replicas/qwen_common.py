"""Qwen-style pieces shared by the Qwen2/2.5/3-VL, Qwen3.5 and LFM3-VL replicas and the real-size Qwen2-VL.

Special tokens, the config fields naming the vision tokens, the M-RoPE section of a head, the tiny vision
tower of the Qwen2.5/3-style replicas, and the image / video processors of Qwen2-style (patch 14) and
Qwen3-style (patch 16) vision.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3VLVideoProcessor

from vlm_lightning.replicas import common

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def qwen_vision_token_ids(ids: dict[str, int]) -> dict[str, int]:
    """The config fields naming Qwen-style vision tokens (Qwen2/2.5/3-VL, Qwen3.5, LFM3-VL), from token ids."""
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def qwen_mrope_section(head_dim: int) -> list[int]:
    """M-RoPE split of a head's rotary pairs into (temporal, height, width): the remainder goes to time."""
    half = head_dim // 2
    return [half - 2 * (half // 3), half // 3, half // 3]


def qwen_vision_config(hidden_size: int, *, patch_size: int, **fields: Any) -> dict[str, Any]:
    """A one-block Qwen2.5/3-style vision tower (32 wide, 2 heads, merge 2) projecting to ``hidden_size``."""
    return {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": hidden_size,
        **fields,
    }


def qwen2_style_processors(size: dict[str, int]) -> dict[str, Any]:
    """Image and video processors of Qwen2-style vision (patch 14, merge 2: 28 px per token, CLIP mean/std)."""
    return {
        "image_processor": Qwen2VLImageProcessor(size=size),
        "video_processor": Qwen2VLVideoProcessor(size=size),
    }


def qwen3_style_image_processors(size: dict[str, int]) -> dict[str, Any]:
    """Image and video processors of Qwen3-style vision (patch 16, merge 2: 32 px per token, mean/std 0.5)."""
    return {
        "image_processor": Qwen2VLImageProcessor(
            size=size, patch_size=16, merge_size=2, temporal_patch_size=2, **common.half_normalization()
        ),
        "video_processor": Qwen3VLVideoProcessor(
            size=size, patch_size=16, merge_size=2, temporal_patch_size=2
        ),
    }
