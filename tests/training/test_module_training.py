"""A few steps on a fixed batch lower the loss; only LoRA weights change; the tower stays frozen."""

from __future__ import annotations

import torch
from PIL import Image

from vlm_lightning.data.collator import ChatCollator
from vlm_lightning.data.records import Record
from vlm_lightning.models.loading import family_of, load_processor
from vlm_lightning.models.peft_setup import LoraSettings
from vlm_lightning.training.module import VLMFineTuner


def _batch(path: str, sizes: tuple[tuple[int, int], ...] = ((64, 80),) * 3) -> dict:
    collator = ChatCollator(load_processor(path, image_max_tokens=16), family_of(path), max_length=300)
    recs = [
        Record(
            str(i),
            ["x"],
            [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f'{{"n": {i}}}'}],
            [f'{{"n": {i}}}'],
        )
        for i in range(3)
    ]
    images = [Image.new("RGB", size, (i * 40, 255, 255)) for i, size in enumerate(sizes)]
    return collator([(r, [image]) for r, image in zip(recs, images, strict=True)])


def test_lora_steps_lower_loss_and_touch_only_adapters(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("qwen2_vl"))
    torch.manual_seed(0)
    module = VLMFineTuner(path, lora=LoraSettings(r=8, alpha=16, dropout=0.0), metrics=["exact_match"])
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(".visual." in n for n in trainable)  # vision tower untouched by default
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    batch = _batch(path)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss, _, _ = module.model_step(batch)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.05
    for name, param in module.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == (name in trainable and "lora_B" in name) or (name in trainable and changed), name
        if name not in trainable:
            assert not changed, name
    assert any(not torch.equal(before[n], p) for n, p in module.named_parameters() if "lora_B" in n)


def test_full_mode_trains_language_model_only(tiny_replica) -> None:  # noqa: ANN001
    module = VLMFineTuner(str(tiny_replica("qwen2_vl")), mode="full", metrics=["exact_match"])
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any("language_model" in n for n in trainable)
    assert not any(".visual." in n for n in trainable)


def test_batches_reach_the_device_without_host_syncs(tiny_replica) -> None:  # noqa: ANN001
    """Labelled positions are found on the CPU copy; LFM2-VL's spatial shapes stay on the CPU."""
    from vlm_lightning.training.loss import causal_lm_loss, fusable_head, labelled_positions, labelled_rows

    path = str(tiny_replica("lfm2_vl"))
    module = VLMFineTuner(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0), metrics=["exact_match"])
    assert fusable_head(module.model) is not None  # LoRA: the frozen lm_head runs inside the fused loss
    assert module._loss_head is module.model.get_output_embeddings()
    assert not any(name.startswith("_loss_head") for name in module.state_dict())  # not a submodule
    batch = module.on_before_batch_transfer(_batch(path), 0)
    assert torch.equal(batch["label_positions"], labelled_positions(batch["labels"]))
    assert torch.equal(batch["label_rows"], labelled_rows(batch["labels"], batch["label_positions"]))
    moved = module.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["inputs"]["input_ids"].device.type == "meta"
    assert moved["label_positions"].device.type == "meta"
    assert moved["label_rows"].device.type == "meta"
    for part in ("inputs", "generation_inputs"):
        assert moved[part]["spatial_shapes"].device.type == "cpu"
        assert moved[part]["pixel_values"].device.type == "meta"
        assert batch[part]["spatial_shapes"] is moved[part]["spatial_shapes"]  # nothing dropped on the host
    module.model.eval()
    with torch.no_grad():
        given = module.model_step(batch)
        found = causal_lm_loss(module.model, batch["inputs"], batch["labels"])
    assert all(torch.equal(a, b) for a, b in zip(given, found, strict=True))


def test_qwen_batches_keep_only_the_host_built_grids_and_boundaries_on_the_cpu(tiny_replica) -> None:  # noqa: ANN001
    """Qwen2-VL has no ``host_inputs``: with its host-built inputs only the grids and boundaries stay on the
    CPU (``HOST_KEPT``); with ``model.host_built_inputs: false`` everything moves."""
    from vlm_lightning.models.host_precompute import HOST_KEPT

    path = str(tiny_replica("qwen2_vl"))
    module = VLMFineTuner(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0), metrics=["exact_match"])
    moved = module.transfer_batch_to_device(
        module.on_before_batch_transfer(_batch(path), 0), torch.device("meta"), 0
    )
    devices = {k: v.device.type for k, v in moved["inputs"].items() if torch.is_tensor(v)}
    assert (
        {k for k, d in devices.items() if d == "cpu"}
        == {"image_grid_thw", "image_cu_seqlens"}
        <= set(HOST_KEPT)
    )
    assert all(v.device.type == "meta" for v in moved["generation_inputs"].values() if torch.is_tensor(v))
    module.hparams["host_built_inputs"] = False
    moved = module.transfer_batch_to_device(
        module.on_before_batch_transfer(_batch(path), 0), torch.device("meta"), 0
    )
    assert all(v.device.type == "meta" for v in moved["inputs"].values() if torch.is_tensor(v))
