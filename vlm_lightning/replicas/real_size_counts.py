"""Parameter counts of a VLM by where they run: LM, embedding, untied lm_head, vision encoder, projector."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from vlm_lightning.models.families import FamilyFacts


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
