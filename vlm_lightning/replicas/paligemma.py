"""Tiny PaliGemma replica (real PaliGemma classes, byte tokenizer, prefix/suffix prompts)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessor,
)

from vlm_lightning.replicas.common import (
    byte_level_tokenizer,
    padded_vocab_size,
    save_replica,
    set_generation_ids,
    tiny_text_config,
)


def build_paligemma(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny PaliGemma (pt-224 style): real PaliGemmaForConditionalGeneration + PaliGemmaProcessor.

    No chat template: the prompt is ``<image>...<bos>prefix\\n`` and the target goes in ``suffix=``.
    32 px images, patch 8: 16 image tokens, fixed. The processor adds the 1,152 <locNNNN>/<segNNN>
    tokens, so the text vocabulary is sized after building it.
    """

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
    vocab = padded_vocab_size(tokenizer)
    config = PaliGemmaConfig(
        text_config=tiny_text_config(
            vocab,
            hidden_size,
            layers,
            model_type="gemma",
            num_key_value_heads=1,
            head_dim=hidden_size // 4,
            bos_token_id=ids["<bos>"],
            eos_token_id=ids["<eos>"],
            pad_token_id=ids["<pad>"],
        ),
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
    set_generation_ids(model, eos=ids["<eos>"], pad=ids["<pad>"], bos=ids["<bos>"])
    return save_replica(model, processor, out_dir)
