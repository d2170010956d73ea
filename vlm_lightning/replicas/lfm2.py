"""Tiny LFM2-VL replica (real Lfm2Vl classes, byte tokenizer)."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Lfm2VlConfig,
    Lfm2VlForConditionalGeneration,
    Lfm2VlImageProcessor,
    Lfm2VlProcessor,
)

from vlm_lightning.replicas import common

# LiquidAI/LFM2-VL-450M and -1.6B: ChatML-like with a leading bos, one <image> per image part,
# no default system prompt.
LFM2_VL_CHAT_TEMPLATE = (
    "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def build_lfm2_vl(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny LFM2-VL: real Lfm2VlForConditionalGeneration + Lfm2VlProcessor, byte tokenizer.

    Hybrid LM (conv blocks and attention blocks alternate; the last block is attention), SigLIP2
    NaFlex vision tower with patch 16, pixel-unshuffle by 2 (32 px per image token). Image splitting
    stays on as in the real checkpoint but with 64 px tiles: a 300x400 image becomes 2x2 tiles of 4
    tokens plus a 12-token thumbnail.
    """

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
    tokenizer = common.byte_level_tokenizer(
        specials, bos="<|startoftext|>", eos="<|im_end|>", pad="<|pad|>", chat_template=LFM2_VL_CHAT_TEMPLATE
    )
    ids = common.token_ids(tokenizer, specials)
    layer_types = ["full_attention" if i % 2 or i == layers - 1 else "conv" for i in range(layers)]
    config = Lfm2VlConfig(
        text_config=common.tiny_text_config(
            common.padded_vocab_size(tokenizer),
            hidden_size,
            layers,
            model_type="lfm2",
            block_auto_adjust_ff_dim=False,
            layer_types=layer_types,
            bos_token_id=ids["<|startoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|pad|>"],
        ),
        vision_config=common.tiny_vision_config(
            model_type="siglip2_vision_model", patch_size=16, num_patches=64, vision_use_head=False
        ),
        image_token_id=ids["<image>"],
        projector_hidden_size=hidden_size * 2,
        downsample_factor=2,
    )
    model = common.random_model(Lfm2VlForConditionalGeneration, config, seed=seed)
    common.set_generation_ids(model, eos=ids["<|im_end|>"], pad=ids["<|pad|>"], bos=ids["<|startoftext|>"])
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
        **common.half_normalization(),
    )
    processor = Lfm2VlProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=LFM2_VL_CHAT_TEMPLATE
    )
    return common.save_replica(model, processor, out_dir)
