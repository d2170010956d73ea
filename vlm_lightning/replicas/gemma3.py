"""Tiny Gemma 3 replica (real Gemma3 classes, byte tokenizer, the real checkpoints' chat template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    PreTrainedTokenizerFast,
)

from vlm_lightning.replicas import common

# google/gemma-3-4b-it and -12b-it (tokenizer.chat_template, as printed from the checkpoint's tokenizer
# in unslothai/unsloth's chat_templates.py; the same text is in ggml-org/gemma-3-*-it-GGUF metadata):
# a leading bos, no system turn (a system message is folded into the first user turn followed by a blank
# line), the assistant role is rendered "model", every text part is trimmed, one <start_of_image> per image
# (the processor expands it to "\n\n<start_of_image>" + soft tokens + "<end_of_image>\n\n").
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{ '<start_of_turn>model\\n' }}\n"
    "{%- endif -%}\n"
)

GEMMA3_IMAGE_SIZE = 32
GEMMA3_PATCH = 8
GEMMA3_TOKENS_PER_IMAGE = 4  # (32 / 8)^2 = 16 patches, average-pooled 2x2 -> 4 soft tokens per image / crop
GEMMA3_PROJECTION_STD = 0.05
# pan-and-scan crop floor small enough for test images (the processor default is 256 px); only
# set_image_tokens reads it: Gemma3Processor's own defaults override the image processor's settings
GEMMA3_MIN_CROP = 16


def gemma_byte_tokenizer(specials: list[str], **named: Any) -> PreTrainedTokenizerFast:
    """The byte-level tokenizer with the Gemma tokenizers' bos / eos / pad / unk tokens (Gemma 3 and 4,
    PaliGemma); ``specials`` hold them and the family's own tokens; ``named`` as ``byte_level_tokenizer``."""
    return common.byte_level_tokenizer(specials, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", **named)


def _gemma3_tokenizer() -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    specials = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ]
    # Gemma3Processor reads tokenizer.boi_token / eoi_token / image_token (the real tokenizer_config's
    # extra special tokens)
    tokenizer = gemma_byte_tokenizer(
        specials,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        extra_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    return tokenizer, common.token_ids(tokenizer, specials)


def build_gemma3(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny Gemma 3 (gemma-3-4b-it style): real Gemma3ForConditionalGeneration + Gemma3Processor.

    Text layers alternate sliding-window (window 32) and full attention, the last one full (both kinds
    present at 2 layers); SigLIP tower on 32 px images with patch 8, pooled to 4 soft tokens per image.
    Pan-and-scan is off by default as on the hub (``set_image_tokens`` switches it on within a budget);
    the image processor's crop floor is 16 px so that small test images can be cropped.
    """

    tokenizer, ids = _gemma3_tokenizer()
    head_dim = hidden_size // 4
    layer_types = [
        "full_attention" if i % 2 or i == layers - 1 else "sliding_attention" for i in range(layers)
    ]
    config = Gemma3Config(
        text_config=common.tiny_text_config(
            common.padded_vocab_size(tokenizer),
            hidden_size,
            layers,
            model_type="gemma3_text",
            intermediate_size=hidden_size * 4,
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            sliding_window=32,
            layer_types=layer_types,
            bos_token_id=ids["<bos>"],
            eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
            pad_token_id=ids["<pad>"],
        ),
        vision_config=common.tiny_vision_config(
            model_type="siglip_vision_model",
            image_size=GEMMA3_IMAGE_SIZE,
            patch_size=GEMMA3_PATCH,
            vision_use_head=False,
        ),
        mm_tokens_per_image=GEMMA3_TOKENS_PER_IMAGE,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    model = common.random_model(Gemma3ForConditionalGeneration, config, seed=seed)
    common.set_generation_ids(model, eos=ids["<end_of_turn>"], pad=ids["<pad>"], bos=ids["<bos>"])
    # transformers initializes the projection to zeros (a fresh model's image features are all zero and
    # no gradient reaches the frozen vision side): give it random weights, as a trained checkpoint has
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=GEMMA3_PROJECTION_STD)
    image_processor = Gemma3ImageProcessor(
        size={"height": GEMMA3_IMAGE_SIZE, "width": GEMMA3_IMAGE_SIZE},
        resample=2,
        **common.half_normalization(),
        pan_and_scan_min_crop_size=GEMMA3_MIN_CROP,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=GEMMA3_TOKENS_PER_IMAGE,
    )
    return common.save_replica(model, processor, out_dir)
