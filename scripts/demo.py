"""The offline demo: evaluate the untrained replica, fine-tune it, evaluate the best checkpoint.

Run by ``make demo`` after the replica and data exist. Prints both metric sets and where the
predictions are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

KEYS = ("test/json_valid_rate", "test/exact_match", "test/json_field_f1", "test/partial_match",
        "test/field_acc/store_name", "test/field_acc/date", "test/field_acc/total", "test/field_acc/currency")


def run(args: list[str]) -> str:
    """Run the CLI, echo its output, return it."""
    cmd = [sys.executable, "-m", "vlm_lightning", *args]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, text=True, capture_output=True)
    sys.stdout.write(proc.stdout[-4000:])
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-8000:])
        raise SystemExit(proc.returncode)
    return proc.stdout


def metrics_path(output: str) -> Path:
    """The metrics.json path the test command printed."""
    for line in output.splitlines():
        if line.startswith("[vlm_lightning] metrics:"):
            return Path(line.split(":", 1)[1].strip())
    raise SystemExit("test did not report a metrics.json path")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    args = parser.parse_args()
    start = time.time()
    base = json.loads(metrics_path(run(["test", "--config", args.config])).read_text())
    fit_out = run(["fit", "--config", args.config])
    best = next(line.split(":", 1)[1].strip() for line in fit_out.splitlines()
                if line.startswith("[vlm_lightning] best checkpoint:"))
    test_out = run(["test", "--config", args.config, "--ckpt_path", best])
    tuned_path = metrics_path(test_out)
    tuned = json.loads(tuned_path.read_text())
    print("\n| metric | untrained replica | fine-tuned |\n|---|---|---|")
    for key in KEYS:
        if key in tuned:
            print(f"| {key[5:]} | {base.get(key, float('nan')):.3f} | {tuned[key]:.3f} |")
    print(f"\nbest checkpoint: {best}")
    print(f"predictions: {tuned_path.parent / 'predictions.jsonl'}")
    print(f"demo wall time (evaluate + fit + evaluate): {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
