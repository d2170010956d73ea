"""Tiny LFM3-VL replica (real Lfm3Vl classes, byte tokenizer)."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Lfm3VlConfig,
    Lfm3VlForConditionalGeneration,
    Lfm3VlProcessor,
)

from vlm_lightning.replicas import common
from vlm_lightning.replicas.qwen_common import (
    QWEN_SPECIAL_TOKENS,
    qwen3_style_image_processors,
    qwen_vision_token_ids,
)

# LiquidAI/LFM3-VL-2B: the checkpoint's chat_template.jinja could not be read from here (no hub access, and no
# public copy of it was found). This template is reconstructed from what is public: the LFM2 / LFM2.5 ChatML
# form (docs.liquid.ai "Chat template": a leading <|startoftext|>, "<|im_start|>role\n...<|im_end|>\n", no
# default system prompt) and transformers 5.23's Lfm3VlProcessor (a Qwen3-VL processor: it expands
# <|image_pad|> and, absent tokenizer attributes, uses <|vision_start|> / <|vision_end|> / <|video_pad|>;
# Lfm3VlConfig has vision_start/vision_end ids). The real template may differ in details (tool calls, and a
# third-party model card says LFM3 "thinks by default", i.e. possibly a <think> block after the generation
# prompt): re-check against the checkpoint before relying on the exact prompt.
LFM3_VL_CHAT_TEMPLATE = (
    "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# LFM2's pad and start-of-text tokens, then the Qwen ChatML and vision tokens.
LFM3_SPECIAL_TOKENS = ["<|pad|>", "<|startoftext|>", *QWEN_SPECIAL_TOKENS]


def _text_layer_types(layers: int) -> list[str]:
    """LFM3's three layer kinds, each present: conv blocks, then sliding-window and full attention."""
    n = max(layers, 3)
    kinds = ["conv"] * n
    kinds[-1] = "full_attention"
    kinds[-2] = "sliding_attention"
    return kinds


def build_lfm3_vl(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny LFM3-VL: real Lfm3VlForConditionalGeneration + Lfm3VlProcessor, byte tokenizer.

    Hybrid LM with LFM3's three layer kinds (gated short convolutions of 7 taps, sliding-window attention
    with a 32-token window so that it bites on replica-length prompts, full attention with the proportional
    partial rotary embedding), so at least 3 text layers whatever ``layers`` says. Vision tower: one gated
    2D-conv layer and one bidirectional attention layer, patch 16, merge 2 (32 px per image token), images
    resized to 4..16 tokens by the Qwen2-VL image processor, as in the real processor config.
    """

    specials = LFM3_SPECIAL_TOKENS
    tokenizer = common.byte_level_tokenizer(
        specials, bos="<|startoftext|>", eos="<|im_end|>", pad="<|pad|>", chat_template=LFM3_VL_CHAT_TEMPLATE
    )
    ids = common.token_ids(tokenizer, specials)
    heads = 4
    config = Lfm3VlConfig(
        text_config=common.tiny_text_config(
            common.padded_vocab_size(tokenizer),
            hidden_size,
            len(_text_layer_types(layers)),
            model_type="lfm3",
            layer_types=_text_layer_types(layers),
            num_attention_heads=heads,
            head_dim=hidden_size // heads,
            sliding_window=32,
            bos_token_id=ids["<|startoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|pad|>"],
        ),
        vision_config=common.tiny_vision_config(
            model_type="lfm3_vl_vision",
            num_hidden_layers=2,
            layer_types=["conv", "full_attention"],
            num_key_value_heads=1,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        **qwen_vision_token_ids(ids),
        projector_hidden_size=hidden_size * 2,
        tie_word_embeddings=True,
    )
    model = common.random_model(Lfm3VlForConditionalGeneration, config, seed=seed)
    common.set_generation_ids(model, eos=ids["<|im_end|>"], pad=ids["<|pad|>"], bos=ids["<|startoftext|>"])
    unit = 32 * 32  # pixels per image token: (patch 16 x merge 2)^2
    size = {"shortest_edge": 4 * unit, "longest_edge": 16 * unit}
    processor = Lfm3VlProcessor(
        tokenizer=tokenizer, chat_template=LFM3_VL_CHAT_TEMPLATE, **qwen3_style_image_processors(size)
    )
    return common.save_replica(model, processor, out_dir)
