"""LFM2-VL's sync-free methods (``patches/lfm2_host_shapes.py``) give transformers' own results."""

from __future__ import annotations

import pytest
import torch
from fixtures_data import chat_batch

from vlm_lightning.models.loading import family_of


def test_sync_free_lfm2_image_features_match_the_library(tiny_replica) -> None:  # noqa: ANN001
    """Shapes read from the CPU: the same logits and gradients as transformers' own methods."""
    from vlm_lightning.models.host_inputs import use_host_shapes
    from vlm_lightning.models.loading import load_model
    from vlm_lightning.training.loss import causal_lm_loss

    path = str(tiny_replica("lfm2_vl"))
    batch = chat_batch(path, sizes=((64, 80), (96, 48), (40, 40)))
    # images of different sizes in one batch: each image's features are cut at its own length
    assert len({tuple(s) for s in batch["inputs"]["spatial_shapes"].tolist()}) > 1
    results = []
    for patched in (False, True):
        torch.manual_seed(0)
        model = load_model(path, dtype="float32")
        if patched:
            assert use_host_shapes(model, family_of(path)) == 1
            assert "get_image_features" in vars(model.model)
        loss, n_tokens, correct = causal_lm_loss(model, batch["inputs"], batch["labels"])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), int(n_tokens), int(correct), grads))
    (loss_a, n_a, c_a, g_a), (loss_b, n_b, c_b, g_b) = results
    assert torch.equal(loss_a, loss_b) and (n_a, c_a) == (n_b, c_b) and g_a.keys() == g_b.keys()
    assert all(torch.equal(g_a[k], g_b[k]) for k in g_a)
    qwen = str(tiny_replica("qwen2_vl"))
    assert use_host_shapes(load_model(qwen, dtype="float32"), family_of(qwen)) == 0


def test_device_side_placeholder_mask_equals_the_library(tiny_replica) -> None:  # noqa: ANN001
    """The mask the patch builds for GPU inputs is the library's mask; a count mismatch still fails."""
    from vlm_lightning.models.loading import load_model
    from vlm_lightning.patches.lfm2_host_shapes import _device_side_placeholder_mask, bind_lfm2_vl_host_shapes

    model = load_model(str(tiny_replica("lfm2_vl")), dtype="float32")
    inner = model.model
    image = inner.config.image_token_id
    input_ids = torch.tensor([[1, image, image, 5, 6], [image, 7, 8, image, image]])
    hidden = inner.config.text_config.hidden_size
    inputs_embeds = torch.randn(2, 5, hidden)
    features = torch.randn(5, hidden)  # five image tokens
    library = type(inner).get_placeholder_mask(
        inner, input_ids=input_ids, inputs_embeds=inputs_embeds, image_features=features
    )
    ours = _device_side_placeholder_mask(inner, input_ids, inputs_embeds, features)
    assert ours.dtype == library.dtype and torch.equal(ours, library)
    assert bind_lfm2_vl_host_shapes(model) == 1
    bound = inner.get_placeholder_mask(
        input_ids=input_ids, inputs_embeds=inputs_embeds, image_features=features
    )
    assert torch.equal(bound, library)  # CPU input ids: the library's own method
    with pytest.raises(Exception, match="[Ii]mage features and image tokens do not match"):
        type(inner).get_placeholder_mask(
            inner, input_ids=input_ids, inputs_embeds=inputs_embeds, image_features=features[:4]
        )
    with pytest.raises(RuntimeError):  # the same check, asserted on the device (raises at once on the CPU)
        _device_side_placeholder_mask(inner, input_ids, inputs_embeds, features[:4])


@pytest.mark.parametrize(
    "sizes", [((64, 80), (96, 48), (40, 40)), ((64, 64), (64, 64))], ids=["padded", "full"]
)
def test_tower_mask_from_the_cpu_shapes_is_the_library_mask(tiny_replica, sizes, monkeypatch) -> None:  # noqa: ANN001
    """The SigLIP2 mask built from the CPU shapes equals the tower's own, and its padding is never read."""
    from transformers import masking_utils

    from vlm_lightning.models.loading import load_model
    from vlm_lightning.patches.lfm2_host_shapes import _tower_mask

    path = str(tiny_replica("lfm2_vl"))
    tower = load_model(path, dtype="float32").model.vision_tower
    inputs = chat_batch(path, sizes=sizes)["inputs"]
    mask, shapes = inputs["pixel_attention_mask"], inputs["spatial_shapes"]
    if sizes[0] == sizes[1]:  # rows trimmed to the equal images' patches: nothing masked
        mask = mask[:, : int(shapes[0].prod())]
    assert tower.config._attn_implementation == "sdpa" and not tower.use_head
    library = masking_utils.create_bidirectional_mask(
        config=tower.config, inputs_embeds=torch.zeros((*mask.shape, 4)), attention_mask=mask
    )
    assert (library is None) == (sizes[0] == sizes[1])  # equal images fill every row: no mask at all
    with monkeypatch.context() as patched:
        patched.setattr(masking_utils, "_ignore_bidirectional_mask_sdpa", lambda *a, **k: pytest.fail("read"))
        ours = _tower_mask(tower, shapes, mask)
    if library is None:
        assert ours is None
    else:
        assert torch.equal(ours, library)
