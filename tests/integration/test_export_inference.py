"""Export a fitted tiny Qwen2-VL run, reload it with plain transformers + peft, and run the inference CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from fit_helpers import as_flags, tiny_cpu_settings
from fixtures_data import write_receipt_dataset
from PIL import Image

from vlm_lightning.cli.lightning_cli import build_cli

MAX_NEW = 16
RUN_BUDGET = 7  # the run's generation budget: infer uses it unless told otherwise
PROMPT = "Read this receipt as JSON."  # the run's prompt: inference must pick it up without being told


@pytest.fixture(scope="module")
def run(tiny_replica, tmp_path_factory) -> dict[str, Any]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("export_run")
    data = write_receipt_dataset(root / "data", n_train=4, n_val=2, n_test=1)
    model = tiny_replica("qwen2_vl")
    settings = tiny_cpu_settings(
        model,
        root / "runs",
        {"train": data["train"], "val": data["val"]},
        model__val_generate="false",
        model__generate_max_new_tokens=RUN_BUDGET,
        data__prompt=PROMPT,
        trainer__max_steps=3,
    )
    cli = build_cli(["fit", *as_flags(settings)])
    best = Path(cli.trainer.log_dir) / "best.ckpt"
    assert best.is_file()
    return {"cli": cli, "best": best, "model": model, "data": data, "root": root}


@pytest.fixture(scope="module")
def exported(run) -> Path:  # noqa: ANN001
    from vlm_lightning.deploy.export import main as export_main

    out = run["root"] / "export" / "receipts"
    export_main(["--ckpt", str(run["best"]), "--out", str(out), "--merge", "--zip"])
    return out


def _val_images(run: dict[str, Any]) -> list[Path]:
    rows = [json.loads(line) for line in run["data"]["val"].read_text().splitlines()]
    return [run["data"]["val"].parent / r["image"] for r in rows]


def _plain_inputs(processor: Any, image: Path) -> dict[str, torch.Tensor]:
    """Prompt built with transformers only: the processor's chat template, then the processor."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with Image.open(image) as im:
        return dict(processor(text=[text], images=[im.convert("RGB")], return_tensors="pt"))


def _plain_greedy(model: Any, inputs: dict[str, torch.Tensor]) -> list[int]:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def _strip_pad(tokens: list[int], pad: int) -> list[int]:
    while tokens and tokens[-1] == pad:
        tokens = tokens[:-1]
    return tokens


