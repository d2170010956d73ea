"""Real-size VLM architectures with random weights, built from their published configs (no hub, no weights).

For throughput benchmarks the cost of a step depends on the architecture, not on the weights, so each
builder here reproduces a checkpoint's ``config.json`` numbers, pairs them with a byte-level tokenizer
(``vlm_lightning.replicas.common.byte_level_tokenizer``: one token per byte, the family's special tokens)
whose embedding table is padded to the real vocabulary size (so the embedding and lm_head cost is real),
and saves only the small part to disk: ``config.json`` plus the processor (tokenizer, chat template,
image processor). The model itself is created in memory on the target device with ``from_config``
(random weights, bf16 on GPU), never saved: no 4 GB write / read.

    python -m vlm_lightning.replicas.real_size qwen2_vl_2b --count     # parameter counts (meta device)
    python -m vlm_lightning.replicas.real_size lfm2_vl_1_6b --out artifacts/real-lfm2-vl

Sources of every number are given next to it. ``shrink=True`` keeps the same classes, tokenizer and
processor but tiny dimensions, to exercise a family's code path on CPU in seconds.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vlm_lightning.models.families import FAMILIES, FamilyFacts
from vlm_lightning.replicas.common import byte_level_tokenizer
from vlm_lightning.replicas.qwen import QWEN2_VL_CHAT_TEMPLATE, qwen_vision_token_ids

# --------------------------------------------------------------------------------------------
# Qwen2-VL-2B-Instruct
# Source: huggingface.co/Qwen/Qwen2-VL-2B-Instruct/blob/main/config.json (vision_config and the
# text fields below) and preprocessor_config.json (min_pixels 3136 = 56*56, patch 14, merge 2).
# Check: the built model has 2,208,985,600 parameters (tied embeddings), the published size.
# --------------------------------------------------------------------------------------------
QWEN2_VL_2B_TEXT = {
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
}
QWEN2_VL_2B_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 1536,  # the merger projects to the LM width
    "num_heads": 16,
    "mlp_ratio": 4,
    "hidden_act": "quick_gelu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
# Qwen2-VL-7B-Instruct (huggingface.co/Qwen/Qwen2-VL-7B-Instruct/blob/main/config.json): the same vision
# tower merging into a 3584-wide LM; untied embeddings. Published size 8.29B parameters (8,291,375,616).
QWEN2_VL_7B_TEXT = {
    **QWEN2_VL_2B_TEXT,
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
}
QWEN2_VL_7B_VISION = {**QWEN2_VL_2B_VISION, "hidden_size": 3584}
QWEN2_VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# --------------------------------------------------------------------------------------------
# LFM2-VL-1.6B (LiquidAI/LFM2-VL-1.6B)
# Model card (huggingface.co/LiquidAI/LFM2-VL-1.6B): LM backbone LFM2-1.2B ("Parameters (LM only)
# 1.2B"), vision encoder "SigLIP2 NaFlex shape-optimized (400M)", vocab 65,536, bf16.
#
# Text = LFM2-1.2B, huggingface.co/LiquidAI/LFM2-1.2B/blob/main/config.json: hidden_size 2048,
# num_hidden_layers 16, num_attention_heads 32, num_key_value_heads 8, block_ff_dim 12288 with
# block_auto_adjust_ff_dim true, block_multiple_of 256, block_ffn_dim_multiplier 1.0 (so the SwiGLU
# width is 256 * ceil(int(2 * 12288 / 3) / 256) = 8192), full_attn_idxs [2, 5, 8, 10, 12, 14]
# (10 short-conv + 6 GQA blocks, as in transformers' docs/source/en/model_doc/lfm2.md), conv_L_cache 3,
# conv_bias false, norm_eps 1e-5, rope_theta 1e6, max_position_embeddings 128000, vocab_size 65536,
# tie_embedding true. transformers' Lfm2Config maps block_ff_dim -> intermediate_size.
#
# Vision = SigLIP2 so400m/16 NaFlex: hidden 1152, intermediate 4304, 27 layers, 16 heads, patch 16,
# num_patches 256, gelu_pytorch_tanh, layer_norm_eps 1e-6, vision_use_head false; top level
# vision_feature_layer -2, downsample_factor 2, projector_hidden_size 2560, projector_bias true,
# projector gelu, image_token_index 396 (the geometry of the checkpoint's config.json as quoted by the
# mlx-community/LFM2-VL-1.6B-4bit conversion; the LFM2-VL-450M config.json has the same top-level keys
# with the 86M base tower). The original remote code (modeling_lfm2_vl.py shipped with the checkpoint)
# slices ``encoder.layers[: vision_feature_layer + 1]``, so 26 of the 27 layers run; transformers'
# native Lfm2VlModel always uses the tower's last_hidden_state, so the replica has 26 layers: what
# runs in the real model. Image processor defaults (min/max image tokens 64/256, tile 512, encoder
# patch 16, thumbnail on) are transformers' Lfm2VlImageProcessor defaults = the checkpoint's.
# --------------------------------------------------------------------------------------------
LFM2_1_2B_TEXT = {
    "model_type": "lfm2",
    "vocab_size": 65536,
    "hidden_size": 2048,
    "intermediate_size": 12288,  # = block_ff_dim; auto-adjusted to 8192 inside Lfm2MLP
    "block_auto_adjust_ff_dim": True,
    "block_multiple_of": 256,
    "block_ffn_dim_multiplier": 1.0,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "layer_types": ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
    "conv_L_cache": 3,
    "conv_bias": False,
    "norm_eps": 1e-5,
    "max_position_embeddings": 128000,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
}
LFM2_VL_1_6B_VISION = {
    "model_type": "siglip2_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,  # 27-layer so400m tower, vision_feature_layer -2 -> 26 layers run
    "num_attention_heads": 16,
    "num_channels": 3,
    "patch_size": 16,
    "num_patches": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}
LFM2_VL_1_6B_TOP = {
    "projector_hidden_size": 2560,
    "projector_hidden_act": "gelu",
    "projector_bias": True,
    "projector_use_layernorm": True,
    "downsample_factor": 2,
}
LFM2_VL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LFM2_VL_SPECIALS = [
    "<|pad|>",
    "<|startoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "<|image_start|>",
    "<|image_end|>",
    "<|img_thumbnail|>",
    *[f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11)],
]


def _pad_vocab(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def _qwen2_vl_2b(out_dir: Path, shrink: bool) -> Any:
    """Write the Qwen2-VL-2B processor; return its config (real or shrunk dims)."""
    return _qwen2_vl(out_dir, shrink, QWEN2_VL_2B_TEXT, QWEN2_VL_2B_VISION, tie=True)


def _qwen2_vl_7b(out_dir: Path, shrink: bool) -> Any:
    """Write the Qwen2-VL-7B processor; return its config (real or shrunk dims)."""
    return _qwen2_vl(out_dir, shrink, QWEN2_VL_7B_TEXT, QWEN2_VL_7B_VISION, tie=False)


def _qwen2_vl(out_dir: Path, shrink: bool, text_dims: dict, vision_dims: dict, tie: bool) -> Any:
    """A Qwen2-VL processor written to ``out_dir`` and the config of the given dimensions."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = byte_level_tokenizer(QWEN2_VL_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIALS}
    text = dict(text_dims)
    vision = dict(vision_dims)
    if shrink:
        text.update(
            vocab_size=_pad_vocab(len(tokenizer)),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
        )
        vision.update(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    text.update(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        use_cache=False,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        **qwen_vision_token_ids(ids),
        tie_word_embeddings=tie,
    )
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return config


def _lfm2_vl_1_6b(out_dir: Path, shrink: bool) -> Any:
    """Write the LFM2-VL-1.6B processor; return its config (real or shrunk dims)."""
    from transformers import Lfm2VlConfig, Lfm2VlImageProcessor, Lfm2VlProcessor

    tokenizer = byte_level_tokenizer(LFM2_VL_SPECIALS, bos="<|startoftext|>", eos="<|im_end|>", pad="<|pad|>")
    tokenizer.chat_template = LFM2_VL_CHAT_TEMPLATE
    ids = {
        t: tokenizer.convert_tokens_to_ids(t) for t in ("<|pad|>", "<|startoftext|>", "<|im_end|>", "<image>")
    }
    text = dict(LFM2_1_2B_TEXT)
    vision = dict(LFM2_VL_1_6B_VISION)
    top = dict(LFM2_VL_1_6B_TOP)
    if shrink:
        text.update(
            vocab_size=_pad_vocab(len(tokenizer)),
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            layer_types=["conv", "full_attention", "conv"],
        )
        vision.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        top.update(projector_hidden_size=64)
    text.update(
        bos_token_id=ids["<|startoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|pad|>"],
        use_cache=False,
    )
    config = Lfm2VlConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<image>"], tie_word_embeddings=True, **top
    )
    processor = Lfm2VlProcessor(
        image_processor=Lfm2VlImageProcessor(), tokenizer=tokenizer, chat_template=LFM2_VL_CHAT_TEMPLATE
    )
    processor.save_pretrained(out_dir)
    return config


