"""Per-family facts: where the language model lives, LoRA targets, end-of-turn token, image knobs.

One entry per supported family; nothing family-specific lives anywhere else except the prompt
adapters in ``vlm_lightning.data.collator`` (chosen by ``FamilyFacts.prompt_style``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from vlm_lightning.models.packed_conv import bind_lfm2_packed_conv
from vlm_lightning.models.sync_free import bind_lfm2_vl_host_shapes

LoraScope = Literal["attention", "attention_mlp", "all_linear"]


class UnknownFamilyError(ValueError):
    """The checkpoint's model type is not one of the supported families."""


def _set_qwen_pixels(processor: Any, min_tokens: int | None, max_tokens: int | None) -> None:
    """Qwen2/2.5/3-VL: image tokens = pixels / (patch_size * merge_size)^2 (28 px per token, 32 for Qwen3-VL).

    Only ``size`` is set: ``min_pixels``/``max_pixels`` attributes would be passed to every call as the
    deprecated kwargs (a FutureWarning in transformers 5.23, slated for removal).
    """
    ip = processor.image_processor
    unit = (ip.patch_size * ip.merge_size) ** 2
    size = dict(ip.size or {})
    if min_tokens is not None:
        size["shortest_edge"] = int(min_tokens) * unit
    if max_tokens is not None:
        size["longest_edge"] = int(max_tokens) * unit
    for stale in ("min_pixels", "max_pixels"):
        ip.__dict__.pop(stale, None)
    ip.size = size