@pytest.fixture(scope="module")
def plain(run, exported) -> dict[str, Any]:  # noqa: ANN001
    """Greedy tokens from the exported adapter and merged folder, loaded with transformers + peft only."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(exported)
    base = AutoModelForImageTextToText.from_pretrained(run["model"], dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, exported).eval()
    merged = AutoModelForImageTextToText.from_pretrained(exported / "merged").eval()
    merged_processor = AutoProcessor.from_pretrained(exported / "merged")
    result: dict[str, Any] = {"adapter": [], "merged": [], "processor": processor}
    for i, image in enumerate(_val_images(run)):
        inputs = _plain_inputs(processor, image)
        assert torch.equal(inputs["input_ids"], _plain_inputs(merged_processor, image)["input_ids"])
        if i == 0:
            with torch.no_grad():
                tuned = adapted(**inputs).logits
                merged_logits = merged(**inputs).logits
                with adapted.disable_adapter():
                    untuned = adapted(**inputs).logits
            assert not torch.allclose(tuned, untuned, atol=1e-4), "the adapter changes nothing"
            torch.testing.assert_close(merged_logits, tuned, atol=1e-4, rtol=1e-4)
        result["adapter"].append(_plain_greedy(adapted, inputs))
        result["merged"].append(_plain_greedy(merged, inputs))
    return result


@pytest.mark.slow
def test_export_writes_adapter_merged_folder_and_zip(run, exported) -> None:  # noqa: ANN001
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(run["model"])
    assert (exported / "adapter_model.safetensors").is_file()
    assert (exported / "merged" / "config.json").is_file()
    assert list((exported / "merged").glob("*.safetensors"))
    info = json.loads((exported / "vlm_lightning_export.json").read_text())
    assert info["mode"] == "lora" and info["image_max_tokens"] == 16
    archive = exported.with_name(exported.name + ".zip")
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= names
    assert not any(n.startswith("merged/") for n in names)
    assert Path(config["base_model_name_or_path"]).is_absolute()
    card = (exported / "README.md").read_text()  # a model card, not PEFT's blank template
    assert f"Fine-tuned with vlm_lightning from `{Path(run['model']).resolve()}` (qwen2_vl, lora mode" in card
    assert "[More Information Needed]" not in card and "## Validation (last logged values)" in card
    assert (
        f"python -m vlm_lightning.infer --model {Path(run['model']).resolve()} --adapter {exported}" in card
    )


@pytest.mark.slow
def test_greedy_tokens_agree_adapter_merged_module_and_checkpoint(run, plain) -> None:  # noqa: ANN001
    from vlm_lightning.deploy.inference import GenerationSettings, Predictor
    from vlm_lightning.training.module import VLMFineTuner

    module = VLMFineTuner.load_from_checkpoint(run["best"], map_location="cpu").eval()
    collator = run["cli"].datamodule.collator  # the validation path: same image budget and template
    val = run["cli"].datamodule.datasets["val"]
    pad = module.tokenizer.pad_token_id
    from_ckpt = Predictor.load(str(run["model"]), ckpt=run["best"], device="cpu")
    for i in range(len(val)):
        _, tokens = module.generate(collator([val[i]]), max_new_tokens=MAX_NEW)
        module_tokens = _strip_pad(tokens[0].tolist(), pad)
        assert plain["adapter"][i] == module_tokens
        assert plain["merged"][i] == module_tokens
        text = from_ckpt.generate([from_ckpt.record(_val_images(run)[i])], GenerationSettings(MAX_NEW))[0]
        assert text == module.tokenizer.decode(module_tokens, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_infer_cli_streams_text_for_one_image(run, exported, plain) -> None:  # noqa: ANN001
    image = _val_images(run)[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["--model", str(run["model"]), "--adapter", str(exported), "--image", str(image)]
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_lightning.infer", *args, "--max-new-tokens", str(MAX_NEW)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = plain["processor"].tokenizer.decode(plain["adapter"][0], skip_special_tokens=True).strip()
    assert expected and proc.stdout.strip() == expected


@pytest.mark.slow
def test_infer_batch_mode_writes_one_row_per_image(run, exported, plain, tmp_path, capsys) -> None:  # noqa: ANN001
    from vlm_lightning.deploy.inference import main as infer_main

    images = tmp_path / "scans"
    images.mkdir()
    for path in _val_images(run):
        shutil.copy(path, images / path.name)
    (images / "notes.txt").write_text("not an image")
    (images / "broken.png").write_bytes(b"\x89PNG cut short")  # one bad scan: listed, the rest inferred
    out = tmp_path / "preds" / "predictions.jsonl"
    args = ["--model", str(exported / "merged"), "--images-dir", str(images), "--out", str(out)]
    with pytest.raises(SystemExit) as stopped:
        infer_main([*args, "--max-new-tokens", str(MAX_NEW), "--on-bad-file", "stop"])
    assert stopped.value.code == 2 and not out.exists()
    capsys.readouterr()
    infer_main([*args, "--max-new-tokens", str(MAX_NEW), "--batch-size", "2"])
    assert "broken.png" in out.with_suffix(".bad_files.txt").read_text()
    assert "bad file(s) skipped" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["val-0", "val-1"]
    tokenizer = plain["processor"].tokenizer
    expected = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in plain["merged"]]
    assert [r["prediction"] for r in rows] == expected
    assert all(r["prompt"] == PROMPT for r in rows)  # the run's prompt, from the export's info file
    csv_lines = out.with_suffix(".csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(rows) and csv_lines[0].startswith("id,prompt,prediction")

    # --jsonl: a line that is not JSON is a bad row (not a file), listed; the good row is inferred
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text(json.dumps({"id": "ok", "image": str(_val_images(run)[0])}) + "\n{not json\n")
    jsonl_out = tmp_path / "jsonl_preds" / "predictions.jsonl"
    infer_main(["--model", str(exported / "merged"), "--jsonl", str(rows_file), "--out", str(jsonl_out),
                "--max-new-tokens", str(MAX_NEW)])  # fmt: skip
    assert "1 bad row(s) skipped" in capsys.readouterr().err
    assert [json.loads(line)["id"] for line in jsonl_out.read_text().splitlines()] == ["ok"]


@pytest.mark.slow
def test_qlora_checkpoint_merges_into_unquantized_16_or_32_bit_base(run, exported, tmp_path) -> None:  # noqa: ANN001
    from transformers import AutoModelForImageTextToText

    from vlm_lightning.deploy.export import main as export_main

    # a QLoRA run stores the same LoRA keys; only the mode differs (no bitsandbytes on CPU to train one)
    ckpt = torch.load(run["best"], weights_only=True)
    ckpt["vlm_lightning"]["mode"] = ckpt["hyper_parameters"]["mode"] = "qlora"
    qlora_ckpt = tmp_path / "qlora.ckpt"
    torch.save(ckpt, qlora_ckpt)
    out = tmp_path / "qlora_export"
    export_main(["--ckpt", str(qlora_ckpt), "--out", str(out), "--merge", "--device", "cpu"])
    config = json.loads((out / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForImageTextToText.from_pretrained(out / "merged")
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    reference = AutoModelForImageTextToText.from_pretrained(exported / "merged")
    for (name, a), b in zip(merged.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_push_to_hub_refused_without_token(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from vlm_lightning.deploy.export import main as export_main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exc:
        export_main(
            ["--ckpt", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "o"), "--push-to-hub", "me/x"]
        )
    assert exc.value.code == 2
    assert "HF_TOKEN" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_export_refuses_foreign_checkpoint(tmp_path, capsys) -> None:  # noqa: ANN001
    from vlm_lightning.deploy.export import main as export_main

    ckpt = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {}}, ckpt)
    with pytest.raises(SystemExit):
        export_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "is not a Lightning checkpoint" in err and "Traceback" not in err  # validated as --ckpt_path is
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(SystemExit):
        export_main(["--ckpt", str(truncated), "--out", str(tmp_path / "o")])
    assert "is truncated or corrupt" in capsys.readouterr().err


@pytest.mark.slow
def test_infer_adapter_onto_a_base_of_another_family_is_one_clear_error(
    run, exported, tiny_replica, tmp_path, capsys
) -> None:  # noqa: ANN001
    from vlm_lightning.deploy.inference import main as infer_main

    image = _val_images(run)[0]
    with pytest.raises(SystemExit) as info:
        infer_main(
            ["--model", str(tiny_replica("lfm2_vl")), "--adapter", str(exported), "--image", str(image)]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--adapter {exported} was trained on a qwen2_vl model" in err and "is a lfm2_vl model" in err
    with pytest.raises(SystemExit):  # a folder that is no adapter at all
        infer_main(["--model", str(run["model"]), "--adapter", str(tmp_path), "--image", str(image)])
    assert "is not a PEFT adapter folder (no adapter_config.json)" in capsys.readouterr().err


@pytest.mark.slow
def test_training_export_and_inference_build_the_same_model(run) -> None:  # noqa: ANN001
    """One model build: the same module tree and the same logits from the module, export and inference."""
    from vlm_lightning.deploy.export import load_checkpoint, rebuild_model
    from vlm_lightning.deploy.inference import Predictor
    from vlm_lightning.training.module import VLMFineTuner

    module = VLMFineTuner.load_from_checkpoint(run["best"], map_location="cpu").eval()
    exported, _, _ = rebuild_model(load_checkpoint(run["best"]), device="cpu")
    predictor = Predictor.load(str(run["model"]), ckpt=run["best"], device="cpu")

    def tree(model: torch.nn.Module) -> list[tuple[str, str]]:
        return [(name, type(m).__name__) for name, m in model.named_modules()]

    assert tree(module.model) == tree(exported) == tree(predictor.model)
    batch = run["cli"].datamodule.collator([run["cli"].datamodule.datasets["val"][0]])
    with torch.no_grad():
        logits = [m(**batch["inputs"]).logits for m in (module.model, exported, predictor.model)]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


@pytest.mark.slow
def test_inference_loads_an_export_in_its_recorded_dtype(run, exported, tmp_path) -> None:  # noqa: ANN001
    """The adapter and merged routes default to the dtype the export wrote (the --ckpt route uses the run's),
    so the three routes decode the same weights."""
    import shutil

    from vlm_lightning.deploy.inference import Predictor

    info = json.loads((exported / "vlm_lightning_export.json").read_text())
    assert info["dtype"] == "float32"  # this run trained fp32 weights on the CPU
    assert json.loads((exported / "merged" / "vlm_lightning_export.json").read_text())["dtype"] == "float32"
    bf16 = tmp_path / "bf16"
    shutil.copytree(exported, bf16, ignore=shutil.ignore_patterns("merged"))
    (bf16 / "vlm_lightning_export.json").write_text(json.dumps({**info, "dtype": "bfloat16"}))
    loaded = Predictor.load(str(run["model"]), adapter=bf16, device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    asked = Predictor.load(str(run["model"]), adapter=bf16, device="cpu", dtype="float32")
    assert next(asked.model.parameters()).dtype == torch.float32  # an explicit --dtype wins


@pytest.mark.slow
def test_batch_inference_asks_for_a_static_cache_as_the_setting_and_batch_count_say(
    run, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """``--cache static`` decodes every batch with a static cache (same predictions in fp32 on the CPU);
    ``auto`` keeps the dynamic cache on the CPU; the decoding-step compiler setting reaches every batch."""
    from vlm_lightning.deploy import predictor as predictor_module
    from vlm_lightning.deploy.inference import GenerationSettings, Predictor

    predictor = Predictor.load(str(run["model"]), ckpt=run["best"], device="cpu")
    records = run["cli"].datamodule.datasets["val"].records
    asked: list[bool] = []
    compilers: list[object] = []
    real = predictor_module.generate_batch

    def recording(*args: object, static_cache: bool = False, **kwargs: object) -> object:
        asked.append(static_cache)
        compilers.append(kwargs.get("decoding_compiler"))
        return real(*args, static_cache=static_cache, **kwargs)

    monkeypatch.setattr(predictor_module, "generate_batch", recording)
    rows = {}
    for cache, compiler in (("static", "cudagraphs"), ("auto", "inductor"), ("dynamic", "inductor")):
        asked.clear()
        compilers.clear()
        settings = GenerationSettings(max_new_tokens=6, cache=cache, compiler=compiler)
        rows[cache] = predictor.predict(records, settings, batch_size=1, progress=False)
        assert asked == [cache == "static"] * len(records)
        assert compilers == [compiler] * len(records)
    assert [r["prediction"] for r in rows["static"]] == [r["prediction"] for r in rows["dynamic"]]


@pytest.mark.slow
def test_infer_defaults_to_the_runs_generation_budget_and_refuses_sizes_below_one(
    run, exported, plain, tmp_path
) -> None:  # noqa: ANN001
    from vlm_lightning.deploy.inference import main as infer_main

    images = tmp_path / "scans"
    images.mkdir()
    for path in _val_images(run):
        shutil.copy(path, images / path.name)
    out = tmp_path / "predictions.jsonl"
    infer_main(["--model", str(exported / "merged"), "--images-dir", str(images), "--out", str(out)])
    tokenizer = plain["processor"].tokenizer
    expected = [tokenizer.decode(t[:RUN_BUDGET], skip_special_tokens=True).strip() for t in plain["merged"]]
    assert [json.loads(line)["prediction"] for line in out.read_text().splitlines()] == expected
    for flag in ("--max-new-tokens", "--batch-size"):
        with pytest.raises(SystemExit) as stopped:
            infer_main(["--model", str(exported / "merged"), "--images-dir", str(images), flag, "0"])
        assert stopped.value.code == 2


def test_export_into_a_folder_with_files_is_refused_unless_overwrite(run, tmp_path, capsys) -> None:  # noqa: ANN001
    """An earlier export's files (its merged/ of another model) never stay beside a new export."""
    from vlm_lightning.deploy.export import main as export_main

    out = tmp_path / "out"
    export_main(["--ckpt", str(run["best"]), "--out", str(out), "--merge"])
    assert (out / "merged").is_dir()
    with pytest.raises(SystemExit) as stopped:
        export_main(["--ckpt", str(run["best"]), "--out", str(out)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"--out {out} holds files already (" in err and "--overwrite to replace its contents" in err
    export_main(["--ckpt", str(run["best"]), "--out", str(out), "--overwrite"])
    assert (out / "adapter_config.json").is_file() and not (out / "merged").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):  # --overwrite empties an earlier export only
        export_main(["--ckpt", str(run["best"]), "--out", str(other), "--overwrite"])
    assert "holds files but no vlm_lightning_export.json" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"
    failed = tmp_path / "failed"
    with pytest.raises(SystemExit):
        export_main(["--ckpt", str(run["best"]), "--out", str(failed), "--base", str(tmp_path / "no-model")])
    assert not failed.exists()  # a failed export leaves no empty folder
