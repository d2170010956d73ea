"""Which families' packed rows run the vision tower eager: those whose compiled vision layers recompile per image count.

Qwen2-VL's vision attention (transformers) splits queries per image behind a graph break, so the resumed frame
guards on the number of images; the Qwen-style towers (``image_grid_thw`` input) share this. Unpacked batches keep
the count fixed (one image per sample, ``batch_size`` samples); packed batches change it every step. The towers
that take a batch of images (LFM2-VL's SigLIP2, Idefics3 / SmolVLM, InternVL) compile one shape-generic graph
after the second count. ``FamilyFacts.vision_recompiles_per_image_count`` records which is which; if this test
fails, upstream changed a tower: re-measure compiled packing (docs/benchmarks.md) and update the fact that
``VLMFineTuner._eager_vision_for_packing`` reads.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from PIL import Image

from vlm_lightning.models.acceleration import compile_vision_layers
from vlm_lightning.models.build import build_model
from vlm_lightning.models.families import FAMILIES
from vlm_lightning.models.loading import family_of, load_processor

PACKING_FAMILIES = [name for name, facts in FAMILIES.items() if facts.packing_refusal is None]


def _vision_inputs(processor, params, n_images: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    images = [Image.new("RGB", (56, 56), (40 * i, 200, 90)) for i in range(n_images)]
    out = processor.image_processor(images=images, return_tensors="pt")
    return {key: value for key, value in out.items() if key in params}


def test_the_packing_families_are_the_ones_checked() -> None:
    assert "paligemma" not in PACKING_FAMILIES and "qwen3_5" not in PACKING_FAMILIES
    assert {"qwen2_vl", "lfm2_vl", "idefics3", "internvl"} <= set(PACKING_FAMILIES)


@pytest.mark.parametrize("family", PACKING_FAMILIES)
def test_compiled_vision_layers_recompile_per_image_count_as_the_family_fact_says(
    family: str, tiny_replica
) -> None:  # noqa: ANN001
    path = str(tiny_replica(family))
    model = build_model(path, dtype="float32").model.eval()
    facts = family_of(path)
    processor = load_processor(path, image_max_tokens=16)
    params = inspect.signature(model.get_image_features).parameters
    torch._dynamo.reset()
    compile_vision_layers(model, facts, backend="eager")
    counters = torch._dynamo.utils.counters
    graphs = []
    try:
        with torch.no_grad():
            for n_images in (3, 3, 4, 5, 6, 6):
                model.get_image_features(**_vision_inputs(processor, params, n_images))
                graphs.append(counters["stats"]["unique_graphs"])
    finally:
        torch._dynamo.reset()
    if facts.vision_recompiles_per_image_count:
        assert graphs[2] > graphs[1] and graphs[3] > graphs[2] and graphs[4] > graphs[3], (
            graphs
        )  # each new count
    else:  # static first, one shape-generic graph from the second count on
        assert graphs[1] == graphs[0] and graphs[2] == graphs[3] == graphs[4] == graphs[5], graphs
