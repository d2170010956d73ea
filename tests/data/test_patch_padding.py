"""Patch padding cut to the batch's longest image: pure tensor cases and the LFM2-VL replica's outputs."""

from __future__ import annotations

import torch

from vlm_lightning.data.patch_padding import trim_patch_padding


def naflex_batch(lengths: list[int], padded_to: int, dim: int = 3) -> dict[str, torch.Tensor]:
    mask = torch.zeros(len(lengths), padded_to, dtype=torch.int32)
    values = torch.zeros(len(lengths), padded_to, dim)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        values[i, :n] = i + 1
    return {
        "pixel_values": values,
        "pixel_attention_mask": mask,
        "spatial_shapes": torch.tensor([[1, 1]] * len(lengths)),
    }


def test_cut_to_longest_rounded_up_to_the_multiple() -> None:
    batch = naflex_batch([70, 130, 5], padded_to=1024)
    out = trim_patch_padding(batch, multiple=64)
    assert out["pixel_values"].shape == (3, 192, 3) and out["pixel_attention_mask"].shape == (3, 192)
    assert out["pixel_attention_mask"].sum(1).tolist() == [70, 130, 5]  # every real patch kept
    assert torch.equal(out["pixel_values"], batch["pixel_values"][:, :192])
    assert out["spatial_shapes"] is batch["spatial_shapes"]


def test_nothing_to_cut_or_not_naflex_is_unchanged() -> None:
    full = naflex_batch([256, 200], padded_to=256)
    assert trim_patch_padding(full, multiple=64) is full
    qwen = {"pixel_values": torch.zeros(100, 1176), "image_grid_thw": torch.tensor([[1, 10, 10]])}
    assert trim_patch_padding(qwen) is qwen
    idefics = {"pixel_values": torch.zeros(1, 2, 3, 8, 8), "pixel_attention_mask": torch.ones(1, 2, 8, 8)}
    assert trim_patch_padding(idefics) is idefics


def test_padding_not_at_the_end_is_left_alone() -> None:
    batch = naflex_batch([10], padded_to=256)
    batch["pixel_attention_mask"][0, 200] = 1  # a real patch after the padding: do not cut it away
    assert trim_patch_padding(batch, multiple=64) is batch


def test_lfm2_vl_outputs_equal_with_and_without_the_padding(tiny_replica) -> None:  # noqa: ANN001
    from PIL import Image

    from vlm_lightning.models.loading import load_model, load_processor

    path = str(tiny_replica("lfm2_vl"))
    processor = load_processor(path, image_max_tokens=256)  # pads each image to 1,024 patches
    text = [f"{processor.image_token} Read it." for _ in range(2)]
    images = [[Image.new("RGB", (64, 96), (200, 30, 30))], [Image.new("RGB", (96, 64), (20, 120, 230))]]
    batch = dict(processor(text=text, images=images, return_tensors="pt", padding=True))
    trimmed = trim_patch_padding(batch)
    assert trimmed["pixel_values"].shape[1] < batch["pixel_values"].shape[1]
    model = load_model(path, dtype="float32").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**trimmed).logits, model(**batch).logits, rtol=1e-4, atol=1e-4)
