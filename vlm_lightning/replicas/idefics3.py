"""Tiny Idefics3 (SmolVLM v1) and SmolVLM2 replicas (real classes, byte tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from vlm_lightning.replicas.common import (
    byte_level_tokenizer,
    padded_vocab_size,
    save_replica,
    set_generation_ids,
    tiny_text_config,
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
        "text_config": tiny_text_config(
            padded_vocab_size(tokenizer),
            hidden_size,
            layers,
            model_type="llama",
            rms_norm_eps=1e-5,
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<end_of_utterance>"],
            pad_token_id=ids["<|im_end|>"],
        ),
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

    tokenizer, ids = _idefics3_tokenizer(IDEFICS3_CHAT_TEMPLATE)
    config = Idefics3Config(**_idefics3_configs(tokenizer, ids, hidden_size, layers))
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    set_generation_ids(model, eos=ids["<end_of_utterance>"], pad=ids["<|im_end|>"], bos=ids["<|im_start|>"])
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
    return save_replica(model, processor, out_dir)


def build_smolvlm(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny SmolVLM2 (SmolVLM2-256M-Video-Instruct style): SmolVLMForConditionalGeneration + SmolVLMProcessor.

    Same image geometry as the Idefics3 replica (<= 20 image tokens per image); needs ``num2words``.
    """

    tokenizer, ids = _idefics3_tokenizer(SMOLVLM_CHAT_TEMPLATE)
    config = SmolVLMConfig(**_idefics3_configs(tokenizer, ids, hidden_size, layers))
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    set_generation_ids(model, eos=ids["<end_of_utterance>"], pad=ids["<|im_end|>"], bos=ids["<|im_start|>"])
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
    return save_replica(model, processor, out_dir)
