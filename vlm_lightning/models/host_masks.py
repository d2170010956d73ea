"""Text attention masks whose padding decision is taken on the CPU copy of a batch: no host sync per forward.

Before it builds a mask, transformers asks on the host whether the 2-D padding mask holds any zero: can the
mask be dropped (sdpa then runs ``is_causal``), does the recurrent (convolution / linear-attention) layer need
one (``masking_utils._ignore_causal_mask_sdpa``'s ``fast_all``, ``create_recurrent_attention_mask``'s
``torch.all``)? Packed rows (no mask) ask which rows pack several samples (``find_packed_sequence_indices``).
On a GPU batch each question is a sync: the host waits for every queued kernel before it can launch the
forward's (measured on LFM2-VL-1.6B: 4.2 % of the step's host time). The trainer answers them on the CPU batch
(``padded_rows``, ``packed_sequence_ids``) and hands the text model masks built by the library's own factories
without the questions (``allow_is_causal_skip=False`` when padded, no mask when not, the block-causal mask of
the packed samples), through the library's own entry for prepared masks: a per-layer-type mapping, or a 4-D
mask (every mask factory returns one as-is). Same masks, so the same numbers
(``tests/models/test_host_masks.py`` compares them with the library's on every model type here).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from transformers import masking_utils

#: how each text model type takes prepared masks: ``mapping`` (a dict keyed by layer type, as ``generate``
#: passes it) or ``4d`` (one mask, for text models whose layers are all full attention); the text models of
#: every family with a replica here that reads the 2-D mask for nothing else (not Gemma / PaliGemma: their
#: image tokens attend both ways, a mask the VL model builds from ``token_type_ids``)
PREPARED_MASK_FORMS: dict[str, Literal["mapping", "4d"]] = {
    "qwen2_vl_text": "mapping",
    "qwen2_5_vl_text": "mapping",
    "qwen3_vl_text": "4d",
    "qwen3_5_text": "mapping",
    "qwen2": "mapping",  # InternVL
    "lfm2": "mapping",
    "lfm3": "mapping",
    "llama": "4d",  # Idefics3, SmolVLM
    "granite_docling_text": "4d",
    "paddleocr_vl_text": "4d",
}
#: VL model types whose own position index (M-RoPE) reads the 2-D mask when no ``position_ids`` are given
MASK_READ_BY_POSITIONS = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "paddleocr_vl"})
_CAUSAL_FACTORIES = {
    "full_attention": masking_utils.create_causal_mask,
    "sliding_attention": masking_utils.create_sliding_window_causal_mask,
}
_RECURRENT = ("conv", "linear_attention")
_KERNELS = ("sdpa", "eager")  # the kernels whose factories ask the question (flash / flex: left as they are)


def padded_rows(attention_mask: torch.Tensor) -> bool:
    """Whether a CPU padding mask masks any position (the question, answered before the batch moves)."""
    return bool((attention_mask == 0).any())


def _text_layout(model: torch.nn.Module) -> tuple[Any, list[str], Literal["mapping", "4d"]] | None:
    text = model.config.get_text_config()
    form = PREPARED_MASK_FORMS.get(getattr(text, "model_type", ""))
    if form is None or getattr(text, "_attn_implementation", None) not in _KERNELS:
        return None
    layer_types = list(getattr(text, "layer_types", None) or ["full_attention"])
    known = set(_CAUSAL_FACTORIES) | (set(_RECURRENT) if form == "mapping" else set())
    if not set(layer_types) <= known or (form == "4d" and set(layer_types) != {"full_attention"}):
        return None
    return text, layer_types, form


def _text_positions(position_ids: Any) -> torch.Tensor | None:
    """The 1-D positions per row the text model detects packed sequences from (Qwen: the text plane)."""
    if not torch.is_tensor(position_ids):
        return None
    if position_ids.ndim == 3 and position_ids.shape[0] == 4:
        return position_ids[0]
    return position_ids if position_ids.ndim == 2 else None


def prepares_text_masks(model: torch.nn.Module, inputs: dict[str, Any] | None = None) -> bool:
    """Whether ``host_decided_masks`` prepares this model's text masks (for these ``inputs``, when given):
    a 2-D padding mask, or packed rows (no mask; positions that restart per sample)."""
    if _text_layout(model) is None:
        return False
    return inputs is None or _inputs_take_prepared_masks(model, inputs)


def _inputs_take_prepared_masks(model: torch.nn.Module, inputs: dict[str, Any]) -> bool:
    mask = inputs.get("attention_mask")
    if mask is None:  # packed rows
        return _text_positions(inputs.get("position_ids")) is not None
    if not torch.is_tensor(mask) or mask.ndim != 2:
        return False  # a 4-D or prepared mask already
    # the model's own position index still reads the 2-D mask
    return not (model.config.model_type in MASK_READ_BY_POSITIONS and inputs.get("position_ids") is None)


def packed_sequence_ids(inputs: dict[str, Any]) -> torch.Tensor | None:
    """The sample index of each token of packed rows, found on the CPU copy by the library's own
    ``find_packed_sequence_indices`` (on a GPU batch it asks whether any row packs two samples: a sync);
    None when no row does."""
    positions = _text_positions(inputs.get("position_ids"))
    if positions is None:
        return None
    return masking_utils.find_packed_sequence_indices(positions.expand(inputs["input_ids"].shape[0], -1))


def host_decided_masks(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    padded: bool = False,
    sequence_ids: torch.Tensor | None = None,
) -> dict[str, Any]:
    """``inputs`` with the text model's masks prepared: its 2-D ``attention_mask`` replaced, or (packed rows)
    block-causal masks added.

    ``padded``: ``padded_rows`` of the CPU copy of the 2-D mask. ``sequence_ids``: packed rows'
    ``packed_sequence_ids`` (None: no row holds two samples). Unchanged when the model's masks cannot be
    prepared here (``prepares_text_masks``), and where no 4-D mask stands for what the library would do.
    """
    layout = _text_layout(model)
    if layout is None or not _inputs_take_prepared_masks(model, inputs):
        return inputs
    text, layer_types, form = layout
    mask = inputs.get("attention_mask")
    packed = mask is None
    if form == "4d" and not (sequence_ids is not None if packed else padded):
        return inputs  # no 4-D stand-in for "no mask" (dropping the mask would change other readers of it)
    embeddings = model.get_input_embeddings().weight
    rows = inputs["input_ids"] if packed else mask
    # the factories read only the batch size, length, dtype and device of the embeddings
    shape_of_embeddings = torch.empty((*rows.shape[:2], 0), dtype=embeddings.dtype, device=rows.device)
    if packed and sequence_ids is not None:
        # what the library builds from positions restarting per sample: causal within each sample
        ids = sequence_ids.to(rows.device, non_blocking=True)
        options: dict[str, Any] = {
            "attention_mask": None,
            "and_mask_function": masking_utils.packed_sequence_mask_function(ids),
            "allow_is_causal_skip": False,
        }
    else:  # padded rows: the mask, never dropped; unpadded rows or one sample per packed row: none
        options = {"attention_mask": mask if padded else None, "allow_is_causal_skip": not padded}
    masks: dict[str, Any] = {}
    for kind in dict.fromkeys(layer_types):
        if kind in _RECURRENT:  # what create_recurrent_attention_mask returns for a full-length forward
            masks[kind] = mask.contiguous() if padded and not packed else None
            continue
        masks[kind] = _CAUSAL_FACTORIES[kind](
            config=text, inputs_embeds=shape_of_embeddings, past_key_values=None, position_ids=None, **options
        )
    return {**inputs, "attention_mask": masks if form == "mapping" else masks["full_attention"]}


__all__ = [
    "packed_sequence_ids",
    "MASK_READ_BY_POSITIONS",
    "PREPARED_MASK_FORMS",
    "host_decided_masks",
    "padded_rows",
    "prepares_text_masks",
]
