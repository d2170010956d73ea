"""Tiny GraniteDocling replica (real GraniteDocling classes of transformers 5.23, byte tokenizer).

transformers' ``granite_docling`` model type is the Granite-for-Docling architecture (its docstrings name
the 500M checkpoint): Idefics3-style layout (``model.vision_model`` + ``model.text_model``), but the
connector lives inside the vision model, pages are cut GotOcr2-style into square tiles on the grid nearest
their aspect ratio (plus a thumbnail when there is more than one tile), a DeepStack merger adds projected
intermediate vision features to the image tokens after the first decoder layers, an optional "fine"
connector path gives four times the tokens per tile, and the decoder is a dense Granite LM (embedding,
residual, attention and logits multipliers). ``ibm-granite/granite-docling-258M`` itself is NOT this model
type: its config.json says ``idefics3`` (Idefics3ForConditionalGeneration with a Llama text config).
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    GraniteDoclingConfig,
    GraniteDoclingForConditionalGeneration,
    GraniteDoclingImageProcessor,
    GraniteDoclingProcessor,
    PreTrainedTokenizerFast,
)

from vlm_lightning.replicas import common

# The chat_template.jinja of ibm-granite/granite-docling-258M (read from a public mirror of the hub repo,
# github.com/pgadet-wq/granite-docling-258M, commit 587b823): Granite roles
# "<|start_of_role|>{role}<|end_of_role|>", each message closed by "<|end_of_text|>\n", images as "<image>",
# generation prompt "<|start_of_role|>assistant<|end_of_role|>" (optional `controls` as JSON after the
# role). No template of the Granite-for-Docling checkpoints was found; docling's preset for them stops on
# "<|end_of_text|>", consistent with this format.
GRANITE_DOCLING_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] == 'image' -%}{{- '<image>' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|end_of_text|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_of_role|>assistant' -}}"
    "{%- if controls -%}{{- ' ' + controls | tojson() -}}{%- endif -%}"
    "{{- '<|end_of_role|>' -}}{%- endif -%}"
)

# 32 px tiles, patch 8 (4x4 patches), pixel shuffle 2: 4 image tokens per tile on the coarse path,
# 16 on the fine path (shuffle 1). At most 4 tiles + a thumbnail per image: <= 20 image tokens.
GRANITE_DOCLING_TILE = 32
GRANITE_DOCLING_IMAGE_SEQ_LEN = 4
GRANITE_DOCLING_MAX_TILES = 4
# the real tokenizer has tile markers <row_1_col_1> .. <row_16_col_16> (the processor caps grids at 16/side)
GRANITE_DOCLING_MAX_SIDE = 16


def _granite_docling_tokenizer() -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    grid = [
        f"<row_{r}_col_{c}>"
        for r in range(1, GRANITE_DOCLING_MAX_SIDE + 1)
        for c in range(1, GRANITE_DOCLING_MAX_SIDE + 1)
    ]
    specials = [
        "<|pad|>",
        "<|end_of_text|>",
        "<|start_of_role|>",
        "<|end_of_role|>",
        "<|unk|>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
        *grid,
    ]
    # transformers' GraniteDocling text config defaults: pad <|pad|> (100256), bos = eos = <|end_of_text|>
    tokenizer = common.byte_level_tokenizer(
        specials,
        bos="<|end_of_text|>",
        eos="<|end_of_text|>",
        pad="<|pad|>",
        unk="<|unk|>",
        chat_template=GRANITE_DOCLING_CHAT_TEMPLATE,
    )
    return tokenizer, common.token_ids(tokenizer, specials)


def build_granite_docling(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny GraniteDocling: GraniteDoclingForConditionalGeneration + GraniteDoclingProcessor, byte tokenizer.

    Dense Granite decoder with the checkpoint's embedding / residual / logits multipliers (attention scaled
    by 1/sqrt(head_dim), as transformers' own tiny test model does, and a wider init); one vision layer
    tapped by one DeepStack merger (added after decoder layer 0); coarse and fine connector paths, no
    density router.
    """
    tokenizer, ids = _granite_docling_tokenizer()
    heads = 4
    config = GraniteDoclingConfig(
        text_config=common.tiny_text_config(
            common.padded_vocab_size(tokenizer),
            hidden_size,
            layers,
            num_attention_heads=heads,
            attention_multiplier=(hidden_size // heads) ** -0.5,
            # with the checkpoint's logits_scaling (4) and residual_multiplier (0.263), the default 0.02
            # init leaves random logits so flat that LoRA barely moves the loss in a few steps
            initializer_range=0.2,
            pad_token_id=ids["<|pad|>"],
            bos_token_id=ids["<|end_of_text|>"],
            eos_token_id=ids["<|end_of_text|>"],
        ),
        vision_config=common.tiny_vision_config(
            image_size=GRANITE_DOCLING_TILE,
            patch_size=8,
            scale_factor=2,
            out_hidden_size=hidden_size,
            deepstack_visual_indexes=[0],
            use_fine_route=True,
        ),
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|pad|>"],
    )
    model = common.random_model(GraniteDoclingForConditionalGeneration, config, seed=seed)
    common.set_generation_ids(
        model, eos=ids["<|end_of_text|>"], pad=ids["<|pad|>"], bos=ids["<|end_of_text|>"]
    )
    image_processor = GraniteDoclingImageProcessor(
        size={"height": GRANITE_DOCLING_TILE, "width": GRANITE_DOCLING_TILE},
        max_patches=GRANITE_DOCLING_MAX_TILES,
    )
    processor = GraniteDoclingProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=GRANITE_DOCLING_IMAGE_SEQ_LEN,
        chat_template=GRANITE_DOCLING_CHAT_TEMPLATE,
    )
    return common.save_replica(model, processor, out_dir)
