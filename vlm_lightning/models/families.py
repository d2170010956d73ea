"""Per-family facts: where the language model lives, LoRA targets, end-of-turn token, image knobs. One entry
per family; nothing family-specific lives elsewhere but the prompt adapters (``data.collator``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from vlm_lightning.errors import UserError
from vlm_lightning.models.image_tokens import (
    set_gemma3_crops,
    set_gemma4_soft_tokens,
    set_granite_docling_tiles,
    set_idefics3_tiles,
    set_internvl_tiles,
    set_lfm2_tokens,
    set_qwen_pixels,
)
from vlm_lightning.patches.lfm2_host_shapes import bind_lfm2_vl_host_shapes
from vlm_lightning.patches.lfm2_packed_conv import bind_lfm2_packed_conv

LoraScope = Literal["attention", "attention_mlp", "all_linear"]


class UnknownFamilyError(UserError, ValueError):
    """The checkpoint's model type is not one of the supported families."""


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
    # binds model methods that read those inputs on the CPU (patches/lfm2_host_shapes.py); returns how many
    bind_host_shape_methods: Callable[[Any], int] | None = None
    # packing (data.packing): how a packed row's positions are built — "text": one arange per sample;
    # "mrope": the model's own 3-D M-RoPE index per sample, with a text plane first — or why it cannot pack
    packed_positions: Literal["text", "mrope"] = "text"
    packing_refusal: str | None = None
    # packed batches also carry ``seq_idx`` (each token's sample index) for layers that need boundaries
    packed_seq_idx: bool = False
    # binds model methods that honour ``seq_idx`` (patches/lfm2_packed_conv.py); returns how many
    bind_packing_methods: Callable[[Any], int] | None = None
    # Qwen-style towers split attention per image (graph break): packed rows run them eager
    vision_recompiles_per_image_count: bool = False
    # M-RoPE and vision-tower positions, image boundaries: built on the CPU batch (models/host_precompute.py)
    host_rope_inputs: bool = False
    # extra variables every render of the chat template gets, as (name, value) pairs (e.g. Qwen3.5's
    # ("enable_thinking", False): the same non-thinking turns whatever a checkpoint's template defaults to)
    chat_template_kwargs: tuple[tuple[str, Any], ...] = ()
    # roles whose content the template reads as a plain string (not typed parts), e.g. Gemma 4's system turn
    plain_text_roles: tuple[str, ...] = ()

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
        set_image_tokens=set_qwen_pixels,
        packed_positions="mrope",
        vision_recompiles_per_image_count=True,
        host_rope_inputs=True,
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
        set_image_tokens=set_lfm2_tokens,
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
            "ibm-granite/granite-docling-258M",  # model_type idefics3; its Granite template ends turns
            # with <|end_of_text|> (taken from the template: loading.with_template_end_of_turn)
        ),
        set_image_tokens=set_idefics3_tiles,
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
    notes="patch 16 x merge 2 (32 px per image token); visual.deepstack_merger_list feeds early LM layers",
)
FAMILIES["smolvlm"] = dataclasses.replace(
    FAMILIES["idefics3"],
    name="smolvlm",
    model_types=("smolvlm",),
    checkpoints=("HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"),
    notes="SmolVLM2 (model_type smolvlm); processor needs num2words; same template quirks as idefics3",
)


FAMILIES["internvl"] = FamilyFacts(
    name="internvl",
    model_types=("internvl",),
    language_model="model.language_model",
    vision_tower="model.vision_tower",
    projector="model.multi_modal_projector",
    attention_modules=ATTENTION_QKVO,
    mlp_modules=GATED_MLP,
    end_of_turn="<|im_end|>",
    checkpoints=(
        "OpenGVLab/InternVL3-1B-hf",
        "OpenGVLab/InternVL3-2B-hf",
        "OpenGVLab/InternVL3_5-1B-HF",
        "OpenGVLab/InternVL3_5-2B-HF",
    ),
    set_image_tokens=set_internvl_tiles,
    packed_positions="text",
    notes=(
        "HF-native InternVL3 (Qwen2 LM) / InternVL3.5 (Qwen3 LM) conversions, not the remote-code "
        "internvl_chat repos; InternViT's attention is also q/k/v_proj (anchor LoRA on the LM); "
        "<IMG_CONTEXT> expands to <img><IMG_CONTEXT>*256*tiles</img>, tiles = 1..max_patches + thumbnail"
    ),
)

