"""Each seed config runs as a CI twin: the same YAML with the model swapped for its family's tiny replica,
CPU, a few steps, and data from the project's generators or fixtures with the real datasets' columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlm_lightning.cli.lightning_cli import build_cli

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _hf_fixture(folder: Path, kind: str) -> dict[str, str]:
    import datasets
    from PIL import Image, ImageDraw

    images = []
    for i in range(4):
        im = Image.new("RGB", (96, 128), "white")
        ImageDraw.Draw(im).text((5, 5), f"doc {i}", fill="black")
        images.append(im)
    if kind == "docvqa":
        data = {
            "questionId": [str(i) for i in range(4)],
            "question": [f"What is doc {i}?" for i in range(4)],
            "question_types": [["form"]] * 4,
            "image": images,
            "docId": list(range(4)),
            "answers": [[f"doc {i}", f"document {i}"] for i in range(4)],
        }
        features = datasets.Features(
            {
                "questionId": datasets.Value("string"),
                "question": datasets.Value("string"),
                "question_types": datasets.Sequence(datasets.Value("string")),
                "image": datasets.Image(),
                "docId": datasets.Value("int64"),
                "answers": datasets.Sequence(datasets.Value("string")),
            }
        )
    else:  # cord
        gts = [
            json.dumps(
                {
                    "gt_parse": {
                        "menu": [{"nm": f"item{i}", "price": f"{i}.00"}],
                        "total": {"total_price": f"{i}.00"},
                    }
                }
            )
            for i in range(4)
        ]
        data = {"image": images, "ground_truth": gts}
        features = datasets.Features({"image": datasets.Image(), "ground_truth": datasets.Value("string")})
    specs = {}
    for split, rows in (("train", slice(0, 2)), ("val", slice(2, 3)), ("test", slice(3, 4))):
        path = folder / kind / split
        datasets.Dataset.from_dict({k: v[rows] for k, v in data.items()}, features=features).save_to_disk(
            str(path)
        )
        specs[split] = {"path": str(path), "adapter": kind}
    return specs


def _synthetic(folder: Path, kind: str) -> dict[str, str]:
    from vlm_lightning.data.synthetic import write_dataset

    paths = write_dataset(kind, folder / kind, 6, seed=0, split="train=0.5,val=0.25,test=0.25")
    return {k: str(v) for k, v in paths.items()}


TWINS = {
    "receipt_lfm2.yaml": ("lfm2_vl", "receipts"),
    "receipt_lfm3.yaml": ("lfm3_vl", "receipts"),
    "receipt_gemma4.yaml": ("gemma4", "receipts"),
    "docvqa_qwen2vl.yaml": ("qwen2_vl", "docvqa"),
    "docvqa_qwen3_5.yaml": ("qwen3_5", "docvqa"),
    "docvqa_internvl.yaml": ("internvl", "docvqa"),
    "docvqa_gemma3.yaml": ("gemma3", "docvqa"),
    "captcha_smolvlm.yaml": ("idefics3", "captchas"),
    "cord_paligemma_qlora.yaml": ("paligemma", "cord"),
    "latex_qwen2vl7b_qlora.yaml": ("qwen2_vl", "formulas"),
    "latex_granite_docling.yaml": ("granite_docling", "formulas"),
    "latex_paddleocr_vl.yaml": ("paddleocr_vl", "formulas"),
}


def test_every_seed_config_has_a_twin() -> None:
    seeds = {p.name for p in CONFIGS.glob("*.yaml")} - {
        "quickstart.yaml",
        "sweep_quickstart.yaml",
        "boxes_quickstart.yaml",
    }
    assert seeds <= set(TWINS)


@pytest.mark.parametrize("config", sorted(TWINS))
def test_seed_config_twin_runs(config: str, tiny_replica, tmp_path: Path) -> None:  # noqa: ANN001
    family, data_kind = TWINS[config]
    raw = yaml.safe_load((CONFIGS / config).read_text())
    data = (
        _hf_fixture(tmp_path, data_kind)
        if data_kind in ("docvqa", "cord")
        else _synthetic(tmp_path, data_kind)
    )
    twin = {
        "model": {
            "name_or_path": str(tiny_replica(family)),
            "dtype": "float32",
            "generate_max_new_tokens": 8,
        },
        "data": {
            **data,
            "batch_size": 2,
            "eval_batch_size": 2,
            "num_workers": 0,
            "max_length": 1024,
            # small images (Gemma 4's smallest budget is 70 soft tokens; PaliGemma has a fixed size)
            "image_max_tokens": {"paligemma": None, "gemma4": 70}.get(family, 64),
            "max_image_side": 256,
        },
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "max_steps": 2,
            "max_epochs": None,
            "limit_val_batches": 1,
            "val_check_interval": 1.0,
            "check_val_every_n_epoch": 1,
            "accumulate_grad_batches": 1,
            "default_root_dir": str(tmp_path / "runs"),
            "enable_progress_bar": False,
        },
    }
    if raw["model"]["mode"] == "qlora":
        twin["model"]["mode"] = "lora"  # 4-bit needs CUDA + bitsandbytes: covered by tests/gpu
    if "predict" in raw.get("data", {}):
        twin["data"]["predict"] = data["test"]
    override = tmp_path / "twin.yaml"
    override.write_text(yaml.safe_dump(twin))
    cli = build_cli(["fit", "--config", str(CONFIGS / config), "--config", str(override)])
    assert cli.trainer.global_step == 2
    run = Path(cli.trainer.log_dir)
    assert (run / "last.ckpt").is_file()
    for key in ("lora", "scheduler", "metrics", "gradient_checkpointing", "mode"):
        if key in raw["model"] and key != "mode":
            assert cli.model.hparams[key] is not None, key
    lr = raw["model"]["optimizer"]["init_args"]["lr"]
    assert cli.trainer.optimizers[0].defaults["lr"] == pytest.approx(lr)
    test = build_cli(
        [
            "test",
            "--config",
            str(CONFIGS / config),
            "--config",
            str(override),
            "--ckpt_path",
            str(run / "last.ckpt"),
        ]
    )
    metrics = json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())
    assert metrics["num_samples"] >= 1
    for name in raw["model"]["metrics"]:
        assert any(k.startswith("test/") for k in metrics), name
