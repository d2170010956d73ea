"""Why packed rows run the vision tower eager by default: a compiled Qwen-style vision tower recompiles for every image count.

Qwen2-VL's vision attention (transformers) splits queries per image behind a graph break, so the resumed frame
guards on the number of images. Unpacked batches keep it fixed (one image per sample, ``batch_size`` samples);
packed batches change it every step. If this test fails, upstream changed that path: re-measure compiled packing
(docs/benchmarks.md) and revisit ``VLMFineTuner._eager_vision_for_packing``.
"""

from __future__ import annotations

import torch
from PIL import Image

from vlm_lightning.models.acceleration import compile_vision_layers
from vlm_lightning.models.build import build_model
from vlm_lightning.models.loading import family_of, load_processor


def _vision_inputs(processor, n_images: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    images = [Image.new("RGB", (56, 56), (40 * i, 200, 90)) for i in range(n_images)]
    out = processor.image_processor(images=images, return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def test_compiled_qwen_vision_layers_recompile_per_image_count(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("qwen2_vl"))
    model = build_model(path, dtype="float32").model.eval()
    facts = family_of(path)
    processor = load_processor(path, image_max_tokens=16)
    torch._dynamo.reset()
    compile_vision_layers(model, facts, backend="eager")
    counters = torch._dynamo.utils.counters
    graphs = []
    with torch.no_grad():
        for n_images in (3, 3, 4, 5, 6, 6):
            model.get_image_features(**_vision_inputs(processor, n_images))
            graphs.append(counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    assert graphs[1] == graphs[0]  # the same image count: no new graph
    assert graphs[2] > graphs[1] and graphs[3] > graphs[2] and graphs[4] > graphs[3]  # each new count: more
    assert graphs[5] == graphs[4]
