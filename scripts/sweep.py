"""Grid sweep over LoRA / optimizer settings: one ``fit`` + ``test`` per point, results table and charts.

Sweep file (YAML)::

    base_config: configs/quickstart.yaml
    grid:                                  # cartesian product, in this order
      model.lora.r: [4, 8]
      model.lora.alpha: [8, 16]            # or alpha_ratio: [1, 2]  (alpha = ratio * r)
      # model.lora.dropout: [0.0, 0.1]
      # model.optimizer.init_args.lr: [1e-4, 3e-4]
    extra_args: [--trainer.max_steps=3]    # CLI overrides applied to every point
    out: runs/sweep

Usage::

    python scripts/sweep.py configs/sweeps/quickstart.yaml [--out DIR] [--metric test/json_valid_rate]
        [-- --data.train my.jsonl ...]     # arguments after `--` are appended to extra_args

Each point runs ``python -m vlm_lightning fit`` in ``<out>/<point>/fit`` and then ``test --ckpt_path <best>``
in ``<out>/<point>/test`` (subprocesses; logs in ``<out>/<point>/{fit,test}.log``). A finished point has
``<out>/<point>/result.json`` and is skipped when the sweep is run again with the same settings (the base
config's content, extra_args, the arguments after ``--`` and the point's own); a point whose settings changed,
or an unfinished one, is started over. ``base_config`` is relative to the sweep file.
Writes ``<out>/results.csv``, ``<out>/results.md`` and ``<out>/chart_<param>.png`` (the metric vs each swept
parameter, one line per combination of the other parameters).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ALIASES: dict[str, str] = {
    "model.lora.r": "r",
    "model.lora.alpha": "alpha",
    "model.lora.dropout": "dropout",
    "model.optimizer.init_args.lr": "lr",
    "alpha_ratio": "alpha_ratio",
}
FIXED_COLUMNS = ["point", "status", "r", "alpha", "dropout", "lr", "trainable_params", "trainable_pct"]
BEST_RE = re.compile(r"\[vlm_lightning\] (?:best|last) checkpoint: (.+)")  # last: no validation ran
METRICS_RE = re.compile(r"\[vlm_lightning\] metrics: (.+)")
TRAINABLE_RE = re.compile(
    r"\[vlm_lightning\].*trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: ([\d.eE+-]+)"
)


class SweepError(RuntimeError):
    """The sweep file is invalid."""


# --- the grid ----------------------------------------------------------------------------------
def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and validate a sweep file."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: expected a mapping with base_config, grid, extra_args, out")
    unknown = set(spec) - {"base_config", "grid", "extra_args", "out", "metric"}
    if unknown:
        raise SweepError(f"{path}: unknown keys {sorted(unknown)}")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"{path}: 'grid' must map parameter names to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key} must be a non-empty list")
    if "alpha_ratio" in grid and "model.lora.alpha" in grid:
        raise SweepError(f"{path}: grid has both model.lora.alpha and alpha_ratio; keep one")
    if not spec.get("base_config"):
        raise SweepError(f"{path}: 'base_config' is required")
    spec.setdefault("extra_args", [])
    spec.setdefault("out", "runs/sweep")
    return spec


def resolve_base_config(sweep_path: str | Path, base_config: str) -> Path:
    """``base_config`` relative to the sweep file (or, for older sweep files, the working directory)."""
    given = Path(base_config)
    candidates = [given] if given.is_absolute() else [Path(sweep_path).parent / given, given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise SweepError(
        f"{sweep_path}: base_config '{base_config}' not found (looked for {looked}); "
        "give it relative to the sweep file"
    )


def settings_key(base_config_path: Path, common_args: Sequence[str], overrides: Sequence[str]) -> str:
    """Fingerprint of everything a point's result depends on that the sweep controls."""
    payload = json.dumps(
        {"base_config": base_config_path.read_text(), "args": [*common_args, *overrides]}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def short_name(key: str) -> str:
    """``model.lora.r`` -> ``r``; other dotted keys -> their last component."""
    return ALIASES.get(key, key.rsplit(".", 1)[-1])


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def point_name(point: dict[str, Any]) -> str:
    """Folder-safe name of a grid point, e.g. ``r4_alpha8``."""
    parts = [f"{short_name(k)}{_format_value(v)}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", "_".join(parts))


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid, in file order."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _override(args: Sequence[str], key: str) -> str | None:
    """Last value given to ``--key`` in an argument list (``--key v`` or ``--key=v``)."""
    found = None
    for i, token in enumerate(args):
        if token == f"--{key}" and i + 1 < len(args):
            found = args[i + 1]
        elif token.startswith(f"--{key}="):
            found = token.split("=", 1)[1]
    return found


def base_value(base_config: dict[str, Any], extra_args: Sequence[str], key: str) -> Any:
    """Value of ``key`` for every point before the grid applies: extra_args win over the base config."""
    given = _override(extra_args, key)
    return yaml.safe_load(given) if given is not None else _lookup(base_config, key)


def point_args(point: dict[str, Any], base_config: dict[str, Any], extra_args: Sequence[str]) -> list[str]:
    """CLI overrides of one point (``alpha_ratio`` becomes ``--model.lora.alpha round(ratio * r)``)."""
    args: list[str] = []
    for key, value in point.items():
        if key == "alpha_ratio":
            r = point.get("model.lora.r", base_value(base_config, extra_args, "model.lora.r"))
            if r is None:
                raise SweepError(
                    "alpha_ratio needs model.lora.r (in the grid, the base config or extra_args)"
                )
            args.append(f"--model.lora.alpha={int(round(float(value) * int(r)))}")
        else:
            args.append(f"--{key}={_format_value(value) if isinstance(value, float) else value}")
    return args


# --- running one point -------------------------------------------------------------------------
def run_logged(cmd: list[str], log_path: Path) -> tuple[int, str]:
    """Run ``cmd``, stream its output into ``log_path``, return (exit code, stdout + stderr)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log.write(proc.stdout)
    return proc.returncode, proc.stdout


def parse_trainable(text: str) -> tuple[int | None, float | None]:
    """Trainable parameter count and percentage from the ``[vlm_lightning] ... trainable params`` line."""
    match = TRAINABLE_RE.search(text)
    if not match:
        return None, None
    return int(match.group(1).replace(",", "")), float(match.group(3))


def _resolved_settings(run_dir: Path) -> dict[str, Any]:
    """r, alpha, dropout and lr from the run's resolved ``config.yaml``."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return {}
    config = yaml.safe_load(config_file.read_text()) or {}
    return {
        "r": _lookup(config, "model.lora.r"),
        "alpha": _lookup(config, "model.lora.alpha"),
        "dropout": _lookup(config, "model.lora.dropout"),
        "lr": _lookup(config, "model.optimizer.init_args.lr"),
    }


def run_point(
    name: str,
    point: dict[str, Any],
    base_config_path: str,
    common_args: list[str],
    overrides: list[str],
    out: Path,
    python: str = sys.executable,
    key: str | None = None,
) -> dict[str, Any]:
    """Fit then test one point; write and return its result (``status`` ``ok`` or ``failed``)."""
    folder = out / name
    if folder.exists():  # an unfinished earlier attempt: start over
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    result: dict[str, Any] = {
        "point": name, "grid": point, "args": overrides, "status": "failed", "settings_key": key,
    }  # fmt: skip
    base = [python, "-m", "vlm_lightning"]
    fit_cmd = [
        *base, "fit", "--config", base_config_path, *common_args, *overrides,
        f"--trainer.default_root_dir={folder / 'fit'}",
    ]  # fmt: skip
    code, text = run_logged(fit_cmd, folder / "fit.log")
    trainable, pct = parse_trainable(text)
    result.update(trainable_params=trainable, trainable_pct=pct)
    best = BEST_RE.findall(text)
    if code != 0 or not best:
        result["error"] = f"fit failed (exit {code}); see {folder / 'fit.log'}"
        return _finish(result, folder, start)
    best_ckpt = Path(best[-1].strip())
    result["best_checkpoint"] = str(best_ckpt)
    result.update({k: v for k, v in _resolved_settings(best_ckpt.parent).items() if v is not None})
    test_cmd = [
        *base, "test", "--config", base_config_path, *common_args, *overrides,
        f"--trainer.default_root_dir={folder / 'test'}", "--ckpt_path", str(best_ckpt),
    ]  # fmt: skip
    code, text = run_logged(test_cmd, folder / "test.log")
    paths = METRICS_RE.findall(text)
    metrics_file = Path(paths[-1].strip()) if paths else None
    if code != 0 or metrics_file is None or not metrics_file.is_file():
        result["error"] = f"test failed (exit {code}); see {folder / 'test.log'}"
        return _finish(result, folder, start)
    metrics = json.loads(metrics_file.read_text())
    result["metrics"] = {k: v for k, v in metrics.items() if k.startswith("test/") and _is_number(v)}
    result["metrics_file"] = str(metrics_file)
    result["status"] = "ok"
    return _finish(result, folder, start)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finish(result: dict[str, Any], folder: Path, start: float) -> dict[str, Any]:
    result["wall_time_s"] = round(time.perf_counter() - start, 2)
    target = folder / ("result.json" if result["status"] == "ok" else "failed.json")
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(target)  # atomic: a half-written result.json never marks a point finished
    return result


# --- tables and charts -------------------------------------------------------------------------
def metric_names(results: list[dict[str, Any]]) -> list[str]:
    """Test metric names in first-seen order."""
    names: list[str] = []
    for result in results:
        for key in result.get("metrics", {}):
            if key not in names:
                names.append(key)
    return names


def result_rows(results: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """One flat row per point (the columns of results.csv)."""
    rows = []
    for result in results:
        row = {c: result.get(c) for c in FIXED_COLUMNS}
        for name in metrics:
            row[name] = result.get("metrics", {}).get(name)
        row["wall_time_s"] = result.get("wall_time_s")
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def write_tables(results: list[dict[str, Any]], out: Path, metric: str | None) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md``."""
    metrics = metric_names(results)
    rows = result_rows(results, metrics)
    columns = [*FIXED_COLUMNS, *metrics, "wall_time_s"]
    csv_path = out / "results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Sweep results ({len(results)} points)", ""]
    ok = [r for r in results if r.get("status") == "ok" and metric in r.get("metrics", {})]
    if metric and ok:
        best = max(ok, key=lambda r: r["metrics"][metric])
        lines += [f"Best by `{metric}`: **{best['point']}** ({best['metrics'][metric]:.4g}).", ""]
    failed = [r["point"] for r in results if r.get("status") != "ok"]
    if failed:
        lines += [f"Failed points: {', '.join(failed)} (see their fit.log / test.log).", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    md_path = out / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def write_charts(
    results: list[dict[str, Any]], grid: dict[str, list[Any]], out: Path, metric: str
) -> list[Path]:
    """One ``chart_<param>.png`` per swept parameter: ``metric`` vs the value, a line per other-params combo."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in results if r.get("status") == "ok" and metric in r.get("metrics", {})]
    paths: list[Path] = []
    for key in grid:
        others = [k for k in grid if k != key]
        numeric = all(_is_number(v) for v in grid[key])
        ticks = sorted(grid[key], key=float) if numeric else list(grid[key])
        position = {_format_value(v): (float(v) if numeric else float(i)) for i, v in enumerate(ticks)}
        groups: dict[str, list[tuple[float, float]]] = {}
        for result in ok:
            point = result["grid"]
            label = ", ".join(f"{short_name(k)}={_format_value(point[k])}" for k in others) or metric
            x = position[_format_value(point[key])]
            groups.setdefault(label, []).append((x, float(result["metrics"][metric])))
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for label, points in groups.items():
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=label)
        values = [position[_format_value(v)] for v in ticks]
        if numeric and len(values) > 2 and values[0] > 0 and values[-1] / values[0] >= 10:
            ax.set_xscale("log")
        ax.set_xticks(values)
        ax.set_xticklabels([_format_value(v) for v in ticks])
        ax.set_xlabel(short_name(key) if key == "alpha_ratio" else f"{short_name(key)} ({key})")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {short_name(key)}", fontsize=10)
        ax.grid(alpha=0.3)
        if groups:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finished point", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        path = out / f"chart_{re.sub(r'[^A-Za-z0-9_]', '_', short_name(key))}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


# --- main --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Script options, plus the CLI arguments given after ``--``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        description="Grid sweep: fit + test per point, results.csv / results.md / charts.",
        epilog="Arguments after `--` are passed to every fit and test (after the sweep file's extra_args).",
    )
    parser.add_argument("sweep", help="sweep YAML file (base_config, grid, extra_args, out)")
    parser.add_argument("--out", help="output folder (default: the sweep file's `out`)")
    parser.add_argument("--base-config", help="override the sweep file's base_config")
    parser.add_argument(
        "--metric", help="test metric for the charts and the best point (default: the first test metric)"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter running vlm_lightning")
    parser.add_argument("--dry-run", action="store_true", help="print the points and their arguments only")
    return parser.parse_args(argv), passthrough


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; exit code 1 when a point failed."""
    args, passthrough = parse_args(argv)
    try:
        spec = load_sweep(args.sweep)
    except (OSError, yaml.YAMLError, SweepError) as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    try:
        base_config_file = (
            Path(args.base_config)
            if args.base_config
            else resolve_base_config(args.sweep, spec["base_config"])
        )
        if not base_config_file.is_file():
            raise SweepError(f"--base-config {args.base_config}: file not found")
        base_config = yaml.safe_load(base_config_file.read_text()) or {}
    except (OSError, yaml.YAMLError, SweepError) as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    base_config_path = str(base_config_file)
    common = [str(a) for a in spec["extra_args"]] + passthrough
    out = Path(args.out or spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    points = grid_points(spec["grid"])
    results: list[dict[str, Any]] = []
    for index, point in enumerate(points, 1):
        name = point_name(point)
        overrides = point_args(point, base_config, common)
        tag = f"[sweep] {index}/{len(points)} {name}"
        done = out / name / "result.json"
        key = settings_key(base_config_file, common, overrides)
        if done.is_file():
            earlier = json.loads(done.read_text())
            if earlier.get("settings_key") == key:
                print(f"{tag}: finished earlier, skipped ({done})", flush=True)
                results.append(earlier)
                continue
            print(f"{tag}: finished earlier with other settings, running again", flush=True)
        if args.dry_run:
            print(f"{tag}: {' '.join(overrides)}")
            continue
        print(f"{tag}: running {' '.join(overrides)}", flush=True)
        result = run_point(name, point, base_config_path, common, overrides, out, python=args.python, key=key)
        summary = result.get("error") or ", ".join(
            f"{k}={v:.4g}" for k, v in list(result["metrics"].items())[:3]
        )
        print(f"{tag}: {result['status']} in {result['wall_time_s']:.0f}s: {summary}", flush=True)
        results.append(result)
    if args.dry_run:
        return 0
    metric = args.metric or spec.get("metric") or next(iter(metric_names(results)), None)
    csv_path, md_path = write_tables(results, out, metric)
    print(f"[sweep] results: {csv_path}\n[sweep] table: {md_path}")
    if metric:
        missing = [r["point"] for r in results if r.get("status") == "ok" and metric not in r["metrics"]]
        if missing and len(missing) == sum(r.get("status") == "ok" for r in results):
            print(
                f"sweep: error: metric {metric!r} not in the test metrics {metric_names(results)}",
                file=sys.stderr,
            )
            return 2
        for path in write_charts(results, spec["grid"], out, metric):
            print(f"[sweep] chart: {path}")
    failed = [r["point"] for r in results if r.get("status") != "ok"]
    if failed:
        print(
            f"[sweep] {len(failed)} point(s) failed: {', '.join(failed)}; rerun to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
