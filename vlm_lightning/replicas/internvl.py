"""Tiny InternVL3 / InternVL3.5 (HF-native, model_type internvl) replica (real classes, byte tokenizer)."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    PreTrainedTokenizerFast,
)

from vlm_lightning.replicas import common

# OpenGVLab/InternVL3-1B-hf (and the other -hf / -HF conversions): the template written by transformers'
# src/transformers/models/internvl/convert_internvl_weights_to_hf.py — ChatML with no default system prompt,
# "<IMG_CONTEXT>\n" per image part (the processor expands it to <img><IMG_CONTEXT>*N</img>), "<video>\n" per
# video part, <|im_end|> closing every turn.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# the Qwen2 specials, then the tokens the conversion script adds (<img>, </img>, <IMG_CONTEXT>, <quad>...)
INTERNVL_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<video>",
]

# InternVLProcessor reads these named tokens (and their ids) from the tokenizer
INTERNVL_NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

# 32 px tiles, patch 8 -> 4x4 patches, pixel shuffle 0.5 -> 2x2 = 4 image tokens per tile; up to 4 tiles
# plus the thumbnail (20 tokens) per image
INTERNVL_TILE = 32
INTERNVL_PATCH = 8
INTERNVL_IMAGE_SEQ_LEN = (INTERNVL_TILE // INTERNVL_PATCH // 2) ** 2
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _internvl_tokenizer() -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    base = common.byte_level_tokenizer(INTERNVL_SPECIAL_TOKENS, eos="<|im_end|>", pad="<|endoftext|>")
    # wrapped again to declare the named image tokens (saved in tokenizer_config.json as in the real one); the
    # second wrap also keeps null bos / unk entries out of tokenizer_config.json
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(INTERNVL_NAMED_TOKENS),
    )
    tokenizer.chat_template = INTERNVL_CHAT_TEMPLATE
    return tokenizer, common.token_ids(tokenizer, INTERNVL_SPECIAL_TOKENS)


def build_internvl(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny InternVL3 (InternVL3-1B-hf style): InternVLForConditionalGeneration + InternVLProcessor.

    Qwen2 LM, one-layer InternViT (32 px tiles, patch 8, CLS token dropped), pixel shuffle 0.5 and the
    LayerNorm + 2-layer MLP projector; GotOcr2ImageProcessor crops each image into 1..4 tiles plus a
    thumbnail, 4 image tokens per tile (<= 20 per image). Untied embeddings (the real 1B ties them; with a
    byte vocabulary a tied head makes the random replica repeat one token whatever the input).
    """

    tokenizer, ids = _internvl_tokenizer()
    config = InternVLConfig(
        text_config=common.tiny_text_config(
            common.padded_vocab_size(tokenizer),
            hidden_size,
            layers,
            model_type="qwen2",
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=common.tiny_vision_config(
            image_size=INTERNVL_TILE, patch_size=INTERNVL_PATCH, attention_bias=True
        ),
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=INTERNVL_IMAGE_SEQ_LEN,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    model = common.random_model(InternVLForConditionalGeneration, config, seed=seed)
    common.set_generation_ids(
        model, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"], bos=ids["<|endoftext|>"]
    )
    tile = {"height": INTERNVL_TILE, "width": INTERNVL_TILE}
    image_processor = GotOcr2ImageProcessor(
        size=tile,
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    video_processor = InternVLVideoProcessor(size=tile, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=INTERNVL_IMAGE_SEQ_LEN,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    return common.save_replica(model, processor, out_dir)
