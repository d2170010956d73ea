"""Settings that cannot work with each other or with the data stop before the model loads, in one line."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_data import write_receipt_dataset
from PIL import Image

from vlm_lightning.cli.lightning_cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("startup")
    paths = write_receipt_dataset(folder, n_train=3, n_val=2, n_test=2)
    qa = folder / "qa_val.jsonl"  # plain-text answers (document QA)
    rows = [json.loads(line) for line in paths["val"].read_text().splitlines()]
    qa.write_text(
        "".join(
            json.dumps({"id": r["id"], "image": r["image"], "question": "Store?", "answer": "ACME"}) + "\n"
            for r in rows
        )  # fmt: skip
    )
    paths["qa_val"] = qa
    return paths


def _args(model: Path, data: dict[str, Path], root: Path, *extra: str) -> list[str]:
    return [
        "--model.name_or_path", str(model), "--data.train", str(data["train"]), "--data.val", str(data["val"]),
        "--trainer.accelerator", "cpu", "--trainer.max_steps", "1", "--trainer.default_root_dir", str(root),
        *extra,
    ]  # fmt: skip


CASES = {
    "json metrics on plain answers": (
        ["fit", "--model.metrics", "[json]", "--data.val", "{qa_val}"],
        "model.metrics ['json'] compare JSON answers, but 2 of 2 rows of data.val have plain-text answers",
    ),
    "json metrics on plain answers in predict": (  # predict scores the rows that have answers
        ["predict", "--model.metrics", "[json]", "--data.predict", "{qa_val}"],
        "model.metrics ['json'] compare JSON answers, but 2 of 2 rows of data.predict have plain-text answers",
    ),
    "monitor not logged by the metrics": (
        ["fit", "--model.metrics", "[anls]", "--checkpoint.monitor", "val/json_valid_rate"],
        "--checkpoint.monitor val/json_valid_rate is not logged with model.metrics ['anls']",
    ),
    "monitor typo": (
        ["fit", "--model.metrics", "[json]", "--checkpoint.monitor", "val/json_valid_rat"],
        "(did you mean val/json_valid_rate?)",
    ),
    "monitor of a metric without generation": (
        ["fit", "--model.metrics", "[json]", "--model.val_generate", "false",
         "--checkpoint.monitor", "val/json_valid_rate"],
        "model.val_generate is false",
    ),
    "LoRA preset typo": (
        ["fit", "--model.lora.targets", "atention"],
        "model.lora.targets 'atention' is neither a preset (attention, attention_mlp, all_linear) nor a regex",
    ),
    "unknown metric": (
        ["fit", "--model.metrics", "[anls, blue]"],
        "unknown metric(s) ['blue'] in model.metrics; known metrics: anls,",
    ),
    "test without data.test": (["test"], "test needs data.test: set --data.test"),
    "bad row": (["fit", "--data.val", "{bad}"], "data file not found"),
    "run folder is a file": (
        ["fit", "--trainer.default_root_dir", "{afile}/runs"],
        "trainer.default_root_dir '{afile}/runs' is the run folder (checkpoints, logs, reports) and cannot be used",
    ),
    "image folder without answers": (
        ["fit", "--data.train", "{imgf}"],
        "an image folder without answers (its only columns: image): put a metadata.jsonl next to the images",
    ),
    "unknown albumentations transform": (
        ["fit", "--data.augment", "[{{name: GaussNoize}}]", "--data.augment_copies", "1"],
        "unknown albumentations transform 'GaussNoize'. Did you mean",
    ),
    "row budget without packing": (
        ["fit", "--data.max_tokens_per_row", "512"],
        "data.max_tokens_per_row is set but data.packing is false: set --data.packing true",
    ),
    "packing without lengths": (
        ["fit", "--data.packing", "true", "--data.check_lengths", "false"],
        "data.packing needs the sample lengths to fill its rows: keep data.check_lengths true",
    ),
    "length grouping without lengths": (
        ["fit", "--data.group_by_length", "true", "--data.check_lengths", "false"],
        "data.group_by_length needs the sample lengths: keep data.check_lengths true",
    ),
    "row budget below the longest sample": (
        ["fit", "--data.packing", "true", "--data.max_tokens_per_row", "20", "--data.max_length", "400",
         "--data.image_max_tokens", "16"],
        "data.max_tokens_per_row 20 is smaller than sample 'train-",
    ),
    "packing with flash attention": (  # transformers' flash path splits samples only in a batch of one row
        ["fit", "--data.packing", "true", "--model.attn_implementation", "flash_attention_2"],
        "model.attn_implementation 'flash_attention_2' does not keep packed samples apart",
    ),
    "option typo": (["fit", "--data.bach_size", "2"], "--data.bach_size 2 (did you mean data.batch_size?)"),
    "abbreviated option": (["fit", "--data.batch", "2"], "--data.batch 2 (did you mean data.batch_size?)"),
    "validation fraction above 1": (
        ["fit", "--trainer.val_check_interval", "1.5"],
        "trainer.val_check_interval 1.5 is a fraction of an epoch and must be in (0, 1]",
    ),
    "evaluation batch size 0": (["fit", "--data.eval_batch_size", "0"], "data.eval_batch_size must be >= 1, got 0"),
    "generation budget 0": (
        ["fit", "--model.generate_max_new_tokens", "0"], "model.generate_max_new_tokens must be >= 1, got 0"
    ),
    "unknown nested option": (
        ["fit", "--model.lora.rank", "8"],
        "option 'rank' is not accepted by --model.lora\n  valid keys of model.lora: r, alpha, dropout,",
    ),
    "callback option of the wrong type": (
        ["fit", "--trainer.callbacks+=vlm_lightning.callbacks.step_profile.StepProfiler",
         "--trainer.callbacks.start_step=abc"],
        "--trainer.callbacks.start_step: the value given is not valid for StepProfiler's argument start_step: int = 50",
    ),
    "LoRA rank of the wrong type": (["fit", "--model.lora.r", "abc"], "--model.lora.r must be an int, got 'abc'"),
    "LoRA rank and dropout out of range": (
        ["fit", "--model.lora.r", "0", "--model.lora.dropout", "1.5"],
        "model.lora.r must be a whole number >= 1, got 0; model.lora.dropout must be in [0, 1) (the share of "
        "adapter inputs dropped), got 1.5",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_settings_stop_before_the_model_loads(
    case: str, tiny_replica, data, tmp_path, monkeypatch, capsys
) -> None:  # noqa: ANN001
    def no_model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr("vlm_lightning.models.build.load_model", no_model)
    extra, message = CASES[case]
    (tmp_path / "afile").write_text("")
    images = tmp_path / "imgf"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16)).save(images / f"{i}.png")
    paths = {
        "qa_val": str(data["qa_val"]), "bad": str(tmp_path / "missing.jsonl"), "afile": str(tmp_path / "afile"),
        "imgf": str(images),
    }  # fmt: skip
    extra = [e.format(**paths) for e in extra]
    message = message.format(**paths).replace("\\n", "\n")
    with pytest.raises(SystemExit) as info:
        main([extra[0], *_args(tiny_replica("qwen2_vl"), data, tmp_path), *extra[1:]])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "vlm_lightning: error: " in err and message in err, err[-2000:]
    assert "Traceback" not in err


def test_a_run_stopped_at_start_up_leaves_no_empty_run_folder(tiny_replica, data, tmp_path, capsys) -> None:  # noqa: ANN001
    root = tmp_path / "not-yet" / "runs"
    with pytest.raises(SystemExit):
        main(["fit", *_args(tiny_replica("qwen2_vl"), data, tmp_path), "--trainer.default_root_dir", str(root),
              "--data.val", str(tmp_path / "missing.jsonl")])  # fmt: skip
    assert "data file not found" in capsys.readouterr().err
    assert not (tmp_path / "not-yet").exists()


def test_packing_is_refused_for_a_family_that_cannot_keep_samples_apart(
    tiny_replica, data, tmp_path, monkeypatch, capsys
) -> None:  # noqa: ANN001
    def no_model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr("vlm_lightning.models.build.load_model", no_model)
    with pytest.raises(SystemExit) as info:
        main(["fit", *_args(tiny_replica("paligemma"), data, tmp_path), "--data.packing", "true"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "data.packing cannot be used with paligemma: PaliGemma's prefix attends bidirectionally" in err
    assert "Set --data.packing false" in err


def test_packed_fit_trains_and_evaluates_unpacked(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    from vlm_lightning.cli.lightning_cli import build_cli

    args = [*_args(tiny_replica("qwen2_vl"), data, tmp_path), "--trainer.max_steps", "3", "--data.packing", "true",
            "--data.batch_size", "3", "--data.max_length", "400", "--data.image_max_tokens", "16",
            "--model.generate_max_new_tokens", "4", "--trainer.enable_progress_bar", "false",
            "--trainer.log_every_n_steps", "1"]  # fmt: skip
    cli = build_cli(["fit", *args])
    assert cli.trainer.global_step == 3
    batch = next(iter(cli.datamodule.train_dataloader()))
    rows, width = batch["inputs"]["input_ids"].shape
    assert "attention_mask" not in batch["inputs"]
    assert rows <= 3 and width <= 400  # at most data.batch_size rows of at most data.max_length tokens
    assert len(batch["ids"]) > rows  # rows hold several samples, no padding between them
    val = next(iter(cli.datamodule.val_dataloader()))
    assert "packed_segments" not in val and "generation_inputs" in val  # evaluation stays unpacked
    logged = (next(tmp_path.glob("version_*")) / "metrics.csv").read_text()
    assert "train/loss" in logged and "nan" not in logged.lower()


def test_a_logger_whose_package_is_missing_says_what_to_install(tiny_replica, data, tmp_path, capsys) -> None:  # noqa: ANN001
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here: the missing-package path cannot be reached")
    with pytest.raises(SystemExit) as info:
        main(["fit", *_args(tiny_replica("qwen2_vl"), data, tmp_path),
              "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
              "--trainer.logger.save_dir", str(tmp_path)])  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "vlm_lightning: error: a class in the config needs a package that is not installed" in err
    assert err.rstrip().endswith("pip install tensorboard") and "Traceback" not in err


def test_good_settings_pass_the_checks_and_train(tiny_replica, data, tmp_path, capsys) -> None:  # noqa: ANN001
    main(["fit", *_args(tiny_replica("qwen2_vl"), data, tmp_path), "--model.metrics", "[receipt, json]",
          "--checkpoint.monitor", "val/field_acc/store_name", "--checkpoint.mode", "max",
          "--data.max_length", "400", "--data.image_max_tokens", "16", "--model.generate_max_new_tokens", "4",
          "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert (next(tmp_path.glob("version_*")) / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_clean_run_prints_no_library_warning_and_says_what_it_did(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    args = [*_args(tiny_replica("qwen2_vl"), data, tmp_path), "--trainer.max_steps", "7",
            "--data.batch_size", "1", "--trainer.log_every_n_steps", "1", "--data.max_length", "400",
            "--data.image_max_tokens", "16", "--model.generate_max_new_tokens", "4"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_lightning", "fit", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [line for line in proc.stderr.splitlines() if re.search(r"\.py:\d+: |Warning\b", line)]
    assert not warned, "\n".join(warned)
    assert "Tip:" not in proc.stderr and "v_num" not in proc.stderr
    assert (
        "[vlm_lightning] fit: train 3 samples, val 2 samples, 3 optimizer steps per epoch, 7 in all"
        in proc.stdout
    )
    assert "[vlm_lightning] training stopped: reached trainer.max_steps 7" in proc.stdout
    bar = proc.stdout.replace("\r", "\n")  # Lightning's tqdm bars write to stdout
    assert "train (epoch 2): 100%" in bar and "7/7 [" in bar
    throughput = json.loads((next(tmp_path.glob("version_*")) / "throughput.json").read_text())
    assert "peak_gib_per_device" not in throughput and throughput["peak_rss_gib_per_process"][0] > 0.1


def test_32_bit_precision_with_16_bit_weights_is_said_at_start(
    tiny_replica, data, tmp_path, monkeypatch, capsys
) -> None:  # noqa: ANN001
    def no_model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("stop after the start-up checks")

    monkeypatch.setattr("vlm_lightning.models.build.load_model", no_model)
    args = _args(
        tiny_replica("qwen2_vl"),
        data,
        tmp_path,
        "--trainer.precision",
        "32-true",
        "--model.dtype",
        "bfloat16",
    )
    with pytest.raises((RuntimeError, SystemExit)):
        main(["fit", *args])
    err = capsys.readouterr().err
    assert "trainer.precision 32-true with model.dtype bfloat16: the base weights stay 16-bit" in err


def test_bf16_mixed_on_the_cpu_is_said_at_start(tiny_replica, data, tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    def no_model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("stop after the start-up checks")

    monkeypatch.setattr("vlm_lightning.models.build.load_model", no_model)
    args = _args(tiny_replica("qwen2_vl"), data, tmp_path, "--trainer.precision", "bf16-mixed")
    with pytest.raises((RuntimeError, SystemExit)):
        main(["fit", *args])
    err = capsys.readouterr().err
    assert "trainer.precision bf16-mixed on the CPU: bf16 autocast runs there" in err
    assert "--trainer.precision 32-true --model.dtype float32" in err


def test_a_missing_base_model_names_the_setting_and_the_commands_help(capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as info:
        main(["fit", "--data.train", "t.jsonl"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: --model.name_or_path is required (a hub id such as" in err
    assert "all options: python -m vlm_lightning fit --help" in err
