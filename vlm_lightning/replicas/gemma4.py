"""Tiny Gemma 4 replica (real Gemma4 classes, byte tokenizer, vision + text only)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Gemma4AudioFeatureExtractor,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4ImageProcessor,
    Gemma4Processor,
    Gemma4VideoProcessor,
    PreTrainedTokenizerFast,
)

from vlm_lightning.replicas import common
from vlm_lightning.replicas.gemma3 import gemma_byte_tokenizer

# google/gemma-4-E2B-it and -E4B-it chat_template.jinja (its message, system and generation-prompt parts;
# the tool-declaration / tool-call / tool-response branches are left out). Source: the copy of
# https://huggingface.co/google/gemma-4-E2B-it/resolve/main/chat_template.jinja in public code, cross-checked
# with llama.cpp's models/templates/google-gemma-4-31B-it.jinja (same message loop). Turns are
# "<|turn>role\n...<turn|>\n", the assistant role is rendered "model", text parts are trimmed (model text
# also loses any "<|channel>...<channel|>" thinking), an image part is a bare "<|image|>", the system turn
# renders ``messages[0]['content'] | trim`` (a string; typed content parts render as their Python repr, as
# with the real template), and the generation prompt is "<|turn>model\n". The 26B-A4B / 31B templates add an
# empty thought channel "<|channel>thought\n<channel|>" to the generation prompt when thinking is off.
GEMMA4_CHAT_TEMPLATE = (
    "{%- macro strip_thinking(text) -%}"
    "{%- set ns = namespace(result='') -%}"
    "{%- for part in text.split('<channel|>') -%}"
    "{%- if '<|channel>' in part -%}{%- set ns.result = ns.result + part.split('<|channel>')[0] -%}"
    "{%- else -%}{%- set ns.result = ns.result + part -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- ns.result | trim -}}"
    "{%- endmacro -%}"
    "{%- set loop_messages = messages -%}"
    "{{- bos_token -}}"
    "{%- if (enable_thinking is defined and enable_thinking) or messages[0]['role'] in ['system', 'developer'] -%}"
    "{{- '<|turn>system\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<|think|>\\n' -}}{%- endif -%}"
    "{%- if messages[0]['role'] in ['system', 'developer'] -%}"
    "{{- messages[0]['content'] | trim -}}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- '<turn|>\\n' -}}"
    "{%- endif %}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] != 'tool' -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<|turn>' + role + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{%- if role == 'model' -%}{{- strip_thinking(message['content']) -}}"
    "{%- else -%}{{- message['content'] | trim -}}{%- endif -%}"
    "{%- elif message['content'] is sequence -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}"
    "{%- if role == 'model' -%}{{- strip_thinking(item['text']) -}}"
    "{%- else -%}{{- item['text'] | trim -}}{%- endif -%}"
    "{%- elif item['type'] == 'image' -%}{{- '<|image|>' -}}"
    "{%- elif item['type'] == 'audio' -%}{{- '<|audio|>' -}}"
    "{%- elif item['type'] == 'video' -%}{{- '<|video|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<turn|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}{%- endif -%}"
)

# the named multimodal / chat tokens of the real tokenizer (transformers' convert_gemma4_weights.py)
GEMMA4_NAMED_TOKENS = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "sot_token": "<|turn>",
    "eot_token": "<turn|>",
    "soc_token": "<|channel>",
    "eoc_token": "<channel|>",
    "think_token": "<|think|>",
    "escape_token": '<|"|>',
    "str_token": "<|tool_response>",
    "etr_token": "<tool_response|>",
    "stc_token": "<|tool_call>",
    "etc_token": "<tool_call|>",
    "std_token": "<|tool>",
    "etd_token": "<tool|>",
}

# 4 px patches pooled 3 x 3: 12 px per image token. The processor only accepts the real budgets
# (70, 140, 280, 560, 1120 soft tokens); 70 is the smallest, so an image gives 60-70 tokens.
GEMMA4_PATCH = 4
GEMMA4_POOL = 3
GEMMA4_SOFT_TOKENS = 70


def _gemma4_tokenizer() -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *GEMMA4_NAMED_TOKENS.values(), "<|video|>"]
    # named tokens (tokenizer.image_token, .boi_token, ...) that Gemma4Processor reads
    tokenizer = gemma_byte_tokenizer(
        specials,
        chat_template=GEMMA4_CHAT_TEMPLATE,
        mask_token="<mask>",
        extra_special_tokens=dict(GEMMA4_NAMED_TOKENS),
        padding_side="left",  # as the real tokenizer
    )
    return tokenizer, common.token_ids(tokenizer, specials)


def build_gemma4(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny Gemma 4 (E2B/E4B style): real Gemma4ForConditionalGeneration + Gemma4Processor.

    Text: sliding-window and full-attention layers alternate (the last is full, as the config forces);
    causal attention for image tokens too (``use_bidirectional_attention=None``, as E2B/E4B; 26B-A4B / 31B
    use ``"vision"``); no per-layer embeddings or KV sharing, which E2B/E4B have (KV sharing needs more than
    two layers; per-layer embeddings add ``per_layer_model_projection``, a linear outside the decoder layers
    that the LoRA patterns do not reach). Vision: the Gemma 4 ViT (1 layer) with 4 px patches pooled 3x3, the
    smallest real budget of 70 soft tokens per image. No audio tower (the class allows
    ``audio_config=None``, as 26B-A4B / 31B), though the processor keeps its audio feature extractor.
    ``final_logit_softcapping`` (30.0 on every hub checkpoint) is left unset, as in the PaliGemma replica:
    with it the loss always takes the unfused lm_head path, which the tests cover by setting it.
    """
    tokenizer, ids = _gemma4_tokenizer()
    vocab = common.padded_vocab_size(tokenizer)
    head_dim = hidden_size // 4
    layer_types = [
        "sliding_attention" if i % 2 == 0 and i < layers - 1 else "full_attention" for i in range(layers)
    ]
    config = Gemma4Config(
        text_config=common.tiny_text_config(
            vocab,
            hidden_size,
            layers,
            vocab_size_per_layer_input=vocab,
            head_dim=head_dim,
            global_head_dim=head_dim,
            layer_types=layer_types,
            sliding_window=48,
            hidden_size_per_layer_input=0,
            num_kv_shared_layers=0,
            use_bidirectional_attention=None,
            bos_token_id=ids["<bos>"],
            eos_token_id=ids["<eos>"],
            pad_token_id=ids["<pad>"],
        ),
        vision_config=common.tiny_vision_config(
            num_key_value_heads=2,
            head_dim=16,
            patch_size=GEMMA4_PATCH,
            pooling_kernel_size=GEMMA4_POOL,
            position_embedding_size=256,  # patches per image side (the real table has 10,240)
        ),
        audio_config=None,
        image_token_id=ids["<|image|>"],
        boi_token_id=ids["<|image>"],
        eoi_token_id=ids["<image|>"],
        video_token_id=ids["<|video|>"],
        audio_token_id=ids["<|audio|>"],
        boa_token_id=ids["<|audio>"],
        eoa_token_index=ids["<audio|>"],
    )
    model = common.random_model(Gemma4ForConditionalGeneration, config, seed=seed)
    common.set_generation_ids(model, eos=ids["<turn|>"], pad=ids["<pad>"], bos=ids["<bos>"])
    # The library initialises the 2-D patch position table to ones (a checkpoint overwrites it): in a random
    # tower that adds one constant vector to every patch, and the pooled image features differ by colour by
    # ~3% of their norm. A random table, like the trained one not constant, leaves ~70%.
    with torch.no_grad():
        model.model.vision_tower.patch_embedder.position_embedding_table.normal_(std=config.initializer_range)
    geometry = {
        "patch_size": GEMMA4_PATCH,
        "pooling_kernel_size": GEMMA4_POOL,
        "max_soft_tokens": GEMMA4_SOFT_TOKENS,
    }
    processor = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(do_normalize=False, **geometry),
        tokenizer=tokenizer,
        video_processor=Gemma4VideoProcessor(num_frames=2, **geometry),
        chat_template=GEMMA4_CHAT_TEMPLATE,
        image_seq_length=GEMMA4_SOFT_TOKENS,
    )
    return common.save_replica(model, processor, out_dir)
