"""Baseline vs fine-tuned: evaluate the base model zero-shot and a checkpoint on the same split.

    python -m vlm_lightning.evaluation.compare --config configs/quickstart.yaml --ckpt_path RUN/best.ckpt \
        [--out comparison.md] [-- extra CLI arguments such as --data.test other.jsonl]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vlm_lightning.cli.tool_parser import ToolArgumentParser
from vlm_lightning.metrics.registry import metric_names

METRICS_LINE = "[vlm_lightning] metrics:"


def run_test(config: str | None, ckpt_path: str | None, extra: list[str]) -> dict:
    """Run ``python -m vlm_lightning test`` in a fresh process and return its metrics.json."""
    cmd = [sys.executable, "-m", "vlm_lightning", "test", *(["--config", config] if config else []), *extra]
    if ckpt_path:
        cmd += ["--ckpt_path", ckpt_path]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"test run failed (exit {proc.returncode})")
    for line in proc.stdout.splitlines():
        if line.startswith(METRICS_LINE):
            path = Path(line[len(METRICS_LINE) :].strip())
            return {"path": str(path), **json.loads(path.read_text())}
    raise SystemExit("the test run printed no metrics.json path")


def comparison_table(baseline: dict, tuned: dict) -> str:
    """Markdown table: baseline, fine-tuned and delta for every scalar test metric."""
    keys = [k for k, v in tuned.items() if k.startswith("test/") and isinstance(v, (int, float))]
    lines = ["| metric | baseline | fine-tuned | delta |", "|---|---|---|---|"]
    for key in keys:
        b, t = baseline.get(key), tuned[key]
        b_text = f"{b:.4f}" if isinstance(b, (int, float)) else "-"
        delta = f"{t - b:+.4f}" if isinstance(b, (int, float)) else "-"
        lines.append(f"| {key[5:]} | {b_text} | {t:.4f} | {delta} |")
    return "\n".join(lines) + "\n"


# settings both sides must share for their deltas to mean something
SHARED_SETTINGS = ("generate_max_new_tokens", "metrics")


def check_same_evaluation(baseline: dict, tuned: dict) -> None:
    """Refuse to compare runs that generated or scored differently (their deltas would mix budgets)."""
    base, fine = dict(baseline.get("settings", {})), dict(tuned.get("settings", {}))
    for side in (base, fine):  # runs written before the names were recorded unset mean exact_match
        if "metrics" in side:
            side["metrics"] = metric_names(side["metrics"])
    differ = [
        f"{key}: baseline {base.get(key)!r}, fine-tuned {fine.get(key)!r}"
        for key in SHARED_SETTINGS
        if base.get(key) != fine.get(key)
    ]
    if baseline.get("num_samples") != tuned.get("num_samples"):
        differ.append(
            f"samples: baseline {baseline.get('num_samples')}, fine-tuned {tuned.get('num_samples')}"
        )
    if differ:
        raise SystemExit(
            "vlm_lightning: error: the two test runs were not evaluated alike: " + "; ".join(differ)
        )


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = ToolArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="the run's YAML (other CLI arguments go after --)")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--out", default=None, help="markdown file (default: next to the fine-tuned metrics)")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    baseline = run_test(args.config, None, extra)
    tuned = run_test(args.config, args.ckpt_path, extra)
    check_same_evaluation(baseline, tuned)
    table = comparison_table(baseline, tuned)
    settings = tuned.get("settings", {})
    shared = ", ".join(f"{key} {settings.get(key)!r}" for key in SHARED_SETTINGS)
    out = Path(args.out) if args.out else Path(tuned["path"]).parent / "comparison.md"
    out.write_text(
        f"# Baseline vs fine-tuned\n\ncheckpoint: `{args.ckpt_path}`\n\nboth sides: {shared}, "
        f"{tuned.get('num_samples')} samples\n\n{table}"
    )
    print(table)
    print(f"[vlm_lightning] comparison: {out}")


if __name__ == "__main__":
    main()
