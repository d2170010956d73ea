"""Peak GPU memory and step time per training mode (lora / qlora / full) on real-size architectures.

Random weights, no hub: the architecture is built from its real config, saved once, then each
(architecture, mode) runs in its own process through ``VLMFineTuner`` (the trainer's own model setup,
loss and optimizer), bf16 autocast, synthetic receipt batches.

    python scripts/mode_memory.py --runs lfm2_vl_1_6b:lora lfm2_vl_1_6b:qlora qwen2_vl_2b:lora \
        qwen2_vl_2b:qlora qwen2_vl_7b:qlora --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

QWEN2_VL_7B_TEXT = {  # Qwen/Qwen2-VL-7B-Instruct config.json
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
}


def build_folder(arch: str, folder: Path) -> Path:
    """Config + processor + random bf16 weights for ``arch`` (``qwen2_vl_7b`` widens the 2B text model)."""
    from transformers import AutoConfig

    from vlm_lightning.replicas.real_size import build_model, build_real_folder

    if list(folder.glob("*.safetensors")):
        return folder
    build_real_folder("qwen2_vl_2b" if arch == "qwen2_vl_7b" else arch, folder)
    config = AutoConfig.from_pretrained(folder)
    if arch == "qwen2_vl_7b":
        for key, value in QWEN2_VL_7B_TEXT.items():
            setattr(config.text_config, key, value)
        config.vision_config.hidden_size = QWEN2_VL_7B_TEXT["hidden_size"]
        config.tie_word_embeddings = False
        config.save_pretrained(folder)
    model = build_model(config, device="cuda", dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def measure(folder: Path, mode: str, batch_size: int, steps: int, warmup: int, checkpointing: bool) -> dict:
    """One (architecture, mode) in this process: peak memory and mean step time."""
    from vlm_lightning.data.datamodule import DocumentDataModule
    from vlm_lightning.data.synthetic import write_receipts
    from vlm_lightning.models.peft_setup import LoraSettings
    from vlm_lightning.training.module import VLMFineTuner

    data = folder.parent / "receipts_mem"
    if not (data / "data.jsonl").exists():
        write_receipts(data, 64, seed=0)
    dm = DocumentDataModule(
        train=str(data / "data.jsonl"),
        processor_name=str(folder),
        batch_size=batch_size,
        max_length=4096,
        image_max_tokens=256,
        max_image_side=512,
        check_lengths=False,
        leakage="off",
    )
    dm.setup("fit")
    module = VLMFineTuner(
        str(folder),
        mode=mode,
        lora=LoraSettings(r=16, alpha=32, dropout=0.05),
        dtype="bfloat16",
        gradient_checkpointing=checkpointing,
        metrics=["exact_match"],
        compile_language_model=False,  # eager, as the tables were measured (no trainer calls configure_model)
        compile_vision_tower=False,
    ).cuda()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(4)]
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        batch = {
            "inputs": {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch["inputs"].items()},
            "labels": batch["labels"].cuda(),
        }
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _, _ = module.model_step(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "mode": mode,
        "trainable": module.trainable,
        "total": module.total,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "step_ms": 1000 * sum(times) / len(times),
        "samples_per_s": batch_size * len(times) / sum(times),
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="+", default=["lfm2_vl_1_6b:lora", "qwen2_vl_2b:lora"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mode_memory"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        arch, mode = args.one.split(":")
        print(
            "RESULT "
            + json.dumps(
                {
                    "arch": arch,
                    **measure(
                        args.workdir / arch,
                        mode,
                        args.batch_size,
                        args.steps,
                        args.warmup,
                        args.gradient_checkpointing,
                    ),
                }
            )
        )
        return
    results = []
    for spec in args.runs:
        arch, _ = spec.split(":")
        build_folder(arch, args.workdir / arch)
        cmd = [
            sys.executable,
            __file__,
            "--one",
            spec,
            "--workdir",
            str(args.workdir),
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ]
        if args.gradient_checkpointing:
            cmd.append("--gradient-checkpointing")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{spec} failed:\n{proc.stderr[-3000:]}")
            results.append(
                {"arch": arch, "mode": spec.split(":")[1], "error": proc.stderr.strip().splitlines()[-1:]}
            )
            continue
        results.append(json.loads(lines[0][7:]))
        print(results[-1], flush=True)
    table = [
        f"### Memory and step time per mode (batch {args.batch_size}, one receipt image <= 256 image tokens "
        f"per sample, LoRA r16 on the LM, bf16, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'})",
        "",
        f"Device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; command: "
        f"`python scripts/mode_memory.py --runs {' '.join(args.runs)} --batch-size {args.batch_size}`",
        "",
        "| architecture | mode | trainable / total params | peak GiB | step ms | samples/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            table.append(f"| {r['arch']} | {r['mode']} | failed: {r['error']} | | | |")
        else:
            table.append(
                f"| {r['arch']} | {r['mode']} | {r['trainable'] / 1e6:.1f}M / {r['total'] / 1e9:.2f}B "
                f"| {r['peak_gib']:.1f} | {r['step_ms']:.0f} | {r['samples_per_s']:.1f} |"
            )
    report = "\n".join(table)
    print(report)
    if args.out:
        with args.out.open("a") as fh:
            fh.write("\n" + report + "\n")


if __name__ == "__main__":
    main()
