"""DDP scaling of the real ``fit`` path: the same run on 1, 2, ... GPUs, samples/s and peak memory per GPU.

Builds a real-size architecture with random weights (no hub), synthetic receipts, then runs
``python -m vlm_lightning fit --config configs/receipt_lfm2.yaml --trainer.devices N`` for each N, and
``validate`` of one checkpoint on 1 and N GPUs to show metrics are equal and samples counted once.

    python scripts/ddp_scaling.py --arch lfm2_vl_1_6b --devices 1 2 4 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


def build_weights(arch: str, folder: Path, shrink: bool = False) -> Path:
    """Real-size config + processor + random weights (bf16 on CUDA) saved with save_pretrained."""
    from vlm_lightning.replicas.real_size import build_model, build_real_folder

    if (folder / "model.safetensors.index.json").exists() or (folder / "model.safetensors").exists():
        return folder
    build_real_folder(arch, folder, shrink=shrink)
    from transformers import AutoConfig

    cuda = torch.cuda.is_available()
    model = build_model(
        AutoConfig.from_pretrained(folder),
        device="cuda" if cuda else "cpu",
        dtype=torch.bfloat16 if cuda else torch.float32,
    )
    model.save_pretrained(folder)
    del model
    if cuda:
        torch.cuda.empty_cache()
    return folder


def run(cmd: list[str], log: Path) -> str:
    """Run a CLI command, keep its output in ``log``, fail loudly."""
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    print(f"  exit {proc.returncode} after {time.time() - start:.0f} s", flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        raise SystemExit(proc.returncode)
    return proc.stdout


def line_value(output: str, prefix: str) -> str:
    """The rest of the first output line starting with ``prefix``."""
    return next(line[len(prefix) :].strip() for line in output.splitlines() if line.startswith(prefix))


PROFILED = {  # action name suffix -> column
    "step_period": "step",
    "run_training_batch": "batch",
    "train_dataloader_next": "next batch",
    ".training_step": "forward",
    ".backward": "backward",
    "NonFiniteGuard.on_before_optimizer_step": "guard",
    "VLMFineTuner.optimizer_step": "optimizer step (incl. forward+backward closure)",
}


def rank_profiles(folder: Path) -> dict[str, dict[str, float]]:
    """``{rank: {column: median ms}}`` from the per-rank ``SteadyStateProfiler`` reports in ``folder``."""
    ranks: dict[str, dict[str, float]] = {}
    for path in sorted(folder.glob("fit-*.json")):
        report = json.loads(path.read_text())
        actions = report["actions"]
        row = {}
        for suffix, column in PROFILED.items():
            match = [a for a in actions if a.endswith(suffix)]
            if match:
                row[column] = round(actions[match[0]]["median_ms"], 2)
        ranks[str(report["rank"] if report["rank"] is not None else 0)] = row
    return ranks


def profile_table(results: list[dict]) -> list[str]:
    """Markdown rows: median host ms per step phase, one row per (run, rank)."""
    columns = list(PROFILED.values())
    lines = [
        "Median host ms per optimizer step after the warm-up (`--profile`; a phase that waits for the GPU or "
        "for other ranks is long):",
        "",
        "| GPUs | rank | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for r in results:
        for rank, row in r.get("profile", {}).items():
            cells = [f"{row[c]:.1f}" if c in row else "-" for c in columns]
            lines.append(f"| {r['world_size']} | {rank} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="lfm2_vl_1_6b")
    parser.add_argument("--config", default="configs/receipt_lfm2.yaml")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=8, help="per-GPU batch")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--samples",
        type=int,
        help="synthetic receipts (default: enough that every run's timed steps fall in its first epoch)",
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="optimizer steps before the throughput clock starts"
    )
    parser.add_argument("--no-test", action="store_true", help="skip the 1-vs-N GPU test comparison")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="per-rank host-time profile of the steps after --warmup (SteadyStateProfiler): which part waits",
    )
    parser.add_argument(
        "--tag", default="", help="name suffix of the run folders (several variants, one workdir)"
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=1,
        help="fit runs per device count, interleaved (1, 2, 1, 2, ...); the table shows the median run",
    )
    parser.add_argument(
        "--ddp-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="DistributedDataParallel keyword arguments for the multi-GPU runs (Lightning's DDPStrategy), "
        "e.g. static_graph=true gradient_as_bucket_view=true; the 1-GPU run keeps no wrapper",
    )
    parser.add_argument(
        "--data-kind",
        default="receipts",
        choices=("receipts", "formulas", "captchas"),
        help="synthetic data written for the runs (formulas: short LaTeX answers, where packing matters most)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ddp_scaling"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--shrink", action="store_true", help="CPU dry run on a shrunken architecture")
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="CLI arguments added to every fit/test command, e.g. --extra --data.group_by_length true",
    )
    args = parser.parse_args()
    for option in args.ddp_options:
        if "=" not in option:
            parser.error(f"--ddp-options takes KEY=VALUE pairs, got {option!r}")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    from vlm_lightning.data.synthetic import write_dataset

    # an epoch boundary inside the timed window (loader restart, epoch-end hooks) would hit only the
    # runs with more GPUs (fewer steps per epoch): size the data so that every run stays in epoch 0
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    needed = -(-(args.steps + 1) * args.batch_size * max(args.devices) * 10 // 9) + 16
    if args.samples is not None and args.samples < needed:
        parser.error(
            f"--samples {args.samples} puts an epoch boundary inside the timed steps of the "
            f"{max(args.devices)}-GPU run; use at least {needed} (or leave --samples out)"
        )
    args.samples = args.samples or needed
    model_dir = build_weights(args.arch, work / args.arch, shrink=args.shrink)
    data = work / f"{args.data_kind}_{args.samples}"
    if not (data / "train.jsonl").exists():
        write_dataset(args.data_kind, data, args.samples, seed=0, split="train=0.9,val=0.05,test=0.05")
    common = [
        "--config",
        args.config,
        "--model.name_or_path",
        str(model_dir),
        "--data.train",
        str(data / "train.jsonl"),
        "--data.val",
        str(data / "val.jsonl"),
        "--data.test",
        str(data / "test.jsonl"),
        "--data.batch_size",
        str(args.batch_size),
        "--data.eval_batch_size",
        "8",
        "--data.num_workers",
        "4",
        "--model.generate_max_new_tokens",
        "64",
        "--trainer.accumulate_grad_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    throughput = [
        "--trainer.callbacks+=vlm_lightning.callbacks.throughput.Throughput",
        f"--trainer.callbacks.warmup_steps={args.warmup}",
    ]
    common += args.extra
    if args.shrink:
        common += [
            "--trainer.accelerator",
            "cpu",
            "--trainer.precision",
            "32-true",
            "--model.dtype",
            "float32",
            "--data.num_workers",
            "0",
            "--data.image_max_tokens",
            "64",
            "--data.max_image_side",
            "256",
        ]

    def strategy(n: int) -> list[str]:  # a strategy in --extra wins
        if any(a.startswith("--trainer.strategy") for a in args.extra):
            return []
        if n == 1:
            return ["--trainer.strategy", "auto"]
        if not args.ddp_options:
            return ["--trainer.strategy", "ddp"]
        # jsonargparse passes DDPStrategy's **kwargs on to DistributedDataParallel as dict_kwargs
        options = [f"--trainer.strategy.dict_kwargs.{option}" for option in args.ddp_options]
        return ["--trainer.strategy", "lightning.pytorch.strategies.DDPStrategy", *options]

    def fit_once(n: int, rep: int) -> tuple[dict, str]:
        name = f"{args.tag}_{n}" + (f"_r{rep}" if args.reps > 1 else "")
        root = work / f"runs{name}"
        profile = (
            [
                "--trainer.profiler=vlm_lightning.training.profiling.SteadyStateProfiler",
                f"--trainer.profiler.skip={args.warmup}",
                f"--trainer.profiler.dirpath={root / 'profile'}",
            ]
            if args.profile
            else []
        )
        out = run(
            [
                sys.executable,
                "-m",
                "vlm_lightning",
                "fit",
                *common,
                "--trainer.devices",
                str(n),
                *strategy(n),
                "--trainer.max_steps",
                str(args.steps),
                "--trainer.limit_val_batches",
                "0",
                "--trainer.default_root_dir",
                str(root),
                *throughput,
                *profile,
            ],
            work / f"fit{name}.log",
        )
        result = json.loads(line_value(out, "[vlm_lightning] throughput:"))
        if args.profile:
            result["profile"] = rank_profiles(root / "profile")
        log_text = (work / f"fit{name}.log").read_text()
        result["recompilations"] = log_text.count("Recompiling function")  # with TORCH_LOGS=recompiles
        chosen = "best" if "[vlm_lightning] best checkpoint:" in out else "last"  # last: no validation ran
        return result, line_value(out, f"[vlm_lightning] {chosen} checkpoint:")

    runs: dict[int, list[dict]] = {n: [] for n in args.devices}
    ckpt = None
    for rep in range(args.reps):  # interleaved: a slow phase of the machine hits every device count
        for n in args.devices:
            result, best = fit_once(n, rep)
            runs[n].append(result)
            ckpt = ckpt or best
    results = []
    for n in args.devices:
        ranked = sorted(runs[n], key=lambda r: r["samples_per_s"])
        median = dict(ranked[(len(ranked) - 1) // 2])  # the lower middle run for an even count
        median["all_samples_per_s"] = [round(r["samples_per_s"], 1) for r in runs[n]]
        results.append(median)
    validation: dict[int, dict] = {}
    predictions: dict[int, dict[str, str]] = {}
    for n in [] if args.no_test else sorted({1, max(args.devices)}):
        out = run(
            [
                sys.executable,
                "-m",
                "vlm_lightning",
                "test",
                *common,
                "--trainer.devices",
                str(n),
                *strategy(n),
                "--ckpt_path",
                ckpt,
                "--trainer.default_root_dir",
                str(work / f"test{args.tag}_{n}"),
            ],
            work / f"test{args.tag}_{n}.log",
        )
        metrics = json.loads(Path(line_value(out, "[vlm_lightning] metrics:")).read_text())
        validation[n] = {k: v for k, v in metrics.items() if k.startswith("test/") or k == "num_samples"}
        rows = Path(line_value(out, "[vlm_lightning] predictions:")).read_text().splitlines()
        predictions[n] = {json.loads(r)["id"]: json.loads(r)["prediction"] for r in rows}
    base = results[0]["samples_per_s"]
    lines = [
        f"### DDP scaling: {args.arch} (random weights), LoRA, bf16-mixed, per-GPU batch {args.batch_size}",
        "",
        f"Device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}; torch {torch.__version__}; command: "
        f"`python scripts/ddp_scaling.py --arch {args.arch} --config {args.config} --data-kind {args.data_kind} "
        f"--devices {' '.join(map(str, args.devices))} "
        f"--steps {args.steps} --warmup {args.warmup} --batch-size {args.batch_size} --samples {args.samples}"
        + (f" --reps {args.reps}" if args.reps > 1 else "")
        + (f" --ddp-options {' '.join(args.ddp_options)}" if args.ddp_options else "")
        + (f" --extra {' '.join(args.extra)}" if args.extra else "")
        + "`",
        "",
        "| GPUs | samples/s | tokens/s | speed-up vs 1 GPU | timed steps | seconds | recompilations "
        "| peak GiB per GPU | samples/s of each rep |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['world_size']} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['samples_per_s'] / base:.2f}x | {r['timed_optimizer_steps']} | {r['seconds']:.1f} | "
            f"{r['recompilations']} | {', '.join(map(str, r.get('peak_gib_per_device', ['-'])))} | "
            f"{', '.join(map(str, r['all_samples_per_s']))} |"
        )
    if args.profile:
        lines += ["", *profile_table(results)]
    if validation:
        keys = sorted(set(validation[1]) & set(validation[max(validation)]))
        equal = all(abs(validation[1][k] - validation[max(validation)][k]) < 1e-9 for k in keys)
        lines += [
            "",
            f"Test of the same checkpoint on 1 and {max(validation)} GPU(s): "
            f"num_samples {validation[1]['num_samples']} vs {validation[max(validation)]['num_samples']}; "
            f"all {len(keys)} metrics equal: {equal}; identical predictions: "
            f"{sum(predictions[1][i] == predictions[max(predictions)].get(i) for i in predictions[1])}"
            f"/{len(predictions[1])} (rows written once per sample: {len(predictions[max(predictions)])}).",
            "",
        ]
    report = "\n".join(lines)
    print(report)
    print(json.dumps({"throughput": results, "test": validation}, indent=1))
    if args.out:
        with args.out.open("a") as fh:
            fh.write("\n" + report + "\n")


if __name__ == "__main__":
    main()