def _set_lfm2_tokens(processor: Any, min_tokens: int | None, max_tokens: int | None) -> None:
    """LFM2-VL: bounds on the tokens of one unsplit image (and of the thumbnail of a split one).

    With ``do_image_splitting`` an image larger than ``max_image_tokens`` (times ``max_pixels_tolerance``)
    is cut into ``min_tiles..max_tiles`` tiles of ``(tile_size / patch / downsample)^2`` tokens each, plus a
    thumbnail of at most ``max_image_tokens``: the total can exceed ``max_tokens``.
    """
    ip = processor.image_processor
    if min_tokens is not None:
        ip.min_image_tokens = int(min_tokens)
    if max_tokens is not None:
        ip.max_image_tokens = int(max_tokens)
    tile_patches = (ip.tile_size // ip.encoder_patch_size) ** 2 if ip.do_image_splitting else 0
    ip.max_num_patches = max(ip.max_image_tokens * ip.downsample_factor**2, tile_patches)


def _set_idefics3_tiles(processor: Any, min_tokens: int | None, max_tokens: int | None) -> None:
    """Idefics3 / SmolVLM: tokens = tiles x ``image_seq_len``; tiles = local grid + 1 global image.

    The image's longest edge is resized (up or down) to ``size["longest_edge"]``, then cut into tiles of
    ``max_image_size["longest_edge"]``. ``max_tokens`` picks the largest k with k*k + 1 tiles (a square
    image, the worst case) within budget and sets the longest edge to k tiles; below two tiles' worth,
    splitting is switched off (one tile). ``min_tokens`` has no knob: every image is rescaled to the
    same longest edge, so it is ignored.
    """
    del min_tokens
    if max_tokens is None:
        return
    ip = processor.image_processor
    per_tile = int(processor.image_seq_len)
    tile = int(ip.max_image_size["longest_edge"])
    tiles = int(max_tokens) // per_tile
    if tiles < 1:
        raise ValueError(
            f"max image tokens {max_tokens} is below one tile ({per_tile} tokens) for this processor"
        )
    k = math.isqrt(tiles - 1) if tiles > 1 else 0
    if k < 1:
        ip.do_image_splitting = False
        ip.size = {"longest_edge": tile}
    else:
        ip.do_image_splitting = True
        ip.size = {"longest_edge": k * tile}


@dataclass(frozen=True)
class FamilyFacts:
    """What the trainer needs to know about one model family."""

    name: str
    model_types: tuple[str, ...]
    language_model: str
    vision_tower: str
    projector: str
    attention_modules: tuple[str, ...]
    mlp_modules: tuple[str, ...]
    end_of_turn: str
    prompt_style: Literal["chat", "prefix_suffix"] = "chat"
    checkpoints: tuple[str, ...] = ()
    set_image_tokens: Callable[[Any, int | None, int | None], None] | None = None
    notes: str = ""
    extra_layer_modules: tuple[str, ...] = field(default=())
    # model inputs the model only reads as Python numbers (shapes): kept on the CPU when a batch moves to
    # the GPU, so that reading them is no host sync that stalls the queue of launched kernels
    host_inputs: tuple[str, ...] = field(default=())
    # binds model methods that read those inputs on the CPU (models/sync_free.py); returns how many
    bind_host_shape_methods: Callable[[Any], int] | None = None
    # packing (data.packing): how a packed row's positions are built — "text": one arange per sample;
    # "mrope": the model's own 3-D M-RoPE index per sample, with a text plane first — or why it cannot pack
    packed_positions: Literal["text", "mrope"] = "text"
    packing_refusal: str | None = None
    # packed batches also carry ``seq_idx`` (each token's sample index) for layers that need boundaries
    packed_seq_idx: bool = False
    # binds model methods that honour ``seq_idx`` (models/packed_conv.py); returns how many
    bind_packing_methods: Callable[[Any], int] | None = None

    def lora_target_regex(self, scope: LoraScope = "attention_mlp") -> str:
        """A PEFT ``target_modules`` regex hitting only the language model's linear layers."""
        names = list(self.attention_modules)
        if scope in ("attention_mlp", "all_linear"):
            names += list(self.mlp_modules)
        if scope == "all_linear":
            names += list(self.extra_layer_modules)
        alternatives = "|".join(n.replace(".", r"\.") for n in names)
        prefix = self.language_model.replace(".", r"\.")
        return rf"{prefix}\.layers\.\d+\..*({alternatives})"

    def vision_lora_regex(self) -> str:
        """A regex for the linear layers of the vision tower (only used when asked)."""
        return (
            self.vision_tower.replace(".", r"\.")
            + r"\..*(q_proj|k_proj|v_proj|o_proj|out_proj|qkv|proj|fc1|fc2)"
        )


ATTENTION_QKVO = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
GATED_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

FAMILIES: dict[str, FamilyFacts] = {
    "qwen2_vl": FamilyFacts(
        name="qwen2_vl",
        model_types=("qwen2_vl",),
        language_model="model.language_model",
        vision_tower="model.visual",
        projector="model.visual.merger",
        attention_modules=ATTENTION_QKVO,
        mlp_modules=GATED_MLP,
        end_of_turn="<|im_end|>",
        checkpoints=("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"),
        set_image_tokens=_set_qwen_pixels,
        packed_positions="mrope",
        notes="image size in pixels: tokens = pixels / (patch*merge)^2",
    ),
    "lfm2_vl": FamilyFacts(
        name="lfm2_vl",
        model_types=("lfm2_vl", "lfm2-vl"),
        language_model="model.language_model",
        vision_tower="model.vision_tower",
        projector="model.multi_modal_projector",
        attention_modules=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
        mlp_modules=("feed_forward.w1", "feed_forward.w2", "feed_forward.w3"),
        extra_layer_modules=("conv.in_proj", "conv.out_proj"),
        end_of_turn="<|im_end|>",
        checkpoints=("LiquidAI/LFM2-VL-450M", "LiquidAI/LFM2-VL-1.6B"),
        # SigLIP2 embeddings and the unpadding of image features call .tolist() / unpack per image
        host_inputs=("spatial_shapes",),
        bind_host_shape_methods=bind_lfm2_vl_host_shapes,
        set_image_tokens=_set_lfm2_tokens,
        packed_seq_idx=True,  # its short convolutions must not read across a sample boundary
        bind_packing_methods=bind_lfm2_packed_conv,
        notes=(
            "hybrid LM: attention only in the full_attention layers (config.text_config.layer_types), short "
            "gated convolutions elsewhere; image knobs min/max_image_tokens, tiles of tile_size when splitting. "
            "'lfm2-vl' is the model_type of the first (remote-code) hub configs"
        ),
    ),
    "paligemma": FamilyFacts(
        name="paligemma",
        model_types=("paligemma",),
        language_model="model.language_model",
        vision_tower="model.vision_tower",
        projector="model.multi_modal_projector",
        attention_modules=ATTENTION_QKVO,
        mlp_modules=GATED_MLP,
        end_of_turn="<eos>",
        prompt_style="prefix_suffix",
        checkpoints=("google/paligemma-3b-pt-224", "google/paligemma2-3b-pt-224"),
        packing_refusal=(
            "PaliGemma's prefix attends bidirectionally (a prefix-LM mask from token_type_ids), which "
            "transformers' packed-sequence mask does not combine with sample boundaries"
        ),
        set_image_tokens=None,
        notes=(
            "no chat template: processor(text='<image>prefix', images=..., suffix=target) builds "
            "'<image>*N<bos>prefix\\n' + 'target<eos>', labels and token_type_ids (prefix attends bidirectionally); "
            "fixed resolution, image_seq_length tokens per image"
        ),
    ),
    "idefics3": FamilyFacts(
        name="idefics3",
        model_types=("idefics3",),
        language_model="model.text_model",
        vision_tower="model.vision_model",
        projector="model.connector",
        attention_modules=ATTENTION_QKVO,
        mlp_modules=GATED_MLP,
        end_of_turn="<end_of_utterance>",
        checkpoints=(
            "HuggingFaceTB/SmolVLM-256M-Instruct",
            "HuggingFaceTB/SmolVLM-500M-Instruct",
            "HuggingFaceM4/Idefics3-8B-Llama3",
        ),
        set_image_tokens=_set_idefics3_tiles,
        notes=(
            "SmolVLM v1 checkpoints are model_type idefics3; generation prompt 'Assistant:' has no trailing "
            "space, so answers start with ' ' (the template renders 'Assistant: answer<end_of_utterance>')"
        ),
    ),
}
FAMILIES["qwen2_5_vl"] = dataclasses.replace(
    FAMILIES["qwen2_vl"],
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    checkpoints=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
    notes="vision MLP also uses gate/up/down_proj names: anchor LoRA on the LM; 28 px per image token",
)
FAMILIES["qwen3_vl"] = dataclasses.replace(
    FAMILIES["qwen2_vl"],
    name="qwen3_vl",
    model_types=("qwen3_vl",),
    checkpoints=("Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-4B-Instruct"),
    notes=(
        "patch 16 x merge 2: 32 px per image token; extra projectors model.visual.deepstack_merger_list "
        "feed vision features into the first LM layers"
    ),
)
FAMILIES["smolvlm"] = dataclasses.replace(
    FAMILIES["idefics3"],
    name="smolvlm",
    model_types=("smolvlm",),
    checkpoints=("HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"),
    notes="SmolVLM2 (model_type smolvlm); processor needs num2words; same template quirks as idefics3",
)


def family_for_model_type(model_type: str) -> FamilyFacts:
    """Look up the family of a transformers ``config.model_type``; unknown types fail clearly."""
    for facts in FAMILIES.values():
        if model_type in facts.model_types:
            return facts
    supported = ", ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES.values())
    raise UnknownFamilyError(
        f"model type '{model_type}' is not a supported family. Supported: {supported}. "
        "A family needs its FamilyFacts entry (where the language model is, LoRA targets, end-of-turn token, "
        "label building): see the README's Models section"
    )
