"""End-to-end CLI runs on the tiny Qwen2-VL replica: fit -> test, resume, checkpoints, offline."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fit_helpers import as_flags, tiny_cpu_settings
from fixtures_data import write_receipt_dataset

from vlm_lightning.cli.lightning_cli import build_cli
from vlm_lightning.errors import SettingError

pytestmark = pytest.mark.slow


def base_args(model: Path, data: dict[str, Path], root: Path, *extra: str) -> list[str]:
    settings = tiny_cpu_settings(
        model, root, data, model__metrics="[json, exact_match]", model__generate_max_new_tokens=24
    )
    return [*as_flags(settings), *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_receipt_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def fitted(tiny_replica, data, tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("run")
    extra = [
        "--trainer.max_steps",
        "4",
        # user-given callbacks: a Throughput with its own warm-up replaces the CLI's default one
        "--trainer.callbacks+=vlm_lightning.callbacks.throughput.Throughput",
        "--trainer.callbacks.warmup_steps=1",
        "--trainer.callbacks+=vlm_lightning.callbacks.step_profile.StepProfiler",
        "--trainer.callbacks.start_step=2",
        "--trainer.callbacks.steps=1",
        "--trainer.callbacks.trace=false",
        "--trainer.profiler=vlm_lightning.training.profiling.SteadyStateProfiler",
        "--trainer.profiler.skip=1",
        f"--trainer.profiler.dirpath={root / 'profile'}",
    ]
    cli = build_cli(["fit", *base_args(tiny_replica("qwen2_vl"), data, root, *extra)])
    return cli, root


def test_user_throughput_and_step_profiler_callbacks(fitted) -> None:  # noqa: ANN001
    from vlm_lightning.callbacks.throughput import Throughput

    cli, _ = fitted
    run = Path(cli.trainer.log_dir)
    assert sum(isinstance(c, Throughput) for c in cli.trainer.callbacks) == 1
    throughput = json.loads((run / "throughput.json").read_text())
    assert throughput["timed_optimizer_steps"] == 3  # 4 steps, 1 of warm-up (the default is 5)
    report = (run / "step_profile.txt").read_text()
    assert report.startswith("steps 2..3 (1 optimizer steps)") and "wall per step" in report
    assert "by device time:" in report and "aten::" in report


def test_steady_state_profiler_reports_steps_after_warmup(fitted) -> None:  # noqa: ANN001
    _, root = fitted
    (json_path,) = (root / "profile").glob("fit-steady*.json")  # fit-steady-<rank>.json under DDP
    report = json.loads(json_path.read_text())
    batches = report["actions"]["run_training_batch"]
    assert report["skip"] == 1 and batches["calls"] == 3  # 4 optimizer steps, the first left out
    assert 0 < batches["median_ms"] <= batches["p90_ms"] <= batches["max_ms"]
    assert batches["total_s"] >= 3 * batches["median_ms"] / 1000 * 0.5
    # from one batch start to the next: the batch plus what runs between batches (validation here)
    period = report["actions"]["step_period"]
    assert period["calls"] == 2 and period["total_s"] > batches["total_s"] * 2 / 3
    text = json_path.with_suffix(".txt").read_text()
    assert "steady-state profile (first 1 calls" in text and "run_training_batch" in text


def test_fit_writes_best_and_last_with_trainable_weights_only(fitted) -> None:  # noqa: ANN001
    cli, root = fitted
    run = Path(cli.trainer.log_dir)
    assert (run / "best.ckpt").is_file() and (run / "last.ckpt").is_file()
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all("lora_" in k for k in keys)
    adapter_bytes = sum(v.numel() * v.element_size() for v in ckpt["state_dict"].values())
    base_params = sum(p.numel() for p in cli.model.parameters())
    assert adapter_bytes < base_params * 4  # not the base model
    assert ckpt["global_step"] == 4
    assert "optimizer_states" in ckpt and "lr_schedulers" in ckpt


def test_test_from_best_checkpoint_writes_reports(fitted, tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    cli, _ = fitted
    best = Path(cli.trainer.log_dir) / "best.ckpt"
    test_cli = build_cli(
        ["test", *base_args(tiny_replica("qwen2_vl"), data, tmp_path), "--ckpt_path", str(best)]
    )
    run = Path(test_cli.trainer.log_dir)
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"test-{i}" for i in range(5)]
    assert all({"id", "prompt", "prediction", "target", "scores"} <= set(r) for r in rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == 5
    assert 0.0 <= metrics["test/json_valid_rate"] <= 1.0
    # the adapter was restored: LoRA B weights are not all zero any more
    lora_b = [p for n, p in test_cli.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)


def test_evaluation_ckpt_path_words_name_the_run_file_or_say_the_base_model(
    fitted, tiny_replica, data, tmp_path, capsys
) -> None:  # noqa: ANN001
    """``test --ckpt_path best`` scores the newest run's best.ckpt under the root (Lightning alone would find
    nothing in the new run's folder and score the base model); none found: stopped; no --ckpt_path: said.
    metrics.json and report.md name the checkpoint scored."""
    cli, root = fitted
    best = Path(cli.trainer.log_dir) / "best.ckpt"
    test_cli = build_cli(["test", *base_args(tiny_replica("qwen2_vl"), data, root), "--ckpt_path", "best"])
    assert f"--ckpt_path best: test {best}" in capsys.readouterr().err
    run = Path(test_cli.trainer.log_dir)
    assert json.loads((run / "metrics.json").read_text())["settings"]["checkpoint"] == str(best)
    assert f"checkpoint: {best}" in (run / "report.md").read_text()
    empty = tmp_path / "empty"
    with pytest.raises(
        SettingError, match=rf"--ckpt_path last: no last.ckpt in {empty}/version_\*: give the"
    ):
        build_cli(["test", *base_args(tiny_replica("qwen2_vl"), data, empty), "--ckpt_path", "last"])
    base = build_cli(["test", *base_args(tiny_replica("qwen2_vl"), data, tmp_path / "base")])
    assert "test without --ckpt_path: the base model" in capsys.readouterr().err
    report = (Path(base.trainer.log_dir) / "report.md").read_text()
    assert "checkpoint: none (the base model as loaded)" in report


def test_evaluation_settings_follow_the_command_line_not_the_checkpoint(
    fitted, tiny_replica, data, tmp_path, monkeypatch, capsys
) -> None:  # noqa: ANN001
    cli, _ = fitted
    best = Path(cli.trainer.log_dir) / "best.ckpt"
    monkeypatch.chdir(tmp_path)  # another working directory than the fit's
    overrides = [
        "--model.generate_max_new_tokens",
        "3",
        "--model.metrics",
        "[exact_match]",
        "--model.merge_lora_for_generation",
        "false",
        "--model.usd_per_gpu_hour",
        "2.5",
    ]
    args = base_args(tiny_replica("qwen2_vl"), data, tmp_path, *overrides, "--ckpt_path", str(best))
    test_cli = build_cli(["test", *args])
    warning = capsys.readouterr().err
    assert "test runs with other settings than" in warning  # said, not silently evaluated otherwise
    assert "model.generate_max_new_tokens 3 (trained: 24)" in warning and "data.prompt" not in warning
    hparams = test_cli.model.hparams
    assert hparams.generate_max_new_tokens == 3 and hparams.merge_lora_for_generation is False
    metrics = json.loads((Path(test_cli.trainer.log_dir) / "metrics.json").read_text())
    assert metrics["settings"]["generate_max_new_tokens"] == 3
    assert metrics["settings"]["metrics"] == ["exact_match"]
    assert "test/exact_match" in metrics and "test/json_valid_rate" not in metrics  # the given metrics
    assert (
        metrics["latency"].get("usd_per_1000_images") is not None
        and metrics["latency"]["usd_per_gpu_hour"] == 2.5
    )
    rows = [json.loads(line) for line in (Path(test_cli.trainer.log_dir) / "predictions.jsonl").open()]
    tokenizer = test_cli.model.tokenizer
    assert all(len(tokenizer(r["prediction"], add_special_tokens=False).input_ids) <= 3 for r in rows)


def test_a_missing_checkpoint_stops_before_the_model_loads(tiny_replica, data, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from vlm_lightning.checkpoints.io import CheckpointError

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built before the checkpoint was checked")

    monkeypatch.setattr("vlm_lightning.training.module.build_model", no_model)
    args = base_args(tiny_replica("qwen2_vl"), data, tmp_path, "--ckpt_path", str(tmp_path / "nope.ckpt"))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        build_cli(["test", *args])


def test_checkpoint_structure_contradicted_on_the_command_line_is_an_error(
    fitted, tiny_replica, data, tmp_path
) -> None:  # noqa: ANN001
    from vlm_lightning.checkpoints.settings import CheckpointSettingsError

    cli, _ = fitted
    best = str(Path(cli.trainer.log_dir) / "best.ckpt")
    args = base_args(tiny_replica("qwen2_vl"), data, tmp_path, "--ckpt_path", best)
    with pytest.raises(CheckpointSettingsError, match=r"model\.lora\.r: 3 \(trained with 16\)"):
        build_cli(["test", *args, "--model.lora.r", "3"])
    with pytest.raises(CheckpointSettingsError, match="holds qwen2_vl weights.*is a lfm2_vl model"):
        build_cli(["test", *base_args(tiny_replica("lfm2_vl"), data, tmp_path, "--ckpt_path", best)])


def test_a_relative_base_path_is_stored_absolute_and_the_given_base_wins(
    tiny_replica, data, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    model = tiny_replica("qwen2_vl")
    monkeypatch.chdir(model.parent)
    args = base_args(Path(model.name), data, tmp_path / "fit", "--trainer.max_steps", "1")
    fit = build_cli(["fit", *args, "--trainer.limit_val_batches", "0"])
    last = Path(fit.trainer.log_dir) / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["hyper_parameters"]["name_or_path"] == str(model.resolve())
    assert ckpt["vlm_lightning"]["name_or_path"] == str(model.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    copy = tmp_path / "moved-base"  # the base model moved: the path given now wins over the stored one
    import shutil

    shutil.copytree(model, copy)
    test_cli = build_cli(["test", *base_args(copy, data, tmp_path / "test"), "--ckpt_path", str(last)])
    assert test_cli.model.hparams.name_or_path == str(copy)


def test_resume_continues_step_optimizer_and_schedule(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    model = tiny_replica("qwen2_vl")
    extra = [
        "--model.warmup_steps",
        "2",
        "--trainer.limit_val_batches",
        "0",
        "--model.lora.dropout",
        "0.1",
        "--model.scheduler",
        "linear",
    ]
    straight = build_cli(["fit", *base_args(model, data, tmp_path / "a", "--trainer.max_steps", "6", *extra)])
    # the interrupted run has the same schedule horizon (max_steps 6) but stops after epoch 2 (step 4)
    first = build_cli(
        [
            "fit",
            *base_args(
                model, data, tmp_path / "b", "--trainer.max_steps", "6", "--trainer.max_epochs", "2", *extra
            ),
        ]
    )
    assert first.trainer.global_step == 4
    last = Path(first.trainer.log_dir) / "last.ckpt"
    resumed = build_cli(
        [
            "fit",
            *base_args(model, data, tmp_path / "b", "--trainer.max_steps", "6", *extra),
            "--ckpt_path",
            str(last),
        ]
    )
    assert resumed.trainer.global_step == 6
    lr_a = straight.trainer.optimizers[0].param_groups[0]["lr"]
    lr_b = resumed.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr_a == pytest.approx(lr_b)
    state_a = straight.trainer.optimizers[0].state_dict()["state"]
    state_b = resumed.trainer.optimizers[0].state_dict()["state"]
    assert float(state_b[0]["step"]) == float(state_a[0]["step"]) == 6  # Adam moments continued, not reset
    assert state_b[0]["exp_avg_sq"].abs().sum() > 0


def test_resuming_an_epoch_that_max_steps_cut_trains_the_rest_of_it(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    """max_steps 1 of a 2-step epoch, then max_steps 2 with max_epochs 1: the resume trains step 2 (it used to
    see the epoch as done, train nothing and exit 0) and ends where one uninterrupted run ends."""
    model = tiny_replica("qwen2_vl")
    extra = ["--trainer.limit_val_batches", "0", "--model.lora.dropout", "0.0", "--trainer.max_epochs", "1"]
    extra += ["--model.scheduler", "constant"]  # the same learning rate whatever max_steps (the horizon) is
    straight = build_cli(["fit", *base_args(model, data, tmp_path / "a", "--trainer.max_steps", "2", *extra)])
    assert straight.trainer.global_step == 2  # the epoch has 2 steps
    first = build_cli(["fit", *base_args(model, data, tmp_path / "b", "--trainer.max_steps", "1", *extra)])
    assert first.trainer.global_step == 1
    last = Path(first.trainer.log_dir) / "last.ckpt"
    resumed = build_cli(
        [
            "fit",
            *base_args(model, data, tmp_path / "b", "--trainer.max_steps", "2", *extra),
            "--ckpt_path",
            str(last),
        ]
    )
    assert resumed.trainer.global_step == 2 and resumed.trainer.current_epoch == 1
    a, b = straight.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_mid_epoch_resume_with_another_batch_size_stops_before_the_model_loads(
    tiny_replica, data, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    """Refused before the model loads and before the run folder's config.yaml is rewritten (it used to be
    rewritten with the refused settings, which the printed `test --config` command then used)."""
    from vlm_lightning.errors import SettingError

    model = tiny_replica("qwen2_vl")
    extra = ["--trainer.limit_val_batches", "0", "--trainer.max_epochs", "1"]
    first = build_cli(["fit", *base_args(model, data, tmp_path, "--trainer.max_steps", "1", *extra)])
    run = Path(first.trainer.log_dir)
    saved_config = (run / "config.yaml").read_text()

    def no_model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded before the layout was checked")

    monkeypatch.setattr("vlm_lightning.models.build.load_model", no_model)
    args = [*base_args(model, data, tmp_path, "--trainer.max_steps", "2", *extra), "--data.batch_size", "2"]
    with pytest.raises(SettingError, match=r"stopped 1 batches into an epoch .*data\.batch_size 4 -> 2"):
        build_cli(["fit", *args, "--ckpt_path", str(run / "last.ckpt")])
    assert (run / "config.yaml").read_text() == saved_config


def test_a_fit_without_validation_or_test_split_prints_a_test_command_that_works(
    tiny_replica, data, tmp_path, capsys
) -> None:  # noqa: ANN001
    args = base_args(tiny_replica("qwen2_vl"), data, tmp_path, "--trainer.max_steps", "1")
    build_cli(["fit", *args, "--trainer.limit_val_batches", "0", "--data.test", "null"])
    out = capsys.readouterr().out
    assert "[vlm_lightning] last checkpoint: " in out and "best checkpoint" not in out  # none was chosen
    command = out.split("evaluate it with:")[1].strip().splitlines()[0]
    assert command.endswith("--data.test YOUR_TEST.jsonl")  # the run has no test split to reuse


def test_offline_run_makes_no_network_call(tiny_replica, data, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError(f"network call attempted: {args}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    cli = build_cli(["fit", *base_args(tiny_replica("qwen2_vl"), data, tmp_path, "--trainer.max_steps", "1")])
    assert cli.trainer.global_step == 1


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlm_lightning", *args], capture_output=True, text=True, timeout=600
    )


def test_ddp_on_cpu_test_metrics_equal_single_process(fitted, tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    cli, _ = fitted
    best = str(Path(cli.trainer.log_dir) / "best.ckpt")
    model = tiny_replica("qwen2_vl")
    results = {}
    for devices in (1, 2):
        args = base_args(model, data, tmp_path / f"d{devices}")
        args = [
            a if a != "1" or args[i - 1] != "--trainer.devices" else str(devices) for i, a in enumerate(args)
        ]
        args += ["--data.eval_batch_size", "2", "--ckpt_path", best]
        if devices == 2:
            args += ["--trainer.strategy", "ddp"]
        proc = _run_cli("test", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = next((tmp_path / f"d{devices}").glob("version_*"))
        rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == [
            f"test-{i}" for i in range(5)
        ]  # input order, no sampler duplicates
        results[devices] = (
            json.loads((run / "metrics.json").read_text()),
            {r["id"]: r["prediction"] for r in rows},
        )
    assert results[1][1] == results[2][1]
    scalars = {k: v for k, v in results[1][0].items() if k.startswith("test/")}
    assert scalars
    for key, value in scalars.items():
        assert results[2][0][key] == pytest.approx(value), key
    assert results[1][0]["per_field"] == results[2][0]["per_field"]


def test_ddp_on_cpu_fit_runs(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    args = base_args(
        tiny_replica("qwen2_vl"), data, tmp_path, "--trainer.max_steps", "2"
    )  # 2 epochs of 1 step
    args = [a if a != "1" or args[i - 1] != "--trainer.devices" else "2" for i, a in enumerate(args)]
    proc = _run_cli("fit", *args, "--trainer.strategy", "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best checkpoint:" in proc.stdout
    # the printed test command carries the run's own settings (here all given on the command line)
    command = proc.stdout.split("evaluate it with:")[1].split()
    assert command[:4] == ["python", "-m", "vlm_lightning", "test"] and command[4] == "--config"
    evaluated = _run_cli(*command[3:], "--trainer.limit_test_batches", "1")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test/json_valid_rate" in evaluated.stdout and "sets the model" not in evaluated.stderr
    logged = (tmp_path / "version_0" / "metrics.csv").read_text()  # the fit run (the test run is version_1)
    assert "val/loss" in logged and "val/json_valid_rate" in logged  # validation ran and was logged ...
    # ... without Lightning's sync_dist advice for values torchmetrics already synced over the ranks
    assert "when logging on epoch level in distributed setting" not in proc.stderr


def test_reports_and_baseline_vs_finetuned(fitted, tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    import csv

    cli, _ = fitted
    best = str(Path(cli.trainer.log_dir) / "best.ckpt")
    args = base_args(tiny_replica("qwen2_vl"), data, tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlm_lightning.evaluation.compare",
            "--ckpt_path",
            best,
            "--out",
            str(tmp_path / "cmp.md"),
            "--",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "cmp.md").read_text()
    assert "| metric | baseline | fine-tuned | delta |" in table and "| json_valid_rate |" in table
    runs = sorted(tmp_path.glob("version_*"))
    assert len(runs) == 2  # baseline and fine-tuned, same split
    report = (runs[-1] / "report.md").read_text()
    for section in ("## Per field", "## Per document type", "## Failures", "## Latency"):
        assert section in report
    rows = list(csv.DictReader((runs[-1] / "predictions.csv").open()))
    assert len(rows) == 5 and {"id", "prediction", "target", "parsed", "latency_ms"} <= set(rows[0])
    metrics = json.loads((runs[-1] / "metrics.json").read_text())
    assert set(metrics["failures"]) >= {"invalid_json", "missing_field", "wrong_value", "empty_output"}
    assert sum(metrics["failures"].values()) == 5
    assert metrics["latency"]["p95_ms"] >= metrics["latency"]["p50_ms"] > 0


def test_predict_rows_without_answers_have_no_target(fitted, tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    """``predict`` on rows with no answer writes ``"target": null``, as ``infer`` does (not an empty list)."""
    cli, _ = fitted
    rows = [json.loads(line) for line in data["test"].read_text().splitlines()][:2]
    unanswered = tmp_path / "unanswered.jsonl"
    unanswered.write_text(
        "".join(
            json.dumps({"id": r["id"], "image": str(data["test"].parent / r["image"]), "question": "Total?"})
            + "\n"
            for r in rows
        )
    )
    args = base_args(tiny_replica("qwen2_vl"), data, tmp_path, "--data.predict", str(unanswered))
    predict_cli = build_cli(["predict", *args, "--ckpt_path", str(Path(cli.trainer.log_dir) / "best.ckpt")])
    written = [json.loads(line) for line in (Path(predict_cli.trainer.log_dir) / "predictions.jsonl").open()]
    assert [r["id"] for r in written] == [r["id"] for r in rows]
    assert all(r["target"] is None for r in written)


def test_testing_on_the_training_file_is_said_without_the_runs_config(
    fitted, tiny_replica, data, tmp_path, capsys
) -> None:  # noqa: ANN001
    """Without ``--config <run>/config.yaml`` (no data.train given) the checkpoint's own training file is
    compared: its scores would be in-sample."""
    cli, _ = fitted
    best = Path(cli.trainer.log_dir) / "best.ckpt"
    settings = tiny_cpu_settings(tiny_replica("qwen2_vl"), tmp_path, {"test": data["train"]})
    build_cli(["test", *as_flags(settings), "--model.metrics", "[exact_match]", "--ckpt_path", str(best)])
    err = capsys.readouterr().err
    assert f"data.test is the training file {data['train']}" in err and f"({best} was trained on it)" in err