@dataclass(frozen=True)
class RealArchitecture:
    """One real-size architecture: which family it belongs to and how to write its folder."""

    name: str
    family: str
    checkpoint: str
    write: Callable[[Path, bool], Any]


REAL_ARCHITECTURES: dict[str, RealArchitecture] = {
    "qwen2_vl_2b": RealArchitecture("qwen2_vl_2b", "qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct", _qwen2_vl_2b),
    "qwen2_vl_7b": RealArchitecture("qwen2_vl_7b", "qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct", _qwen2_vl_7b),
    "lfm2_vl_1_6b": RealArchitecture("lfm2_vl_1_6b", "lfm2_vl", "LiquidAI/LFM2-VL-1.6B", _lfm2_vl_1_6b),
}


def family_facts(family: str) -> FamilyFacts:
    """The family's facts from ``FAMILIES`` (by name or model type)."""
    if family in FAMILIES:
        return FAMILIES[family]
    for facts in FAMILIES.values():
        if family in facts.model_types:
            return facts
    raise ValueError(f"unknown family {family!r}")


def build_real_folder(name: str, out_dir: str | Path, *, shrink: bool = False) -> Path:
    """Write ``config.json`` + processor of a real architecture (no weights) into ``out_dir``."""
    if name not in REAL_ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(REAL_ARCHITECTURES))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch = REAL_ARCHITECTURES[name]
    config = arch.write(out, shrink)
    config.save_pretrained(out)
    (out / "real_architecture.json").write_text(
        json.dumps({"name": name, "family": arch.family, "checkpoint": arch.checkpoint, "shrink": shrink})
        + "\n"
    )
    return out


