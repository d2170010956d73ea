"""CUDA-only checks (run on the GPU machine: ``pytest -m gpu tests/gpu``): bf16 LoRA, 4-bit QLoRA, fit on GPU."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from fit_helpers import lora_module, loss_and_grads, uncached_compilation
from fixtures_data import chat_batch, write_receipt_dataset
from PIL import Image

from vlm_lightning.data.collator import ChatCollator
from vlm_lightning.data.records import Record
from vlm_lightning.models.acceleration import compile_layers, decoder_layers
from vlm_lightning.models.adapter_fusion import SharedInputAdapterFusion
from vlm_lightning.models.loading import family_of, load_processor
from vlm_lightning.models.peft_setup import LoraSettings
from vlm_lightning.training.module import VLMFineTuner
from vlm_lightning.training.sharding import is_sharded

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _step_with_syncs(module, batch: dict) -> tuple[float, dict[str, torch.Tensor], int]:  # noqa: ANN001
    """One fp32 ``model_step`` + backward on CUDA: loss, LoRA gradients, and the host syncs torch reported."""
    moved = module.transfer_batch_to_device(batch, torch.device("cuda"), 0)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            module.zero_grad(set_to_none=True)
            loss, _, _ = module.model_step(moved)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.item(), grads, sum("synchroniz" in str(w.message) for w in caught)


def _same_numbers_fewer_syncs(module, reference: dict, faster: dict) -> tuple[int, int]:  # noqa: ANN001
    """``faster`` gives ``reference``'s loss (rel 1e-6) and gradients (rel 1e-5) with fewer host syncs."""
    loss_r, grads_r, syncs_r = _step_with_syncs(module, reference)
    loss_f, grads_f, syncs_f = _step_with_syncs(module, faster)
    assert loss_f == pytest.approx(loss_r, rel=1e-6)
    assert grads_f.keys() == grads_r.keys() and grads_r
    for name, grad in grads_r.items():
        torch.testing.assert_close(grads_f[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert syncs_f < syncs_r, (syncs_r, syncs_f)
    return syncs_r, syncs_f


def _batch(path: str) -> dict:
    collator = ChatCollator(load_processor(path, image_max_tokens=16), family_of(path), max_length=300)
    recs = [
        Record(
            str(i),
            ["x"],
            [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A {i}"}],
            [f"A {i}"],
        )
        for i in range(4)
    ]
    return collator([(r, [Image.new("RGB", (64, 80), (i * 40, 255, 255))]) for i, r in enumerate(recs)])


def _to(batch: dict, device: str) -> dict:
    return {
        k: (
            {kk: vv.to(device) if torch.is_tensor(vv) else vv for kk, vv in v.items()}
            if isinstance(v, dict)
            else v.to(device)
            if torch.is_tensor(v)
            else v
        )
        for k, v in batch.items()
    }


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_training_steps_on_cuda(tiny_replica, mode: str) -> None:  # noqa: ANN001
    if mode == "qlora":
        pytest.importorskip("bitsandbytes")
    path = str(tiny_replica("qwen2_vl"))
    module = VLMFineTuner(
        path,
        mode=mode,
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        dtype="bfloat16",
        metrics=["exact_match"],
    ).cuda()
    if mode == "qlora":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.modules())
    batch = _to(_batch(path), "cuda")
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2, fused=True)
    losses = []
    for _ in range(10):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _, _ = module.model_step(batch)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    texts, _ = module.generate(batch, max_new_tokens=8)
    assert len(texts) == 4


def test_cli_fit_and_test_on_gpu(tiny_replica, tmp_path: Path) -> None:  # noqa: ANN001
    from vlm_lightning.cli.lightning_cli import build_cli

    data = write_receipt_dataset(tmp_path / "data")
    common = [
        "--model.name_or_path",
        str(tiny_replica("qwen2_vl")),
        "--model.metrics",
        "[json, exact_match]",
        "--model.generate_max_new_tokens",
        "16",
        "--data.train",
        str(data["train"]),
        "--data.val",
        str(data["val"]),
        "--data.test",
        str(data["test"]),
        "--data.image_max_tokens",
        "16",
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "1",
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
    ]
    cli = build_cli(["fit", *common, "--trainer.max_steps", "4"])
    best = Path(cli.trainer.log_dir) / "best.ckpt"
    assert best.is_file()
    # the fast path is the default on CUDA: compiled decoder + vision layers, batches padded to x64, grouped
    assert cli.model.compiled_layers and cli.model._compiled and cli.model._vision_compiled
    assert cli.datamodule.pad_to_multiple_of == 64 and cli.datamodule.group_by_length
    batch = cli.datamodule.collator([cli.datamodule.datasets["train"][0]])
    assert batch["inputs"]["input_ids"].shape[1] % 64 == 0
    test = build_cli(["test", *common, "--ckpt_path", str(best)])
    assert (Path(test.trainer.log_dir) / "predictions.jsonl").is_file()


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp_cpu_offload"])
def test_fsdp_one_process_fit_test_and_export_on_gpu(tiny_replica, tmp_path: Path, strategy: str) -> None:  # noqa: ANN001
    """The sharded path on CUDA with one process: fit (compiled layers, bf16), test, export of the adapter."""
    import subprocess
    import sys

    from vlm_lightning.cli.lightning_cli import build_cli

    data = write_receipt_dataset(tmp_path / "data")
    common = [
        "--model.name_or_path", str(tiny_replica("qwen2_vl")),
        "--model.metrics", "[json, exact_match]",
        "--model.generate_max_new_tokens", "16",
        "--data.train", str(data["train"]),
        "--data.val", str(data["val"]),
        "--data.test", str(data["test"]),
        "--data.image_max_tokens", "16",
        "--trainer.accelerator", "gpu",
        "--trainer.devices", "1",
        "--trainer.strategy", strategy,
        "--trainer.precision", "bf16-mixed",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    cli = build_cli(["fit", *common, "--trainer.max_steps", "4"])
    assert is_sharded(cli.model.model) and cli.model._compiled
    # decoder layers are resharded after use: their shards live in CPU memory with offload, else on the GPU
    layer = decoder_layers(cli.model.model, cli.model.facts)[0]
    where = {p.device.type for p in layer.parameters()}
    assert where == ({"cpu"} if strategy == "fsdp_cpu_offload" else {"cuda"}), where
    best = Path(cli.trainer.log_dir) / "best.ckpt"
    test = build_cli(["test", *common, "--ckpt_path", str(best)])
    assert "test/json_valid_rate" in test.trainer.callback_metrics
    out = tmp_path / "adapter"
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_lightning", "export", "--ckpt", str(best), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_config.json").is_file()


def test_no_host_sync_batches_give_the_same_loss_and_gradients(tiny_replica) -> None:  # noqa: ANN001
    """LFM2-VL with spatial shapes kept on the CPU and labelled positions found on the CPU: same numbers."""
    from vlm_lightning.training.loss import causal_lm_loss

    path = str(tiny_replica("lfm2_vl"))
    torch.manual_seed(0)
    module = VLMFineTuner(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0), metrics=["exact_match"]).cuda()
    module.model.float()
    results = []
    for fast in (False, True):
        batch = _batch(path)
        if fast:
            batch = module.transfer_batch_to_device(
                module.on_before_batch_transfer(batch, 0), torch.device("cuda"), 0
            )
            assert batch["inputs"]["spatial_shapes"].device.type == "cpu"
            keep = batch["label_positions"]
        else:
            batch, keep = _to(batch, "cuda"), None
            assert batch["inputs"]["spatial_shapes"].is_cuda
        loss, n_tokens, correct = causal_lm_loss(module.model, batch["inputs"], batch["labels"], keep=keep)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
        module.model.zero_grad(set_to_none=True)
        results.append((loss.detach(), n_tokens, correct, grads))
    (loss_a, n_a, c_a, g_a), (loss_b, n_b, c_b, g_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    assert int(n_a) == int(n_b) and int(c_a) == int(c_b) and g_a.keys() == g_b.keys() and g_a
    for name, grad in g_a.items():
        torch.testing.assert_close(g_b[name], grad, rtol=0, atol=0)


def test_deferred_guard_drops_a_nan_update_on_cuda(tmp_path: Path) -> None:
    """Fused AdamW on CUDA: the NaN step's update is dropped on the device; the error names that step."""
    import lightning as L

    from vlm_lightning.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError

    class Poison(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.before: dict[int, torch.Tensor] = {}

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            self.before[self.global_step] = self.layer.weight.detach().clone()
            loss = self.layer(batch[0]).pow(2).mean()
            return loss * float("nan") if self.global_step == 3 else loss

        def configure_optimizers(self):  # noqa: ANN201
            return torch.optim.AdamW(self.parameters(), lr=0.1, fused=True)

    data = torch.utils.data.TensorDataset(torch.randn(32, 4))
    model = Poison()
    trainer = L.Trainer(
        max_steps=8,
        accelerator="gpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[NonFiniteGuard()],
    )
    with pytest.raises(NonFiniteLossError, match="global step 3"):
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    # Lightning moves the module back to the CPU when fit ends with an error
    assert torch.equal(model.layer.weight.detach().cpu(), model.before[3].cpu()) and max(model.before) == 4


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("family", ["qwen2_vl", "lfm2_vl"])
def test_compiled_equals_eager_in_fp32_for_50_steps(
    tiny_replica, tmp_path: Path, family: str, packing: bool
) -> None:  # noqa: ANN001
    """The compiled layers change no result: in float32 every step's loss agrees with eager to 1e-4, so the
    bf16 difference between them is rounding alone. LoRA dropout 0: with dropout the compiled layers draw other
    masks (inductor's random stream, one mask per shared input; docs/benchmarks.md, session 19)."""
    import csv

    from vlm_lightning.cli.lightning_cli import build_cli

    data = write_receipt_dataset(tmp_path / "data", n_train=16)
    losses = {}
    for compiled in ("true", "false"):
        root = tmp_path / f"compiled_{compiled}"
        build_cli([
            "fit",
            "--model.name_or_path", str(tiny_replica(family)),
            "--model.metrics", "[exact_match]",
            "--model.dtype", "float32",
            "--model.lora.dropout", "0",
            "--model.compile_language_model", compiled,
            "--model.compile_vision_tower", compiled,
            "--data.train", str(data["train"]),
            "--data.image_max_tokens", "16",
            "--data.max_length", "400",
            "--data.batch_size", "2",
            "--data.packing", str(packing).lower(),
            "--trainer.accelerator", "gpu",
            "--trainer.devices", "1",
            "--trainer.precision", "32-true",
            "--trainer.max_steps", "50",
            "--trainer.limit_val_batches", "0",
            "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root),
        ])  # fmt: skip
        (metrics,) = root.glob("version_*/metrics.csv")
        with metrics.open() as fh:
            losses[compiled] = [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    assert len(losses["true"]) == len(losses["false"]) == 50
    worst = max(abs(a - b) for a, b in zip(losses["true"], losses["false"], strict=True))
    print(
        f"\n[compiled vs eager fp32] {family} packing={packing}: largest loss difference {worst:.2e} over 50 steps"
    )
    assert worst <= 1e-4, (losses["true"][:5], losses["false"][:5])
    assert losses["true"][-1] < losses["true"][0]  # it trained


@pytest.mark.parametrize("family", ["qwen2_vl", "lfm2_vl"])
def test_static_cache_evaluation_is_the_default_and_decodes_the_dynamic_cache_tokens_in_fp32(
    tiny_replica, tmp_path: Path, family: str, capsys: pytest.CaptureFixture
) -> None:  # noqa: ANN001
    """``test`` on CUDA decodes with the compiled static cache by default (validation inside ``fit`` too, with
    the regionally compiled training layers around it); in float32 its predictions, with either decoding-step
    compiler, equal HF ``generate``'s (dynamic cache, adapters unmerged) on the same checkpoint."""
    import json

    from vlm_lightning.cli.lightning_cli import build_cli

    data = write_receipt_dataset(tmp_path / "data", n_train=16)
    common = [
        "--model.name_or_path", str(tiny_replica(family)),
        "--model.metrics", "[exact_match]",
        "--model.dtype", "float32",
        "--model.generate_max_new_tokens", "24",
        "--data.train", str(data["train"]),
        "--data.val", str(data["val"]),
        "--data.test", str(data["test"]),
        "--data.image_max_tokens", "16",
        "--data.batch_size", "2",
        "--trainer.accelerator", "gpu",
        "--trainer.devices", "1",
        "--trainer.precision", "32-true",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    fit = build_cli([
        "fit", *common, "--trainer.max_steps", "12", "--trainer.val_check_interval", "6",
        "--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "1e-2", "--trainer.default_root_dir", str(tmp_path / "fit"),
    ])  # fmt: skip
    assert "generation: static cache" in capsys.readouterr().out  # validation generated with it
    layers = decoder_layers(fit.model.model, fit.model.facts)
    assert all("forward" in layer.__dict__ for layer in layers)  # training layers compiled again after
    predictions = {}
    for setting in ("auto", "cudagraphs", "inductor", "dynamic"):
        extra = {
            "auto": [],
            "cudagraphs": ["--model.generation_compiler", "cudagraphs"],
            "inductor": ["--model.generation_compiler", "inductor"],
            "dynamic": ["--model.generation_cache", "dynamic", "--model.merge_lora_for_generation", "false"],
        }[setting]
        run = build_cli([
            "test", *common, *extra, "--ckpt_path", str(Path(fit.trainer.log_dir) / "last.ckpt"),
            "--trainer.default_root_dir", str(tmp_path / setting),
        ])  # fmt: skip
        rows = (Path(run.trainer.log_dir) / "predictions.jsonl").read_text().splitlines()
        predictions[setting] = [json.loads(row)["prediction"] for row in rows]
    said = capsys.readouterr().out
    assert said.count("generation: static cache") == 3  # the static-cache runs only
    assert len(predictions["auto"]) >= 4 and any(predictions["auto"])
    for compiled in ("auto", "cudagraphs", "inductor"):
        assert predictions[compiled] == predictions["dynamic"], compiled


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_inductor_runs_the_adapter_fusion_pass_on_cuda(tiny_replica, dropout: float) -> None:  # noqa: ANN001
    """The pass that gives LoRA A projections of one input one GEMM runs inside inductor (not only in a
    dynamo backend, as the CPU tests check) and keeps the fp32 loss and gradients; with dropout the
    sibling adapters' dropouts are merged first, then fused, and every adapter still learns."""
    torch._dynamo.reset()  # the earlier tests' compiles of these layer classes used up the recompile limit
    path = str(tiny_replica("lfm2_vl"))
    eager = lora_module(path, dropout=dropout, dtype="float32").cuda()  # fp32: PEFT casts no adapter input
    compiled = copy.deepcopy(eager)
    graph_pass = SharedInputAdapterFusion()
    compile_layers(decoder_layers(compiled.model, compiled.facts), graph_pass=graph_pass)
    batch = _to(chat_batch(path, n=3), "cuda")
    loss_e, grads_e = loss_and_grads(eager, batch, autocast=False)
    with uncached_compilation():
        loss_c, grads_c = loss_and_grads(compiled, batch, autocast=False)
    assert graph_pass.groups_fused >= 2  # the conv layers' gate/up; the attention layers' q/k/v and gate/up
    assert grads_c.keys() == grads_e.keys()
    if dropout:  # other masks than eager's: the loss is near, every adapter has a gradient
        assert loss_c == pytest.approx(loss_e, rel=0.2)
        assert all(grads_c[name].abs().sum() > 0 for name in grads_c)
        return
    assert loss_c == pytest.approx(loss_e, rel=1e-5)
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_inputs_built_on_the_host_keep_the_numbers_with_fewer_syncs(tiny_replica, family: str) -> None:  # noqa: ANN001
    """Qwen-VL: the M-RoPE index and vision inputs built on the CPU batch (``models/host_precompute.py``),
    the grids and boundaries left there, give the fp32 loss and gradients of the library's own path on the
    GPU, with fewer host syncs in the step."""
    path = str(tiny_replica(family))
    module = lora_module(path, dtype="float32").cuda()
    raw = chat_batch(path, sizes=((64, 80), (96, 48), (40, 40)))
    collated = set(raw["inputs"])
    hooked = module.on_before_batch_transfer(raw, 0)
    plain = {**hooked, "inputs": {k: v for k, v in hooked["inputs"].items() if k in collated}}
    syncs_p, syncs_h = _same_numbers_fewer_syncs(module, plain, hooked)
    print(f"{family} host syncs per step: library path {syncs_p}, host-built inputs {syncs_h}")


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_compiled_vision_layers_take_the_boundaries_kept_on_the_cpu(tiny_replica, family: str) -> None:  # noqa: ANN001
    """Inductor-compiled decoder and vision layers on CUDA, with the host-built boundaries and grids left on
    the CPU: the fp32 losses of three batches of other image sizes equal the library path's (compiled too)."""
    from vlm_lightning.models.acceleration import compile_vision_layers

    path = str(tiny_replica(family))
    sizes_per_batch = (((64, 80), (96, 48), (40, 40)), ((80, 80), (48, 96)), ((40, 40), (96, 96), (64, 64)))
    runs = []
    for host_built in (False, True):
        torch._dynamo.reset()
        module = lora_module(path, dtype="float32").cuda()
        module.hparams["host_built_inputs"] = host_built
        compile_layers(decoder_layers(module.model, module.facts))
        compile_vision_layers(module.model, module.facts)
        losses = []
        for sizes in sizes_per_batch:
            batch = module.on_before_batch_transfer(chat_batch(path, sizes=sizes), 0)
            moved = module.transfer_batch_to_device(batch, torch.device("cuda"), 0)
            if host_built:
                assert moved["inputs"]["image_cu_seqlens"].device.type == "cpu"
                assert moved["inputs"]["image_grid_thw"].device.type == "cpu"
            loss, _, _ = module.model_step(moved)
            loss.backward()
            losses.append(loss.item())
        runs.append(losses)
    assert runs[1] == pytest.approx(runs[0], rel=1e-5)


def test_deferred_guard_reads_its_flag_from_pinned_memory_without_a_stream_sync() -> None:
    """The late read waits on the flag's own copy event: no tensor sync (``error`` sync mode would raise)."""
    from vlm_lightning.callbacks.nonfinite import _StepCheck

    for value in (False, True):
        check = _StepCheck(torch.tensor(value, device="cuda"), [], None, 0, 0, 0, [])
        check.copy_to_host()
        assert check.host_flag is not None and check.host_flag.is_pinned()
        torch.cuda._sleep(50_000_000)  # later work on the stream, which the read must not wait for
        torch.cuda.set_sync_debug_mode("error")
        try:
            assert check.is_set() is value
        finally:
            torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(RuntimeError, match="synchroniz"):
        torch.cuda.set_sync_debug_mode("error")
        try:
            bool(torch.tensor(True, device="cuda"))  # what the read was before
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("family", ["lfm2_vl", "qwen2_vl", "qwen3_vl"])
def test_host_decided_masks_keep_the_numbers_with_fewer_syncs(tiny_replica, family: str) -> None:  # noqa: ANN001
    """Text masks built from the CPU batch's padding answer (``models/host_masks.py``; LFM2-VL's tower mask
    too): the fp32 loss and gradients of the library's own masks on the GPU, with fewer host syncs."""
    path = str(tiny_replica(family))
    module = lora_module(path, dtype="float32").cuda()
    hooked = module.on_before_batch_transfer(chat_batch(path, sizes=((64, 80), (96, 48), (40, 40))), 0)
    assert hooked["padded_rows"] is True
    library = {k: v for k, v in hooked.items() if k != "padded_rows"}
    syncs_l, syncs_h = _same_numbers_fewer_syncs(module, library, hooked)
    print(f"{family} host syncs per step: library masks {syncs_l}, host-decided masks {syncs_h}")


@pytest.mark.parametrize("family", ["lfm2_vl", "qwen2_vl"])
def test_packed_rows_with_host_decided_block_masks_keep_the_numbers_with_fewer_syncs(
    tiny_replica, family: str
) -> None:  # noqa: ANN001, E501
    """Packed rows: the sample index of each token found on the CPU gives the block masks of the library on
    the GPU (fp32 loss and gradients), without the device-side check for rows that pack two samples."""
    from vlm_lightning.models.loading import make_collator

    path = str(tiny_replica(family))
    module = lora_module(path, dtype="float32").cuda()
    collator = make_collator(load_processor(path, image_max_tokens=16), family_of(path), max_length=400)
    items = [
        (
            Record(
                f"s{i}",
                ["x"],
                [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": a}],
                [a],
            ),
            [Image.new("RGB", (64 + 16 * i, 80), (40 * i, 200, 90))],
        )
        for i, a in enumerate(['{"total": 12.5}', "Corner Cafe", "42 items, paid in cash"])
    ]
    hooked = module.on_before_batch_transfer(collator.pack(items, budget=None), 0)
    assert hooked["packed_sequence_ids"] is not None
    library = {k: v for k, v in hooked.items() if k != "packed_sequence_ids"}
    syncs_l, syncs_h = _same_numbers_fewer_syncs(module, library, hooked)
    print(f"{family} packed host syncs per step: library masks {syncs_l}, host-decided masks {syncs_h}")


def test_memory_peak_report_replays_to_torchs_own_peak(tiny_replica, tmp_path: Path) -> None:  # noqa: ANN001
    """``MemoryPeakReport`` on a real ``fit``: the replayed peak equals ``torch.cuda.max_memory_allocated`` over
    the recorded steps, and the live blocks are attributed to source lines."""
    from vlm_lightning.cli.lightning_cli import build_cli

    data = write_receipt_dataset(tmp_path / "data")
    cli = build_cli([
        "fit",
        "--model.name_or_path", str(tiny_replica("qwen2_vl")),
        "--model.metrics", "[exact_match]",
        "--data.train", str(data["train"]),
        "--data.image_max_tokens", "16",
        "--trainer.accelerator", "gpu",
        "--trainer.devices", "1",
        "--trainer.max_steps", "5",
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=vlm_lightning.callbacks.memory_peak.MemoryPeakReport",
        "--trainer.callbacks.start_step=2",
        "--trainer.callbacks.steps=2",
    ])  # fmt: skip
    lines = (Path(cli.trainer.log_dir) / "memory_peak.txt").read_text().splitlines()
    measured = float(lines[0].split("max_memory_allocated over them: ")[1].split()[0])
    replayed = float(lines[1].split()[2])
    assert replayed == pytest.approx(measured, abs=2e-3) and replayed > 0
    sites = lines[lines.index("    MiB  blocks  allocated at (innermost frame first)") + 1 :]
    assert sites and any("@" in s for s in sites)
