"""FSDP2 (``--trainer.strategy fsdp``) on CPU processes (gloo), against DDP and one process.

Two processes shard the tiny Qwen2-VL replica layer by layer. Training losses and trained weights equal
DDP's (the same data split and gradient average; only the reduction order differs: float32 tolerance
1e-5 relative), clipped by the same gradient norm; test metrics and predictions from the FSDP checkpoint equal one process's exactly, also when
run as two "nodes" on localhost (one process each, ``NODE_RANK`` set); every output is written once. A sharded
checkpoint (one shard per process) resumes exactly and exports the same adapter folder.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_helpers import free_port
from fixtures_data import write_receipt_dataset

pytestmark = pytest.mark.slow

LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
WEIGHT_ATOL = 1e-5
CLIP = 0.05  # gradient_clip_val: below the replica's gradient norms


def _args(model: Path, data: dict[str, Path], root: Path, *extra: str) -> list[str]:
    return [
        "--model.name_or_path", str(model),
        "--model.metrics", "[json, exact_match]",
        "--model.generate_max_new_tokens", "16",
        "--model.optimizer.class_path", "torch.optim.AdamW",
        "--model.optimizer.init_args.lr", "0.003",
        "--model.scheduler", "constant",  # the same learning rates whatever max_steps (resume comparisons)
        "--data.train", str(data["train"]),
        "--data.val", str(data["val"]),
        "--data.test", str(data["test"]),
        "--data.batch_size", "2",
        "--data.eval_batch_size", "2",
        "--data.max_length", "400",
        "--data.image_max_tokens", "16",
        "--trainer.accelerator", "cpu",
        "--trainer.log_every_n_steps", "1",
        "--trainer.gradient_clip_val", str(CLIP),  # clipped by norm: the sharded norm and scaling too
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_lightning", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env or _env(),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _only_run(root: Path) -> Path:
    runs = sorted(root.glob("version_*"))
    assert len(runs) == 1, runs  # one run folder: no rank wrote its own
    return runs[0]


def _losses(run: Path, key: str = "train/loss") -> dict[int, float]:
    with (run / "metrics.csv").open() as fh:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(fh) if r.get(key)}


def _trained(ckpt: Path) -> dict[str, torch.Tensor]:
    from vlm_lightning.checkpoints.io import validate_checkpoint

    return dict(validate_checkpoint(ckpt)["state_dict"])


def _assert_same_losses(a: dict[int, float], b: dict[int, float]) -> None:
    assert a and sorted(a) == sorted(b), (a, b)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=LOSS_RTOL, abs=LOSS_ATOL), (step, a, b)


def _predictions(run: Path) -> tuple[list[tuple[str, str]], dict[str, float]]:
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    return [(r["id"], r["prediction"]) for r in rows], {
        k: v for k, v in metrics.items() if k.startswith("test/")
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_receipt_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def lora_runs(tiny_replica, data, tmp_path_factory):  # noqa: ANN001, ANN201
    """DDP and FSDP fits of 4 LoRA steps (2 processes, 2 samples each), validation generating each epoch."""
    root = tmp_path_factory.mktemp("lora")
    model = tiny_replica("qwen2_vl")
    runs = {}
    for strategy in ("ddp", "fsdp"):
        proc = _cli(
            "fit",
            *_args(model, data, root / strategy, "--trainer.devices", "2", "--trainer.strategy", strategy),
            "--trainer.max_steps", "4",
        )  # fmt: skip
        runs[strategy] = _only_run(root / strategy)
        if strategy == "fsdp":
            assert "FSDP2: 5 shard units over 2 processes" in proc.stdout
    return model, runs, root


def test_fsdp_lora_fit_matches_ddp(lora_runs) -> None:  # noqa: ANN001
    _, runs, _ = lora_runs
    _assert_same_losses(_losses(runs["ddp"]), _losses(runs["fsdp"]))
    assert len(_losses(runs["fsdp"])) == 4
    norms = _losses(runs["fsdp"], "train/grad_norm")
    _assert_same_losses(_losses(runs["ddp"], "train/grad_norm"), norms)
    assert max(norms.values()) > CLIP  # clipping scaled the gradients at least once
    ddp, fsdp = _trained(runs["ddp"] / "last.ckpt"), _trained(runs["fsdp"] / "last.ckpt")
    assert ddp and set(ddp) == set(fsdp) and all("lora_" in k for k in fsdp)  # adapter-sized, as one process
    for key in ddp:
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=0, atol=WEIGHT_ATOL)
    logged = (runs["fsdp"] / "metrics.csv").read_text()
    assert "val/json_valid_rate" in logged  # validation generated under FSDP


def test_fsdp_test_equals_one_process_and_two_nodes(lora_runs, data, tmp_path: Path) -> None:  # noqa: ANN001
    model, runs, _ = lora_runs
    ckpt = str(runs["fsdp"] / "last.ckpt")
    one = tmp_path / "one"
    _cli("test", *_args(model, data, one, "--trainer.devices", "1"), "--ckpt_path", ckpt)
    two = tmp_path / "two"
    _cli(
        "test",
        *_args(model, data, two, "--trainer.devices", "2", "--trainer.strategy", "fsdp"),
        "--ckpt_path",
        ckpt,
    )
    # two "nodes" of one process each on localhost, as torchrun / SLURM would start them on two machines
    node_roots = []
    for strategy in ("fsdp", "ddp"):
        nodes = tmp_path / f"nodes-{strategy}"
        node_roots.append(nodes)
        port = str(free_port())
        args = _args(
            model,
            data,
            nodes,
            "--trainer.devices",
            "1",
            "--trainer.num_nodes",
            "2",
            "--trainer.strategy",
            strategy,
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "vlm_lightning", "test", *args, "--ckpt_path", ckpt],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(rank), WORLD_SIZE="2"),
            )
            for rank in (0, 1)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, err[-4000:]
    expected_ids = [f"test-{i}" for i in range(5)]
    reference = _predictions(_only_run(one))
    assert [i for i, _ in reference[0]] == expected_ids
    for root in (two, *node_roots):
        got = _predictions(_only_run(root))
        assert got[0] == reference[0], root  # every sample once, in input order, the same text
        assert got[1] == pytest.approx(reference[1]), root


def test_fsdp_full_mode_matches_ddp(tiny_replica, data, tmp_path: Path) -> None:  # noqa: ANN001
    model = tiny_replica("qwen2_vl")
    losses = {}
    for strategy in ("ddp", "fsdp"):
        _cli(
            "fit",
            *_args(model, data, tmp_path / strategy, "--trainer.devices", "2", "--trainer.strategy", strategy),
            "--model.mode", "full", "--model.optimizer.init_args.lr", "0.0003", "--model.val_generate", "false",
            "--trainer.max_steps", "3",
        )  # fmt: skip
        losses[strategy] = _losses(_only_run(tmp_path / strategy))
    _assert_same_losses(losses["ddp"], losses["fsdp"])
    assert len(losses["fsdp"]) == 3 and losses["fsdp"][2] != losses["fsdp"][0]  # it trained


def test_sharded_checkpoint_resumes_exactly_and_exports(lora_runs, data, tmp_path: Path) -> None:  # noqa: ANN001
    from peft import PeftModel

    from vlm_lightning.models.loading import load_model

    model, runs, _ = lora_runs
    sharded = [
        "--trainer.devices", "2",
        "--trainer.strategy", "vlm_lightning.training.sharding.FSDP2Strategy",
        "--trainer.strategy.save_distributed_checkpoint", "true",
    ]  # fmt: skip
    _cli("fit", *_args(model, data, tmp_path, *sharded), "--trainer.max_steps", "2")
    run = _only_run(tmp_path)
    last = run / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file()  # one shard file per process
    assert len(list(last.glob("*.distcp"))) == 2
    _cli("fit", *_args(model, data, tmp_path, *sharded), "--trainer.max_steps", "4", "--ckpt_path", str(last))
    assert _only_run(tmp_path) == run  # the resumed run continues its folder
    # steps 3-4 as in one straight run (compared in order: after a resume from an epoch-end checkpoint,
    # Lightning 2.6 logs the next steps one step number later, with any strategy)
    straight_losses, resumed_losses = _losses(runs["fsdp"]), _losses(run)
    assert len(resumed_losses) == len(straight_losses) == 4
    for a, b in zip(
        [straight_losses[k] for k in sorted(straight_losses)],
        [resumed_losses[k] for k in sorted(resumed_losses)],
    ):
        assert b == pytest.approx(a, rel=LOSS_RTOL, abs=LOSS_ATOL), (straight_losses, resumed_losses)
    straight = _trained(runs["fsdp"] / "last.ckpt")
    resumed = _trained(run / "last.ckpt")  # the shards put together in this process
    assert set(resumed) == set(straight)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=WEIGHT_ATOL)
    out = tmp_path / "adapter"
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_lightning", "export", "--ckpt", str(run / "last.ckpt"), "--out", str(out),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=600, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    peft = PeftModel.from_pretrained(load_model(str(model), dtype="float32"), out)
    exported = {k: v for k, v in peft.state_dict().items() if "lora_" in k}
    assert len(exported) == len(resumed)
    for key, value in resumed.items():
        name = key.removeprefix("model.").replace(".default.", ".")
        match = [v for k, v in exported.items() if k.replace(".default.", ".") == name]
        assert match, key
        torch.testing.assert_close(match[0], value.float(), rtol=0, atol=0)
