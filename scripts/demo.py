"""The offline demo: evaluate the untrained replica, fine-tune it, evaluate the best checkpoint.

Run by ``make demo`` after the replica and data exist. Prints both metric sets and where the
predictions are.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from vlm_lightning.evaluation.compare import comparison_table, run_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    args = parser.parse_args()
    start = time.time()
    baseline = run_test(args.config, None, [])
    cmd = [sys.executable, "-m", "vlm_lightning", "fit", "--config", args.config]
    print("$", " ".join(cmd), flush=True)
    fit = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(fit.stdout[-3000:])
    if fit.returncode != 0:
        sys.stderr.write(fit.stderr[-6000:])
        raise SystemExit(fit.returncode)
    prefix = "[vlm_lightning] best checkpoint:"
    best = next(line[len(prefix) :].strip() for line in fit.stdout.splitlines() if line.startswith(prefix))
    tuned = run_test(args.config, best, [])
    table = comparison_table(baseline, tuned)
    out = Path(tuned["path"]).parent / "comparison.md"
    out.write_text(f"# Untrained replica vs fine-tuned\n\n{table}")
    print("\n" + table)
    print(f"best checkpoint: {best}")
    print(f"predictions:     {Path(tuned['path']).parent / 'predictions.jsonl'}")
    print(f"metrics:         {tuned['path']}")
    print(f"demo wall time (evaluate, fit, evaluate): {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
