"""The run report (``report.md`` and ``plots/*.png``) from one or more runs, and ``cll-ray report``."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cll_ray.io import atomic_write_text
from cll_ray.report.plots import (
    CURVE_KEYS,
    CURVE_METRICS,
    HEATMAP_METRICS,
    metric_label,
    plot_curves,
    plot_forgetting,
    plot_heatmap,
)
from cll_ray.report.results import (
    accuracy_matrix,
    collect_method_folders,
    collect_results,
    copy_results,
    expand_orders,
    read_configs,
    runs_by_method,
    task_order,
)
from cll_ray.report.tables import (
    MISSING,
    SERIES_METRICS,
    across_runs_table,
    compact_table,
    config_tables,
    final_table,
    growth_table,
    load_paper,
    results_table,
    series_table,
)

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
RUN_INFO_FILE = "run_info.json"  # written by `cll-ray run`: its wall time and the versions it ran with
VERSIONED = {"cll-ray": "cll-ray", "torch": "torch", "ray": "ray", "open_clip": "open_clip_torch"}


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label.replace("/", "__")).strip("_") or "method"


def build_report(run_dirs: Sequence[str | Path] | str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/plots/*.png`` for one or more runs; return report.md's path.

    ``out_dir`` defaults to the (first) run directory. Plots: the t2i_r1 and i2t_r1 heatmaps of every method,
    AA and F curves over tasks for t2i_r1 and i2t_r1, and each method's forgetting per language. Every file is
    written atomically.
    """
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise ValueError("no run directory given")
    return _write_report(collect_results(run_dirs), run_dirs, out_dir)


def record_run_info(run_dir: str | Path, seconds: float) -> Path:
    """Add one invocation of `cll-ray run` (``seconds`` of wall time; a resumed run adds each part) and the
    versions it ran with to ``run_dir/run_info.json``, which the report shows."""
    import json

    path = Path(run_dir) / RUN_INFO_FILE
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    parts = [*info.get("wall_seconds", []), round(float(seconds), 1)]
    atomic_write_text(path, json.dumps({"wall_seconds": parts, "versions": versions()}, indent=2))
    return path


