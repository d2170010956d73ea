"""User mistakes end with one clear message (file, line, field or sample and length), never a deep traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_data import write_receipt_dataset

pytestmark = pytest.mark.slow


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlm_lightning", *args], capture_output=True, text=True, timeout=300
    )


def common(model: Path, data: dict[str, Path], root: Path) -> list[str]:
    return [
        "--model.name_or_path",
        str(model),
        "--data.train",
        str(data["train"]),
        "--data.val",
        str(data["val"]),
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_steps",
        "1",
        "--trainer.default_root_dir",
        str(root),
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_receipt_dataset(tmp_path_factory.mktemp("errdata"), n_train=4, n_val=2, n_test=2)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-2000:])


def test_bad_rows_are_listed_together(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.jsonl"
    rows = data["train"].read_text().splitlines()
    lines = [
        rows[0],
        json.dumps({"image": "images/nope.png", "target": {"a": 1}}),
        "{oops",
        json.dumps({"image": rows and json.loads(rows[1])["image"]}),
    ]
    bad.write_text("\n".join(lines) + "\n")
    (tmp_path / "images").symlink_to(data["train"].parent / "images")
    proc = run_cli("fit", *common(tiny_replica("qwen2_vl"), {**data, "train": bad}, tmp_path))
    assert_clean_error(
        proc,
        "3 bad row(s)",
        f"{bad}:2: field 'image'",
        f"{bad}:3: field '<row>'",
        f"{bad}:4: field 'answer'",
        "on_bad_row=skip",
    )


def test_skip_bad_rows_reports_count_and_list(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "train.jsonl"
    bad.write_text(data["train"].read_text() + json.dumps({"image": "nope.png", "answer": "x"}) + "\n")
    (tmp_path / "images").symlink_to(data["train"].parent / "images")
    proc = run_cli(
        "fit",
        *common(tiny_replica("qwen2_vl"), {**data, "train": bad}, tmp_path / "run"),
        "--data.on_bad_row",
        "skip",
        "--trainer.limit_val_batches",
        "0",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    listing = next((tmp_path / "run").glob("version_*/skipped_rows.txt")).read_text()
    assert f"{bad}:5: field 'image'" in listing


def test_a_test_run_that_skips_bad_rows_lists_them_and_says_so_in_its_reports(
    tiny_replica, data, tmp_path
) -> None:  # noqa: ANN001
    bad = tmp_path / "test.jsonl"
    bad.write_text(data["test"].read_text() + json.dumps({"image": "nope.png", "answer": "x"}) + "\n")
    (tmp_path / "images").symlink_to(data["test"].parent / "images")
    proc = run_cli(
        "test",
        "--model.name_or_path", str(tiny_replica("qwen2_vl")),
        "--model.generate_max_new_tokens", "4",
        "--data.test", str(bad),
        "--data.on_bad_row", "skip",
        "--data.image_max_tokens", "16",
        "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (folder,) = (tmp_path / "run").glob("version_*")
    assert f"{bad}:3: field 'image'" in (folder / "skipped_rows.txt").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["num_samples"] == 2 and metrics["skipped_rows"] == 1
    assert "2 samples scored; 1 bad rows skipped" in (folder / "report.md").read_text()


def test_unknown_config_key(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    proc = run_cli("fit", *common(tiny_replica("qwen2_vl"), data, tmp_path), "--model.lora_rank", "8")
    assert proc.returncode != 0 and "lora_rank" in proc.stderr


def test_sample_that_needs_more_tokens_names_sample_and_length(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    proc = run_cli("fit", *common(tiny_replica("qwen2_vl"), data, tmp_path), "--data.max_length", "24")
    assert_clean_error(proc, "sample 'train-0'", "needs", "max_length=24 would cut image tokens")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            [
                "--trainer.callbacks+=vlm_lightning.callbacks.host_syncs.HostSyncReport",
                "--trainer.callbacks.steps=0",
            ],
            "HostSyncReport needs start_step >= 0 and steps >= 1; got 20, 0",
        ),
        (
            [
                "--trainer.profiler=vlm_lightning.training.profiling.SteadyStateProfiler",
                "--trainer.profiler.skip=-1",
            ],
            "SteadyStateProfiler needs skip >= 0 and rows >= 1; got skip=-1",
        ),
    ],
    ids=["callback", "profiler"],
)
def test_bad_callback_or_profiler_setting(tiny_replica, data, tmp_path, setting, message) -> None:  # noqa: ANN001
    proc = run_cli("fit", *common(tiny_replica("qwen2_vl"), data, tmp_path), *setting)
    assert_clean_error(proc, f"vlm_lightning: error: {message}")
    assert proc.returncode == 2 and "Union subtypes" not in proc.stderr


def test_wrong_model_path(data, tmp_path) -> None:  # noqa: ANN001
    proc = run_cli("fit", *common(tmp_path / "no-such-model", data, tmp_path))
    assert_clean_error(proc, "no such folder")


def test_hub_id_offline_fails_fast(data, tmp_path) -> None:  # noqa: ANN001
    proc = run_cli("fit", *common(Path("Qwen/Qwen2-VL-2B-Instruct"), data, tmp_path))
    assert_clean_error(proc, "HF_HUB_OFFLINE=1")


def test_missing_data_file(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    proc = run_cli(
        "fit", *common(tiny_replica("qwen2_vl"), {**data, "train": tmp_path / "nope.jsonl"}, tmp_path)
    )
    assert_clean_error(proc, "data file not found", "nope.jsonl", "(data.train;")


def test_out_of_memory_gives_advice_not_a_traceback(
    tiny_replica, data, tmp_path, monkeypatch, capsys
) -> None:  # noqa: ANN001
    import torch

    from vlm_lightning.cli.lightning_cli import main
    from vlm_lightning.training.module import VLMFineTuner

    def oom(self, batch):  # noqa: ANN001, ANN202
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(VLMFineTuner, "model_step", oom)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                *common(tiny_replica("qwen2_vl"), data, tmp_path),
                "--trainer.enable_progress_bar",
                "false",
            ]
        )
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "ran out of memory" in err and "--data.batch_size" in err and "gradient_checkpointing" in err


def test_a_model_folder_without_a_usable_config_is_one_clear_error(data, tmp_path) -> None:  # noqa: ANN001
    empty = tmp_path / "empty_model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")  # no model_type
    proc = run_cli("fit", *common(empty, data, tmp_path))
    assert_clean_error(proc, "cannot load model/processor", str(empty))
    assert proc.returncode == 2


def test_every_row_bad_with_skip_stops_instead_of_training_on_nothing(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"image": "nope.png", "answer": "x"}) + "\n")
    proc = run_cli(
        "fit",
        *common(tiny_replica("qwen2_vl"), {**data, "train": bad}, tmp_path),
        "--data.on_bad_row",
        "skip",
    )
    assert_clean_error(proc, f"{bad}:1: field 'image'", "No usable row is left in data.train")
    assert proc.returncode == 2


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"PK\x03\x04 only the first bytes of a zip", "truncated or corrupt"),
        (b"just text\n", "truncated or corrupt"),
    ],
)
def test_a_broken_checkpoint_for_test_is_one_clear_error(
    tiny_replica, data, tmp_path, content, words
) -> None:  # noqa: ANN001
    ckpt = tmp_path / "broken.ckpt"
    ckpt.write_bytes(content)
    args = ["--model.name_or_path", str(tiny_replica("qwen2_vl")), "--data.test", str(data["test"])]
    proc = run_cli("test", *args, "--trainer.accelerator", "cpu", "--ckpt_path", str(ckpt))
    assert_clean_error(proc, words, str(ckpt))
    assert proc.returncode == 2


def test_config_file_mistakes_name_the_key_the_file_and_the_fix(tmp_path: Path) -> None:
    """A mistyped key in a YAML config gets the closest key and the file; an unquoted ``off`` (a YAML
    boolean) where a word is expected gets the quoting fix."""
    typo, boolean = tmp_path / "typo.yaml", tmp_path / "off.yaml"
    typo.write_text("data:\n  max_token_per_row: 300\n")
    boolean.write_text("data:\n  leakage: off\n")
    proc = run_cli("fit", "--config", str(typo), "--model.name_or_path", "org/model")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert "'data.max_token_per_row' (did you mean data.max_tokens_per_row?)" in first
    assert f"(config: {typo})" in first
    proc = run_cli("fit", f"--config={typo}", "--model.name_or_path", "org/model")
    assert f"(config: {typo})" in proc.stderr.splitlines()[0]
    proc = run_cli("fit", "--config", str(boolean), "--model.name_or_path", "org/model")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data.leakage must be one of 'error', 'warn', 'off', got the boolean False" in proc.stderr
    assert 'quote the word in the config (e.g. leakage: "off")' in proc.stderr
