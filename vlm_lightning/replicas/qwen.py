"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL replicas (real classes, byte or real Qwen2 BPE tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from vlm_lightning.replicas.common import (
    byte_level_tokenizer,
    padded_vocab_size,
    save_replica,
    set_generation_ids,
)
from vlm_lightning.replicas.qwen_bpe import QWEN_EMBEDDING_ROWS, qwen_tokenizer

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-VL ships the same processor chat template as Qwen2-VL (default system prompt included).
QWEN2_5_VL_CHAT_TEMPLATE = QWEN2_VL_CHAT_TEMPLATE

# Qwen3-VL-*-Instruct: tool-aware ChatML, no default system prompt, images via
# <|vision_start|><|image_pad|><|vision_end|> (compiled with trim_blocks/lstrip_blocks by transformers).
QWEN3_VL_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


#: tokenizers a Qwen replica can be built with: "byte" (256 byte symbols, no merges; ~600 embedding rows) or
#: "qwen" (the real Qwen2-family BPE from the ``qwen-tokenizer`` dev dependency, ``replicas/qwen_bpe.py``: real
#: ids, 151,936 embedding rows tied to the output layer as in the 2B/3B checkpoints; 151,936 x hidden fp32 =
#: 19.4 MB at hidden 32, 38.9 MB at hidden 64)
QWEN_TOKENIZERS = ("byte", "qwen")
REAL_TOKENIZER_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def _qwen_tokenizer(
    kind: str, family: str, template: str, byte_specials: list[str]
) -> tuple[PreTrainedTokenizerFast, int, bool, int | list[int]]:
    """(tokenizer, config vocab_size, tie_word_embeddings, generation_config eos) of a Qwen replica.

    With the real tokenizer the generation config stops at ``<|im_end|>`` and ``<|endoftext|>``, as the
    Instruct checkpoints' ``generation_config.json`` do (``eos_token_id: [151645, 151643]``).
    """
    if kind == "byte":
        tokenizer = byte_level_tokenizer(byte_specials, eos="<|im_end|>", pad="<|endoftext|>")
        tokenizer.chat_template = template
        return tokenizer, padded_vocab_size(tokenizer), False, tokenizer.convert_tokens_to_ids("<|im_end|>")
    if kind == "qwen":
        tokenizer = qwen_tokenizer(family, chat_template=template)
        eos = [
            tokenizer.convert_tokens_to_ids("<|im_end|>"),
            tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        ]
        return tokenizer, QWEN_EMBEDDING_ROWS, True, eos
    raise ValueError(f"unknown tokenizer '{kind}' for a Qwen replica; known: {', '.join(QWEN_TOKENIZERS)}")


def build_qwen2_vl(
    out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0, tokenizer: str = "byte"
) -> Path:
    """Tiny Qwen2-VL: real Qwen2VLForConditionalGeneration + Qwen2VLProcessor, byte tokenizer.

    ``tokenizer="qwen"``: the real Qwen2 BPE tokenizer and vocabulary size instead (see ``QWEN_TOKENIZERS``).
    """

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tokenizer, vocab_size, tie, generation_eos = _qwen_tokenizer(
        tokenizer, "qwen2_vl", QWEN2_VL_CHAT_TEMPLATE, specials
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
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
        **qwen_vision_token_ids(ids),
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = generation_eos
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    size = {"shortest_edge": 56 * 56, "longest_edge": 224 * 224}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _qwen_mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    return [half - 2 * (half // 3), half // 3, half // 3]


def build_qwen2_5_vl(
    out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0, tokenizer: str = "byte"
) -> Path:
    """Tiny Qwen2.5-VL: real Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor, byte tokenizer.

    Vision patch 14, merge 2 (28 px per image token), 4..64 image tokens; windowed vision attention
    with the one vision block listed as a full-attention block. ``tokenizer="qwen"``: the real Qwen2 BPE
    tokenizer and vocabulary size instead (see ``QWEN_TOKENIZERS``).
    """

    tokenizer, vocab_size, tie, generation_eos = _qwen_tokenizer(
        tokenizer, "qwen2_5_vl", QWEN2_5_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    heads = 4
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "max_window_layers": layers,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": _qwen_mrope_section(hidden_size // heads),
                "rope_theta": 1000000.0,
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [0],
            "out_hidden_size": hidden_size,
        },
        **qwen_vision_token_ids(ids),
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    set_generation_ids(model, eos=generation_eos, pad=ids["<|endoftext|>"], bos=ids["<|endoftext|>"])
    size = {"shortest_edge": 56 * 56, "longest_edge": 224 * 224}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    return save_replica(model, processor, out_dir)


def build_qwen3_vl(
    out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0, tokenizer: str = "byte"
) -> Path:
    """Tiny Qwen3-VL: real Qwen3VLForConditionalGeneration + Qwen3VLProcessor, byte tokenizer.

    Vision patch 16, merge 2 (32 px per image token), 4..64 image tokens, interleaved mrope,
    deepstack from the single vision block, explicit head_dim. ``tokenizer="qwen"``: the real Qwen2 BPE
    tokenizer and vocabulary size instead (see ``QWEN_TOKENIZERS``).
    """

    tokenizer, vocab_size, tie, generation_eos = _qwen_tokenizer(
        tokenizer, "qwen3_vl", QWEN3_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    heads = 4
    head_dim = hidden_size // heads
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "head_dim": head_dim,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": _qwen_mrope_section(head_dim),
                "mrope_interleaved": True,
                "rope_theta": 5000000.0,
            },
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden_size,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        **qwen_vision_token_ids(ids),
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    set_generation_ids(model, eos=generation_eos, pad=ids["<|endoftext|>"], bos=ids["<|endoftext|>"])
    size = {"shortest_edge": 64 * 64, "longest_edge": 256 * 256}
    processor = Qwen3VLProcessor(
        tokenizer=tokenizer, chat_template=QWEN3_VL_CHAT_TEMPLATE, **qwen3_style_image_processors(size)
    )
    return save_replica(model, processor, out_dir)


def qwen3_style_image_processors(size: dict[str, int]) -> dict[str, Any]:
    """Image and video processors of Qwen3-style vision (patch 16, merge 2: 32 px per token, mean/std 0.5)."""
    half = [0.5, 0.5, 0.5]
    return {
        "image_processor": Qwen2VLImageProcessor(
            size=size, patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=half, image_std=half
        ),
        "video_processor": Qwen3VLVideoProcessor(
            size=size, patch_size=16, merge_size=2, temporal_patch_size=2
        ),
    }


def qwen_vision_token_ids(ids: dict[str, int]) -> dict[str, int]:
    """The config fields naming Qwen-style vision tokens (Qwen2/2.5/3-VL, Qwen3.5, LFM3-VL), from token ids."""
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