def versions() -> dict[str, str]:
    """The versions of cll-ray and of what it runs on (installed distributions; nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name, dist in VERSIONED.items():
        try:
            out[name] = version(dist)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _run_info_lines(run_dirs: Sequence[str | Path], results: dict[str, list[dict]]) -> list[str]:
    """Wall time and versions, as the run recorded them (run_info.json), else what is known without them."""
    import json

    lines = []
    recorded = {}
    for d in run_dirs:
        path = Path(d).expanduser() / RUN_INFO_FILE
        if path.is_file():
            try:
                recorded[Path(d).expanduser().resolve().name] = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ValueError(f"{path}: not valid JSON ({e}); remove it or run again") from e
    for name, info in recorded.items():
        parts = info.get("wall_seconds", [])
        resumed = f" in {len(parts)} parts (resumed)" if len(parts) > 1 else ""
        where = f" ({name})" if len(run_dirs) > 1 else ""
        lines.append(f"- wall time{where}: {sum(parts):.0f} s{resumed}")
    if not recorded:
        task_times = ", ".join(f"{label} {sum(float(r.get('seconds') or 0) for r in rows):.0f} s"
                               for label, rows in results.items())
        lines.append(f"- training time (sum of the task times; the run recorded no wall time): {task_times}")
    found = next((info["versions"] for info in recorded.values() if info.get("versions")), None)
    shown = found or versions()
    source = "" if found else " (of this report's build: the run recorded none)"
    lines.append(f"- versions{source}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    return lines


def _write_report(results: dict[str, list[dict]], run_dirs: Sequence[str | Path], out_dir) -> Path:
    out = Path(out_dir if out_dir is not None else run_dirs[0]).expanduser()
    plots = out / PLOTS_DIR

    heatmaps: dict[str, dict[str, Path]] = {label: {} for label in results}  # label -> metric -> path
    for metric in HEATMAP_METRICS:
        values = np.concatenate([accuracy_matrix(rows, metric).ravel() for rows in results.values()])
        values = values[np.isfinite(values)]
        lo, hi = (float(values.min()), float(values.max())) if values.size else (None, None)
        for label, rows in results.items():  # one colour scale for all methods: the colours compare
            heatmaps[label][metric] = plot_heatmap(
                rows,
                metric,
                plots / f"heatmap_{_slug(label)}_{metric}.png",
                title=f"{label}: accuracy matrix, {metric_label(metric)}",
                vmin=lo,
                vmax=hi,
            )
    curves = [
        (f"{key}, {metric}", plot_curves(results, metric, key, plots / f"curves_{key}_{metric}.png"))
        for metric in CURVE_METRICS
        for key in CURVE_KEYS
    ]
    forgetting = [(label, plot_forgetting(rows, plots / f"forgetting_{_slug(label)}.png",
                                          f"{label}: each language after its own task and after the last"))
                  for label, rows in results.items()]

    def link(path: Path) -> str:
        return path.relative_to(out).as_posix()

    names = ", ".join(Path(d).expanduser().resolve().name for d in run_dirs)
    orders: dict[tuple[str, ...], list[str]] = {}
    for label, rows in results.items():
        orders.setdefault(tuple(task_order(rows)), []).append(label)
    lines = [f"# CLL report: {names}", ""]
    lines += [f"- run: `{Path(d).expanduser().resolve()}`" for d in expand_orders(run_dirs)]
    if len(orders) == 1:
        lines.append(f"- task order: {' → '.join(next(iter(orders)))}")
    else:
        lines += [
            f"- task order ({', '.join(labels)}): {' → '.join(order)}" for order, labels in orders.items()
        ]
    lines += _run_info_lines(run_dirs, results)
    lines += [
        "",
        "## Summary",
        "",
        "After each method's last task (%): text→image (T2I) and image→text (I2T) R@1, average accuracy, "
        "forgetting, English forgetting and plasticity; the best of each column in bold. The full CL table is "
        "below.",
        "",
        compact_table(results),
    ]
    if any(len(runs) > 1 for runs in runs_by_method(results).values()):
        lines += [
            "",
            "## Methods across runs",
            "",
            "CL metrics after the last task, mean ± std over the runs (task orders) that have the method (%; "
            "their count in `runs`).",
            "",
            across_runs_table(results),
        ]
    lines += [
        "",
        "## Final results",
        "",
        f"CL metrics after the last completed task (%; {MISSING} where undefined).",
        "",
        final_table(results),
        "",
    ]
    for metric in SERIES_METRICS:
        lines += [
            f"## AA per task, {metric_label(metric)} ({metric})",
            "",
            series_table(results, metric, "AA"),
            "",
        ]
    lines += ["## Plots", "", "### Accuracy matrices", "",
              "| method | " + " | ".join(metric_label(m) for m in HEATMAP_METRICS) + " |",
              "|---|" + "---|" * len(HEATMAP_METRICS)]
    for label, paths in heatmaps.items():
        lines.append(f"| {label} | " + " | ".join(f"![{label}, {m}]({link(p)})" for m, p in paths.items()) + " |")
    lines += ["", "### CL values per task", ""]
    for caption, path in curves:
        lines += [f"**{caption}** ([{link(path)}]({link(path)}))", "", f"![{caption}]({link(path)})", ""]
    drawn = [(label, path) for label, path in forgetting if path is not None]
    if drawn:
        lines += ["### Forgetting per language", "",
                  "Each language's score right after its own task against after the last task.", ""]
        for label, path in drawn:
            lines += [f"**{label}** ([{link(path)}]({link(path)}))", "", f"![{label}: forgetting]({link(path)})", ""]
    lines += [
        "## Vocabulary growth",
        "",
        "New tokens added per language (new size − old size).",
        "",
        growth_table(results),
        "",
    ]
    configs = read_configs(collect_method_folders(run_dirs))
    if configs:
        lines += ["## Config", "", "Each method's resolved config (its `config.yaml`): the keys every method "
                  "shares, then those that differ.", "", config_tables(configs), ""]
    report = out / REPORT_FILE
    atomic_write_text(report, "\n".join(lines))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``report`` sub-command's arguments (shared with ``cll_ray.cli``)."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or method folders)")
    parser.add_argument("--out", help="output folder for report.md and plots/ (default: the first RUN_DIR)")
    parser.add_argument("--table", action="store_true",
                        help="only print the results table the README shows (mean ± std over runs); write nothing")
    parser.add_argument("--by-run", action="store_true", help="with --table: a row per run and method (runs that "
                        "differ in more than the task order), not mean ± std per method")
    parser.add_argument("--paper", metavar="YAML", help="with --table: a column of the paper's figures from this "
                        "file (results/paper.yaml)")
    parser.add_argument("--copy-results", metavar="DIR", help="copy the runs' results.jsonl and config.yaml (no "
                        "checkpoints) into DIR, e.g. results/<name>, and write nothing else")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.copy_results:
        print(f"results copied to {copy_results(args.run_dirs, args.copy_results)}")
        return 0
    results = collect_results(args.run_dirs)
    if args.table:
        print(results_table(results, load_paper(args.paper) if args.paper else None, by_run=args.by_run))
        return 0
    report = _write_report(results, args.run_dirs, args.out)
    print(final_table(results))
    if any(len(runs) > 1 for runs in runs_by_method(results).values()):
        print(f"\nacross runs (mean ± std):\n{across_runs_table(results)}")
    print(f"\nreport: {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``cll-ray report RUN_DIR... [--out DIR]``: write the report, print the final table and its path."""
    args = add_arguments(
        argparse.ArgumentParser(prog="cll-ray report", description="Write a run's report.")
    ).parse_args(argv)
    try:
        return run(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        print(f"cll-ray report: error: {e}", file=sys.stderr)
        return 2
