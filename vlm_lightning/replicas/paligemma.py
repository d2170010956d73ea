"""Tiny PaliGemma replica (real PaliGemma classes, byte tokenizer, prefix/suffix prompts)."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessor,
)

from vlm_lightning.replicas import common
from vlm_lightning.replicas.gemma3 import gemma_byte_tokenizer


def build_paligemma(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny PaliGemma (pt-224 style): real PaliGemmaForConditionalGeneration + PaliGemmaProcessor.

    No chat template: the prompt is ``<image>...<bos>prefix\\n`` and the target goes in ``suffix=``.
    32 px images, patch 8: 16 image tokens, fixed. The processor adds the 1,152 <locNNNN>/<segNNN>
    tokens, so the text vocabulary is sized after building it.
    """

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
    tokenizer = gemma_byte_tokenizer(specials)
    image_size, patch = 32, 8
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_seq_length=(image_size // patch) ** 2,
        resample=3,
        **common.half_normalization(),
    )
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    ids = common.token_ids(tokenizer, specials)
    vocab = common.padded_vocab_size(tokenizer)
    config = PaliGemmaConfig(
        text_config=common.tiny_text_config(
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
        vision_config=common.tiny_vision_config(
            model_type="siglip_vision_model", image_size=image_size, patch_size=patch, vision_use_head=False
        ),
        image_token_index=ids["<image>"],
        vocab_size=vocab,
        projection_dim=hidden_size,
        hidden_size=hidden_size,
    )
    model = common.random_model(PaliGemmaForConditionalGeneration, config, seed=seed)
    common.set_generation_ids(model, eos=ids["<eos>"], pad=ids["<pad>"], bos=ids["<bos>"])
    return common.save_replica(model, processor, out_dir)