FAMILIES["lfm3_vl"] = FamilyFacts(
    name="lfm3_vl",
    model_types=("lfm3_vl",),
    language_model="model.language_model",
    vision_tower="model.vision_tower",
    projector="model.multi_modal_projector",
    # attention layers also have a per-head sigmoid output gate self_attn.g_proj (hidden -> heads)
    attention_modules=(*ATTENTION_QKVO, "self_attn.g_proj"),
    mlp_modules=("feed_forward.w1", "feed_forward.w2", "feed_forward.w3"),
    extra_layer_modules=("conv.in_proj", "conv.out_proj"),
    end_of_turn="<|im_end|>",
    checkpoints=("LiquidAI/LFM3-VL-2B",),
    # a Qwen2-VL image processor (patch 16 x merge 2): the Qwen pixel budget knob applies unchanged
    set_image_tokens=set_qwen_pixels,
    packed_positions="text",  # 1-D text positions (no M-RoPE); the vision tower's 2-D RoPE is per image
    vision_recompiles_per_image_count=True,
    packed_seq_idx=True,  # its short convolutions must not read across a sample boundary
    bind_packing_methods=bind_lfm2_packed_conv,
    notes=(
        "hybrid LM: short gated convs (7 taps), sliding-window (256) and full attention "
        "(config.text_config.layer_types); Qwen-style image input (pixel_values + image_grid_thw, "
        "<|image_pad|> expanded per image), 32 px per image token; vision tower of gated 2D convs and "
        "bidirectional per-image attention whose attention is also q/k/v_proj (anchor LoRA on the LM)"
    ),
)

FAMILIES["paddleocr_vl"] = FamilyFacts(
    name="paddleocr_vl",
    model_types=("paddleocr_vl",),
    language_model="model.language_model",
    vision_tower="model.visual",
    projector="model.projector",
    attention_modules=ATTENTION_QKVO,
    mlp_modules=GATED_MLP,
    end_of_turn="</s>",
    checkpoints=("PaddlePaddle/PaddleOCR-VL", "PaddlePaddle/PaddleOCR-VL-1.5"),
    # Qwen2-VL-style image processor (size shortest/longest_edge in pixels, patch 14 x merge 2)
    set_image_tokens=set_qwen_pixels,
    packed_positions="mrope",  # its own get_rope_index per sample; the text model reads a 4-plane index
    vision_recompiles_per_image_count=True,
    notes=(
        "ERNIE-4.5-0.3B LM + NaViT vision tower (per-image attention, q/k/v/out_proj: anchor LoRA on the "
        "LM); 28 px per image token, merged 2x2 in model.projector; template '<|begin_of_sentence|>User: "
        "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>prompt\\nAssistant:\\n' + answer + '</s>'; "
        "task prompts 'OCR:', 'Formula Recognition:', 'Table Recognition:', 'Chart Recognition:'"
    ),
)

FAMILIES["gemma3"] = FamilyFacts(
    name="gemma3",
    model_types=("gemma3",),
    language_model="model.language_model",
    vision_tower="model.vision_tower",
    projector="model.multi_modal_projector",
    attention_modules=ATTENTION_QKVO,
    mlp_modules=GATED_MLP,
    end_of_turn="<end_of_turn>",
    checkpoints=("google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"),
    set_image_tokens=set_gemma3_crops,
    packing_refusal=(
        "Gemma 3's sliding-window layers get the bidirectional image-block mask as an or_mask_function, "
        "which transformers (5.23) applies before remapping positions for packed rows, so every sample "
        "after a row's first reads its image-block ids at the wrong positions (its loss changes)"
    ),
    notes=(
        "no system turn: a system message is folded into the first user turn; the assistant role is "
        "'model'; <start_of_image> expands to <start_of_image> + image_seq_length (256) soft tokens + "
        "<end_of_image>, and the processor's image_token(_id) is <start_of_image>, not the soft token; "
        "token_type_ids (image soft tokens = 1) make each image attend bidirectionally; LM layers alternate "
        "sliding-window and full attention (5:1 on the hub); fixed image size, optional pan-and-scan crops"
    ),
)

