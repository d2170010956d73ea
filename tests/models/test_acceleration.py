"""Speed levers keep results: compiled layers, clipping with fused AdamW (no-cast LoRA: tests/patches)."""

from __future__ import annotations

import copy
import subprocess
import sys

import lightning as L
import pytest
import torch
from fit_helpers import lora_module, loss_and_grads, repeated_batch_loader
from fixtures_data import chat_batch

from vlm_lightning.models.acceleration import (
    compile_decoder_layers,
    compile_notice,
    compile_vision_layers,
    decoder_layers,
)


def test_decoder_and_vision_layers_are_found_under_peft(tiny_replica) -> None:  # noqa: ANN001
    module = lora_module(str(tiny_replica("lfm2_vl")))
    layers = decoder_layers(module.model, module.facts)
    base = module.model.get_base_model()
    assert layers is base.model.language_model.layers


def test_compiled_layers_give_the_eagerloss_and_grads(tiny_replica) -> None:  # noqa: ANN001
    path = str(tiny_replica("lfm2_vl"))
    eager = lora_module(path)
    compiled = copy.deepcopy(eager)
    batch = chat_batch(path, n=3)
    n_lm = compile_decoder_layers(compiled.model, compiled.facts, backend="aot_eager")
    n_vis = compile_vision_layers(compiled.model, compiled.facts, backend="aot_eager")
    assert n_lm == len(decoder_layers(eager.model, eager.facts)) and n_vis >= 1
    loss_e, grads_e = loss_and_grads(eager, batch, autocast=False)
    loss_c, grads_c = loss_and_grads(compiled, batch, autocast=False)
    assert loss_c == pytest.approx(loss_e, rel=1e-5)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6)


def test_gradient_clipping_works_with_fused_adamw_under_bf16_mixed(tiny_replica) -> None:  # noqa: ANN001
    """Lightning's mixed-precision plugin refuses to clip for fused optimizers; the module clips itself."""
    path = str(tiny_replica("qwen2_vl"))
    module = lora_module(path)
    module.optimizer_factory = lambda params, **kw: torch.optim.AdamW(params, lr=1e-3, fused=True)
    norms: list[float] = []

    class RecordNorm(L.Callback):
        def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            norms.append(float(torch.nn.utils.get_total_norm(grads)))

    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        gradient_clip_val=1e-3,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordNorm()],
    )
    loader = repeated_batch_loader(chat_batch(path), 2)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.optimizers[0].defaults["fused"] is True
    assert float(trainer.callback_metrics["train/grad_norm"]) > 1e-3  # logged once, before clipping
    assert len(norms) == 2 and all(n <= 1e-3 * (1 + 1e-3) for n in norms), norms


def test_enhancement_imports_without_the_augmentation_stack() -> None:
    """Every split is enhanced; machines without albumentations / OpenCV can still load data."""
    code = (
        "import sys; sys.modules['albumentations'] = None; sys.modules['cv2'] = None\n"
        "from PIL import Image\n"
        "from vlm_lightning.data.datamodule import DocumentDataModule\n"
        "from vlm_lightning.data.enhance import enhance\n"
        "print(enhance(Image.new('RGB', (300, 100)), max_side=150).size)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(150, 50)"


def test_uncompiled_layers_run_the_class_forward_and_put_the_compiled_one_back() -> None:
    from vlm_lightning.models.acceleration import compile_layers, uncompiled_layers

    compiled_calls = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        compiled_calls.append(len(example_inputs))
        return graph.forward

    layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
    model = torch.nn.Sequential(*layers)
    assert compile_layers(layers, backend=counting_backend) == 3
    wrappers = [layer.__dict__["forward"] for layer in layers]
    x = torch.randn(2, 4)
    with uncompiled_layers(model) as switched:
        assert switched == 3
        assert all("forward" not in layer.__dict__ for layer in layers)
        expected = model(x)
    assert compiled_calls == []  # nothing compiled inside the block
    torch.testing.assert_close(model(x), expected)
    assert compiled_calls  # the compiled wrappers are back and run
    with pytest.raises(RuntimeError, match="boom"), uncompiled_layers(model):
        raise RuntimeError("boom")
    assert [layer.__dict__["forward"] for layer in layers] == wrappers  # also after an exception
    with uncompiled_layers(torch.nn.Linear(2, 2)) as none:  # a model without compiled layers
        assert none == 0


def test_the_compile_line_names_what_compiles_and_the_recomputation() -> None:
    plain = compile_notice(16, vision=True, recompute=False)
    assert plain.startswith(
        "[vlm_lightning] torch.compile of 16 decoder layers and the vision tower's layers: "
    )
    assert "recomputed" not in plain and "--model.compile_language_model false turns it off" in plain
    recompute = compile_notice(16, vision=False, recompute=True)
    assert "activations recomputed by the compiler (each dense MLP over 4 sequence slices)" in recompute
    assert "vision tower" not in recompute