def build_model(
    config: Any,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> torch.nn.Module:
    """Instantiate ``config`` with random weights directly on ``device`` (same seed -> same weights)."""
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    return model


@dataclass
class ParamCounts:
    """Parameter counts of a VLM split by where they run (base weights only, adapters excluded)."""

    lm_non_embedding: int
    embedding: int
    lm_head_untied: int
    vision_encoder: int
    projector: int
    total: int
    hidden_size: int
    vocab_size: int
    tied: bool

    def summary(self) -> str:
        """One line with every count in millions."""

        def m(n: int) -> str:
            return f"{n / 1e6:,.1f}M"

        head = "tied to embedding" if self.tied else m(self.lm_head_untied)
        return (
            f"total {m(self.total)} | LM non-embedding {m(self.lm_non_embedding)} | embedding {m(self.embedding)} "
            f"({self.vocab_size} x {self.hidden_size}) | lm_head {head} | vision encoder {m(self.vision_encoder)} "
            f"| projector {m(self.projector)}"
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return asdict(self)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _numel(module: torch.nn.Module, seen: set[int] | None = None) -> int:
    total = 0
    for name, p in module.named_parameters():
        if "lora_" in name or (seen is not None and id(p) in seen):
            continue
        if seen is not None:
            seen.add(id(p))
        total += p.numel()
    return total


def parameter_counts(model: torch.nn.Module, facts: FamilyFacts) -> ParamCounts:
    """Count LM (non-embedding), embedding, untied lm_head, vision encoder and projector parameters."""
    base = _unwrap(model)
    lm = base.get_submodule(facts.language_model)
    emb = lm.get_input_embeddings().weight
    head = base.get_output_embeddings()
    tied = head is None or head.weight is emb or head.weight.data_ptr() == emb.data_ptr()
    vision = base.get_submodule(facts.vision_tower)
    projector = base.get_submodule(facts.projector)
    projector_params = _numel(projector)
    vision_params = _numel(vision)
    projector_inside = any(m is projector for m in vision.modules())
    return ParamCounts(
        lm_non_embedding=_numel(lm) - emb.numel(),
        embedding=emb.numel(),
        lm_head_untied=0 if tied else head.weight.numel(),
        vision_encoder=vision_params - projector_params if projector_inside else vision_params,
        projector=projector_params,
        total=_numel(base, seen=set()),
        hidden_size=emb.shape[1],
        vocab_size=emb.shape[0],
        tied=tied,
    )


def count_on_meta(name: str, *, shrink: bool = False) -> ParamCounts:
    """Parameter counts of a real architecture without allocating it (meta device)."""
    import tempfile

    from transformers import AutoConfig

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_real_folder(name, tmp, shrink=shrink)
        config = AutoConfig.from_pretrained(folder)
    model = build_model(config, "meta", torch.bfloat16)
    return parameter_counts(model, family_facts(REAL_ARCHITECTURES[name].family))


def main(argv: list[str] | None = None) -> None:
    """CLI: write a real architecture's folder and/or print its parameter counts."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=sorted(REAL_ARCHITECTURES))
    parser.add_argument("--out", type=Path, help="folder for config.json + processor (no weights)")
    parser.add_argument(
        "--count", action="store_true", help="print parameter counts (meta device, no memory)"
    )
    parser.add_argument("--shrink", action="store_true", help="tiny dimensions, same classes")
    args = parser.parse_args(argv)
    if args.out:
        print(
            f"{args.name}: config + processor written to {build_real_folder(args.name, args.out, shrink=args.shrink)}"
        )
    if args.count or not args.out:
        print(f"{args.name}: {count_on_meta(args.name, shrink=args.shrink).summary()}")


if __name__ == "__main__":
    main()