FAMILIES["qwen3_5"] = FamilyFacts(
    name="qwen3_5",
    model_types=("qwen3_5",),
    language_model="model.language_model",
    vision_tower="model.visual",
    projector="model.visual.merger",
    # gated full attention in 1 layer of 4, Gated DeltaNet linear attention in the others
    attention_modules=(
        *ATTENTION_QKVO,
        "linear_attn.in_proj_qkv",
        "linear_attn.in_proj_z",
        "linear_attn.out_proj",
    ),
    mlp_modules=GATED_MLP,
    # per-head beta / decay projections (hidden -> linear_num_value_heads outputs)
    extra_layer_modules=("linear_attn.in_proj_a", "linear_attn.in_proj_b"),
    end_of_turn="<|im_end|>",
    checkpoints=("Qwen/Qwen3.5-0.8B", "Qwen/Qwen3.5-2B"),
    # non-thinking turns whatever the checkpoint's default (0.8B / 2B: off already; 4B+ default to thinking)
    chat_template_kwargs=(("enable_thinking", False),),
    set_image_tokens=set_qwen_pixels,
    packed_positions="mrope",
    vision_recompiles_per_image_count=True,
    packing_refusal=(
        "Qwen3.5's Gated DeltaNet layers carry their short-convolution and recurrent state across a packed "
        "row: transformers' torch path ignores sample boundaries (given seq_idx / cu_seqlens it raises and "
        "asks for the optional causal-conv1d and flash-linear-attention kernels)"
    ),
    notes=(
        "hybrid LM (config.text_config.layer_types: linear_attention x3, full_attention x1); full attention "
        "q_proj also yields an output gate; Qwen3-VL vision (32 px per image token) without deepstack, "
        "Qwen3VLProcessor. Reasoning template: 0.8B / 2B prompt '<|im_start|>assistant\\n<think>\\n\\n"
        "</think>\\n\\n' (thinking opt-in), answers train after that empty think block; 4B / 9B / 27B default "
        "to thinking (open '<think>\\n' prompt): every render passes enable_thinking=False (chat_template_kwargs); "
        "their templates are not replicated here, so they stay off the checkpoint list"
    ),
)

FAMILIES["granite_docling"] = dataclasses.replace(
    FAMILIES["idefics3"],
    name="granite_docling",
    model_types=("granite_docling",),
    projector="model.vision_model.connector",  # the connector (and DeepStack mergers) live in the vision model
    end_of_turn="<|end_of_text|>",
    checkpoints=("docling-project/granite-for-docling-500m",),
    set_image_tokens=set_granite_docling_tiles,
    notes=(
        "transformers' granite_docling = Granite-for-Docling (500M): GotOcr2-style tiles + thumbnail, "
        "DeepStack features added after the first decoder layers, optional fine path (fine_route: 4x tokens "
        "per tile), dense Granite LM (logits divided by logits_scaling). Granite roles "
        "'<|start_of_role|>user<|end_of_role|>...<|end_of_text|>\\n', generation prompt "
        "'<|start_of_role|>assistant<|end_of_role|>' (no space before the answer). "
        "ibm-granite/granite-docling-258M is model_type idefics3, not this family"
    ),
)


FAMILIES["gemma4"] = FamilyFacts(
    name="gemma4",
    model_types=("gemma4",),
    language_model="model.language_model",
    vision_tower="model.vision_tower",
    projector="model.embed_vision",
    attention_modules=ATTENTION_QKVO,
    mlp_modules=GATED_MLP,
    # E2B / E4B per-layer-embedding gates inside each decoder layer (absent on 26B-A4B / 31B)
    extra_layer_modules=("per_layer_input_gate", "per_layer_projection"),
    end_of_turn="<turn|>",
    plain_text_roles=("system",),  # the template trims messages[0]['content'] as a string
    # google/gemma-4-26B-A4B-it and -31B-it are model_type gemma4 too, but their generation prompt is no
    # prefix of the rendered conversation (see notes): the chat collator refuses them until an adapter exists
    checkpoints=("google/gemma-4-E2B-it", "google/gemma-4-E4B-it"),
    set_image_tokens=set_gemma4_soft_tokens,
    packing_refusal=(
        "not shown exact for any Gemma 4 checkpoint in transformers 5.23: E2B / E4B packed gradients differ "
        "from one sample at a time by up to 1.7e-5 (on values near 10; the exactness test allows 1e-6), and "
        "26B-A4B / 31B give their sliding-window layers a bidirectional image-block mask that packed rows read "
        "at the wrong positions"
    ),
    notes=(
        "turns '<|turn>role\\n...<turn|>\\n', assistant role 'model', generation prompt '<|turn>model\\n' "
        "(E2B/E4B; the 26B-A4B / 31B templates append an empty '<|channel>thought\\n<channel|>' that the "
        "rendered answer turn lacks, so their prompt is no prefix of the conversation); the system turn renders "
        "its content as a string (typed parts come out as their repr); <|image|> expands to <|image> + soft "
        "tokens + <image|>; image budgets 70/140/280/560/1120 soft tokens (max_soft_tokens); LM layers "
        "alternate sliding-window and full attention (4:1 E2B, 5:1 others); E2B/E4B add per-layer embeddings "
        "and KV sharing and an audio tower; 26B-A4B is MoE (experts are 3-D parameters, no LoRA)"
    ),
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
