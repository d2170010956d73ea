"""Tiny PaddleOCR-VL replica (real PaddleOCRVL classes, byte tokenizer)."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    PaddleOCRVLConfig,
    PaddleOCRVLForConditionalGeneration,
    PaddleOCRVLImageProcessor,
    PaddleOCRVLProcessor,
    PreTrainedTokenizerFast,
)

from vlm_lightning.replicas import common

# PaddlePaddle/PaddleOCR-VL chat_template.jinja, the revision for transformers' native PaddleOCRVLProcessor
# (as copied in public tiny-checkpoint scripts and GGUF ports): ERNIE envelope "<|begin_of_sentence|>User: "
# + images (hard-coded markers, since the tokenizer's image_token is passed to templates as a variable) +
# text + "\n", then "Assistant:\n" + answer + "</s>". The first (remote-code) revision rendered
# "Assistant: " and took the image markers from an ``image_token`` variable.
PADDLEOCR_VL_CHAT_TEMPLATE = r"""{%- if not add_generation_prompt is defined -%}
    {%- set add_generation_prompt = true -%}
{%- endif -%}
{%- if not cls_token is defined -%}
    {%- set cls_token = "<|begin_of_sentence|>" -%}
{%- endif -%}
{%- if not eos_token is defined -%}
    {%- set eos_token = "</s>" -%}
{%- endif -%}
{{- cls_token -}}
{%- for message in messages -%}
    {%- if message["role"] == "user" -%}
        {{- "User: " -}}
        {%- for content in message["content"] -%}
            {%- if content["type"] == "image" -%}
                {{ "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>" }}
            {%- endif -%}
        {%- endfor -%}
        {%- for content in message["content"] -%}
            {%- if content["type"] == "text" -%}
                {{ content["text"] }}
            {%- endif -%}
        {%- endfor -%}
        {{ "\n" -}}
    {%- elif message["role"] == "assistant" -%}
        {{- "Assistant:\n" -}}
        {%- for content in message["content"] -%}
            {%- if content["type"] == "text" -%}
                {{ content["text"] }}
            {%- endif -%}
        {%- endfor -%}
        {{ eos_token -}}
    {%- elif message["role"] == "system" -%}
        {%- for content in message["content"] -%}
            {%- if content["type"] == "text" -%}
                {{ content["text"] + "\n" }}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "Assistant:\n" -}}
{%- endif -%}
"""

# the real tokenizer's special tokens (ids there: <unk> 0 = pad, <s> 1, </s> 2 = eos, <|end_of_sentence|>
# 100272, <|begin_of_sentence|> 100273, <|IMAGE_PLACEHOLDER|> 100295, <|IMAGE_START|> 101305,
# <|IMAGE_END|> 101306); here they follow the 256 byte symbols
PADDLEOCR_VL_SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "</s>",
    "<|end_of_sentence|>",
    "<|begin_of_sentence|>",
    "<|IMAGE_PLACEHOLDER|>",
    "<|IMAGE_START|>",
    "<|IMAGE_END|>",
    "<|VIDEO_PLACEHOLDER|>",
]


def _paddleocr_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer with the real named tokens; ``image_token`` (read by the processor) is saved."""
    return common.byte_level_tokenizer(
        PADDLEOCR_VL_SPECIAL_TOKENS,
        bos="<s>",
        eos="</s>",
        pad="<unk>",
        unk="<unk>",
        cls_token="<|begin_of_sentence|>",
        sep_token="<|end_of_sentence|>",
        extra_special_tokens={"image_token": "<|IMAGE_PLACEHOLDER|>"},
        chat_template=PADDLEOCR_VL_CHAT_TEMPLATE,
    )


def build_paddleocr_vl(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny PaddleOCR-VL: real PaddleOCRVLForConditionalGeneration + PaddleOCRVLProcessor, byte tokenizer.

    ERNIE-4.5-style LM with 3-D M-RoPE (mrope_section scaled to head_dim 16) and head_dim x heads wider
    than hidden as in the real 0.3B LM (128 x 16 = 2048 vs 1024); NaViT vision tower with patch 14 and a
    2x2 merge in the projector (28 px per image token), 4..16 image tokens per image, mean/std 0.5 as in
    the checkpoint's preprocessor. Untied output layer (tie_word_embeddings false in the real config).
    """
    tokenizer = _paddleocr_tokenizer()
    ids = common.token_ids(tokenizer, PADDLEOCR_VL_SPECIAL_TOKENS)
    heads, head_dim = 4, 2 * hidden_size // 4
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # real: [16, 24, 24] of 64
    config = PaddleOCRVLConfig(
        text_config=common.tiny_text_config(
            common.padded_vocab_size(tokenizer),
            hidden_size,
            layers,
            num_attention_heads=heads,
            head_dim=head_dim,
            rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 500000.0},
            use_bias=False,
            pad_token_id=ids["<unk>"],
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
        ),
        vision_config=common.tiny_vision_config(image_size=56, patch_size=14, spatial_merge_size=2),
        image_token_id=ids["<|IMAGE_PLACEHOLDER|>"],
        video_token_id=ids["<|VIDEO_PLACEHOLDER|>"],
        vision_start_token_id=ids["<|IMAGE_START|>"],
        vision_end_token_id=ids["<|IMAGE_END|>"],
        tie_word_embeddings=False,
    )
    model = common.random_model(PaddleOCRVLForConditionalGeneration, config, seed=seed)
    common.set_generation_ids(model, eos=ids["</s>"], pad=ids["<unk>"], bos=ids["<s>"])
    image_processor = PaddleOCRVLImageProcessor(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
        patch_size=14,
        merge_size=2,
        temporal_patch_size=1,
        **common.half_normalization(),
    )
    processor = PaddleOCRVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=PADDLEOCR_VL_CHAT_TEMPLATE
    )
    return common.save_replica(model, processor, out_dir)
