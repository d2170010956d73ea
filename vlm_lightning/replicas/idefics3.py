"""Tiny Idefics3 (SmolVLM v1) and SmolVLM2 replicas (real classes, byte tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

from vlm_lightning.replicas import common

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
    tokenizer = common.byte_level_tokenizer(
        specials,
        bos="<|im_start|>",
        eos="<end_of_utterance>",
        pad="<|im_end|>",
        unk="<|endoftext|>",
        chat_template=template,
    )
    return tokenizer, common.token_ids(tokenizer, specials)


def _idefics3_configs(tokenizer, ids: dict[str, int], hidden_size: int, layers: int) -> dict:
    # image_seq_len = (image_size / patch)^2 / scale_factor^2 = (64 / 8)^2 / 4^2 = 4 tokens per tile
    return {
        "text_config": common.tiny_text_config(
            common.padded_vocab_size(tokenizer),
            hidden_size,
            layers,
            model_type="llama",
            rms_norm_eps=1e-5,
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<end_of_utterance>"],
            pad_token_id=ids["<|im_end|>"],
        ),
        "vision_config": common.tiny_vision_config(image_size=IDEFICS3_TILE, patch_size=8),
        "scale_factor": 4,
        "image_token_id": ids["<image>"],
        "pad_token_id": ids["<|im_end|>"],
    }


IDEFICS3_TILE = 64
IDEFICS3_IMAGE_SEQ_LEN = 4


def _idefics3_model(
    config_cls: Any, model_cls: Any, template: str, hidden_size: int, layers: int, seed: int
) -> tuple[PreTrainedTokenizerFast, Any]:
    """The tokenizer of ``template`` and a seeded random ``model_cls`` of the shared Idefics3 / SmolVLM config."""
    tokenizer, ids = _idefics3_tokenizer(template)
    config = config_cls(**_idefics3_configs(tokenizer, ids, hidden_size, layers))
    model = common.random_model(model_cls, config, seed=seed)
    common.set_generation_ids(
        model, eos=ids["<end_of_utterance>"], pad=ids["<|im_end|>"], bos=ids["<|im_start|>"]
    )
    return tokenizer, model


def _image_processor_kwargs() -> dict[str, Any]:
    """Idefics3 / SmolVLM image processor settings: 128 px longest edge, split into 64 px tiles."""
    return {
        "size": {"longest_edge": 2 * IDEFICS3_TILE},
        "max_image_size": {"longest_edge": IDEFICS3_TILE},
        "do_image_splitting": True,
        **common.half_normalization(),
    }


def build_idefics3(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny Idefics3 (SmolVLM-256M-Instruct style): Idefics3ForConditionalGeneration + Idefics3Processor.

    64 px tiles, patch 8, pixel shuffle 4: 4 tokens per tile; images are resized to a 128 px longest
    edge and split into at most 2x2 tiles plus a global tile (<= 20 image tokens).
    """

    tokenizer, model = _idefics3_model(
        Idefics3Config, Idefics3ForConditionalGeneration, IDEFICS3_CHAT_TEMPLATE, hidden_size, layers, seed
    )
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**_image_processor_kwargs()),
        tokenizer=tokenizer,
        image_seq_len=IDEFICS3_IMAGE_SEQ_LEN,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    return common.save_replica(model, processor, out_dir)


def build_smolvlm(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny SmolVLM2 (SmolVLM2-256M-Video-Instruct style): SmolVLMForConditionalGeneration + SmolVLMProcessor.

    Same image geometry as the Idefics3 replica (<= 20 image tokens per image); needs ``num2words``.
    """

    tokenizer, model = _idefics3_model(
        SmolVLMConfig, SmolVLMForConditionalGeneration, SMOLVLM_CHAT_TEMPLATE, hidden_size, layers, seed
    )
    video_processor = SmolVLMVideoProcessor(
        size={"longest_edge": IDEFICS3_TILE},
        max_image_size={"longest_edge": IDEFICS3_TILE},
        **common.half_normalization(),
    )
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**_image_processor_kwargs()),
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_len=IDEFICS3_IMAGE_SEQ_LEN,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    return common.save_replica(model, processor, out_dir)
