"""The run report: CL tables and plots (matplotlib, Agg) from the ``results.jsonl`` files of one or more runs.

A run directory holds one sub-folder per method, each with ``config.yaml`` and ``results.jsonl`` (one JSON
line per completed language task, in task order). ``build_report`` writes ``report.md`` and ``plots/*.png``;
``cll-ray report RUN_DIR... [--out DIR]`` (``main``) does the same from the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cll_ray.io import atomic_write_text, atomic_write_with

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.md"
ORDERS_DIR = "orders"  # a run with several task orders: orders/o<k>/ is order k's run directory
PLOTS_DIR = "plots"
CL_KEYS = ("AA", "F", "Fen", "BWT", "FWT", "plasticity")
TABLE_METRICS = ("t2i_r1", "i2t_r1", "r_mean")
HEATMAP_METRICS = ("t2i_r1",)
CURVE_METRICS = ("t2i_r1", "i2t_r1")
CURVE_KEYS = ("AA", "F")
SERIES_METRICS = ("t2i_r1", "i2t_r1")
ACROSS_METRICS = ("t2i_r1", "i2t_r1")
ACROSS_KEYS = ("AA", "F", "Fen", "plasticity")
MISSING = "–"
_REQUIRED = ("task", "lang", "scores", "cl")

_DIRECTIONS = {"t2i": "text→image", "i2t": "image→text"}


def metric_label(metric: str) -> str:
    """A readable name: ``t2i_r1`` -> ``text→image R@1``, ``r_mean`` -> ``mean recall``."""
    if metric == "r_mean":
        return "mean recall"
    m = re.fullmatch(r"(t2i|i2t)_r(\d+|_mean)", metric)
    if not m:
        return metric
    direction, k = _DIRECTIONS[m.group(1)], m.group(2)
    return f"{direction} mean recall" if k == "_mean" else f"{direction} R@{k}"


# --------------------------------------------------------------------------------------------- loading


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (no completed task for this method)")
    rows: list[dict] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: corrupt line (invalid JSON: {e.msg} at column {e.colno})"
                ) from e
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{lineno}: corrupt line (expected a JSON object, got {type(row).__name__})"
                )
            missing = [k for k in _REQUIRED if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: corrupt line (missing {', '.join(missing)})")
            if row["task"] != len(rows):
                raise ValueError(
                    f"{path}:{lineno}: expected task {len(rows)} (rows are in task order), got {row['task']!r}"
                )
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: empty (no completed task)")
    return rows


def load_results(run_dir: str | Path) -> dict[str, list[dict]]:
    """method -> its rows, from a run directory (method sub-folders) or from one method folder.

    Sub-folders with neither ``results.jsonl`` nor ``config.yaml`` (``tensorboard/``, ``plots/``, ...) are
    ignored; a method folder (``config.yaml``) without ``results.jsonl`` is an error, as is a corrupt line
    (the message names the file and the line).
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if (run_dir / RESULTS_FILE).exists() or (run_dir / CONFIG_FILE).exists():
        return {run_dir.name: _read_rows(run_dir / RESULTS_FILE)}
    methods = sorted(
        p
        for p in run_dir.iterdir()
        if p.is_dir() and ((p / RESULTS_FILE).exists() or (p / CONFIG_FILE).exists())
    )
    if not methods:
        raise FileNotFoundError(f"{run_dir}: no {RESULTS_FILE} here nor in any method sub-folder")
    return {p.name: _read_rows(p / RESULTS_FILE) for p in methods}


def collect_results(run_dirs: Sequence[str | Path] | str | Path) -> dict[str, list[dict]]:
    """label -> rows over several runs; a method name found in more than one run becomes ``<run>/<method>``."""
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    loaded = []
    for d in expand_orders(run_dirs):
        # a method folder given directly belongs to the run of its parent folder
        run = d.parent if (d / RESULTS_FILE).exists() or (d / CONFIG_FILE).exists() else d
        loaded.append((run.resolve(), load_results(d)))
    counts: dict[str, int] = {}
    for _, res in loaded:
        for m in res:
            counts[m] = counts.get(m, 0) + 1
    run_names = _short_names([run for run, _ in loaded])
    out: dict[str, list[dict]] = {}
    for (_, res), run_name in zip(loaded, run_names):
        for m, rows in res.items():
            label = f"{run_name}/{m}" if counts[m] > 1 else m
            if label in out:  # the same run given twice
                raise ValueError(f"{label}: given more than once")
            out[label] = rows
    return out


def expand_orders(run_dirs: Sequence[str | Path]) -> list[Path]:
    """Run directories, with a run of several task orders (``orders/o<k>/``) replaced by its order runs."""
    out = []
    for d in map(lambda p: Path(p).expanduser(), run_dirs):
        orders = sorted((p for p in (d / ORDERS_DIR).glob("o*") if p.name[1:].isdigit()),
                        key=lambda p: int(p.name[1:])) if (d / ORDERS_DIR).is_dir() else []
        out += orders or [d]
    return out


def _short_names(paths: list[Path]) -> list[str]:
    """The shortest trailing parts that tell the paths apart (``runA``, or ``a/run`` vs ``b/run``)."""
    for n in range(1, max((len(p.parts) for p in paths), default=1) + 1):
        names = ["/".join(p.parts[-n:]) for p in paths]
        if len(set(names)) == len(set(paths)):
            return names
    return [str(p) for p in paths]


# --------------------------------------------------------------------------------------------- tables


def task_languages(rows: Sequence[Mapping]) -> list[str]:
    """The languages learned so far, in task order."""
    return [r["lang"] for r in rows]


def evaluated_languages(rows: Sequence[Mapping]) -> list[str]:
    """The matrix's columns: the languages the last row evaluated (a joint row covers all of them)."""
    return list(rows[-1].get("languages") or task_languages(rows)) if rows else []


def task_order(rows: Sequence[Mapping]) -> list[str]:
    """The whole planned task order (``order`` of the last row), or the languages learned so far.

    A joint run has one task (named ``joint``), whatever its language order.
    """
    if rows and rows[-1].get("joint"):
        return task_languages(rows)
    return list(rows[-1].get("order") or task_languages(rows)) if rows else []


def accuracy_matrix(rows: Sequence[Mapping], metric: str) -> np.ndarray:
    """The (T, T) accuracy matrix a[t, j] (score on language j after task t), NaN above the diagonal.

    A joint-training run (``joint`` rows) is one task over every language: its matrix is a single (1, J) row.
    """
    T = len(rows)
    width = max([T] + [len(row.get("scores", {}).get(metric, ())) for row in rows if row.get("joint")])
    a = np.full((T, width), np.nan)
    for t, row in enumerate(rows):
        try:
            values = row["scores"][metric]
        except KeyError:
            raise KeyError(f"task {t} ({row.get('lang')}): no scores for {metric!r}") from None
        expected = len(row.get("languages") or ()) if row.get("joint") else t + 1
        if len(values) != expected:
            raise ValueError(f"task {t} ({row.get('lang')}): {len(values)} {metric} scores, expected {expected}")
        a[t, : len(values)] = np.asarray(values, dtype=np.float64)
    return a


def _value(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _fmt(x, digits: int = 1) -> str:
    v = _value(x)
    return f"{v:.{digits}f}" if math.isfinite(v) else MISSING


def _markdown(header: list[str], body: list[list[str]], align: str = "r") -> str:
    sep = ["---"] + [("---:" if align == "r" else "---")] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, sep, *body])


def _tasks_cell(rows: Sequence[Mapping]) -> str:
    done, planned = len(rows), len(task_order(rows))
    return str(done) if planned <= done else f"{done}/{planned}"


def final_table(results: Mapping[str, Sequence[Mapping]], metrics: Iterable[str] = TABLE_METRICS) -> str:
    """A markdown table: method, tasks, then AA/F/Fen/BWT/FWT/plasticity after the last task, per metric."""
    metrics = tuple(metrics)
    header = ["method", "tasks"] + [f"{m} {k}" for m in metrics for k in CL_KEYS]
    body = []
    for label, rows in results.items():
        cl = rows[-1].get("cl", {}) if rows else {}
        body.append(
            [label, _tasks_cell(rows)] + [_fmt(cl.get(m, {}).get(k)) for m in metrics for k in CL_KEYS]
        )
    return _markdown(header, body)


def method_name(label: str) -> str:
    """The method of a label (``runB/cll_clip`` -> ``cll_clip``)."""
    return label.rsplit("/", 1)[-1]


def runs_by_method(results: Mapping[str, Sequence[Mapping]]) -> dict[str, list[Sequence[Mapping]]]:
    """method -> its rows in every run that has it (in the order the runs were given)."""
    groups: dict[str, list[Sequence[Mapping]]] = {}
    for label, rows in results.items():
        groups.setdefault(method_name(label), []).append(rows)
    return groups


def _mean_std(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return MISSING
    return f"{np.mean(finite):.1f} ± {np.std(finite):.1f}" if len(finite) > 1 else f"{finite[0]:.1f}"


def across_runs_table(results: Mapping[str, Sequence[Mapping]], metrics: Iterable[str] = ACROSS_METRICS,
                      keys: Iterable[str] = ACROSS_KEYS) -> str:
    """A markdown table comparing methods over several runs (task orders, seeds): a row per method, each
    CL value after the last task as mean ± std (population std) over the runs that have the method."""
    metrics, keys = tuple(metrics), tuple(keys)
    header = ["method", "runs", "tasks"] + [f"{m} {k}" for m in metrics for k in keys]
    body = []
    for method, runs in runs_by_method(results).items():
        finals = [rows[-1].get("cl", {}) for rows in runs]
        tasks = ", ".join(dict.fromkeys(_tasks_cell(rows) for rows in runs))  # "8", or "8, 5/8" if one stopped
        body.append([method, str(len(runs)), tasks] + [
            _mean_std([_value(cl.get(m, {}).get(k)) for cl in finals]) for m in metrics for k in keys])
    return _markdown(header, body)


_SHORT_KEYS = {"plasticity": "plast."}


def results_table(results: Mapping[str, Sequence[Mapping]], paper: Mapping[str, str] | None = None,
                  by_run: bool = False) -> str:
    """The table the README and docs show: a row per method, T2I then I2T AA / F / Fen / plasticity after the last
    task as mean ± std over the runs (task orders) that have it, and, given ``paper`` (method -> cell, from a
    YAML of the paper's figures), the paper's numbers beside it. ``by_run``: a row per run and method instead
    (runs that differ in more than the task order)."""
    header = ["method", "runs"] + [f"{m.split('_')[0].upper()} {_SHORT_KEYS.get(k, k)}"
                                   for m in ACROSS_METRICS for k in ACROSS_KEYS]
    body = []
    groups = {label: [rows] for label, rows in results.items()} if by_run else runs_by_method(results)
    for method, runs in groups.items():
        unfinished = [r for r in runs if len(r) < len(task_order(r))]
        if unfinished:
            raise ValueError(f"{method}: a run stopped after {len(unfinished[0])} of "
                             f"{len(task_order(unfinished[0]))} tasks; a results table holds finished runs only")
        finals = [rows[-1].get("cl", {}) for rows in runs]
        body.append([f"`{method}`", str(len(runs))] + [
            _mean_std([_value(cl.get(m, {}).get(k)) for cl in finals]) for m in ACROSS_METRICS for k in ACROSS_KEYS])
    if paper is not None:
        header.append(paper.get("header", "paper"))
        for row, label in zip(body, groups):
            row.append(str(paper.get("methods", {}).get(method_name(label), "not in the paper")))
    return _markdown(header, body)


def load_paper(path: str | Path) -> dict:
    """A YAML of the paper's figures: ``header`` (the column's title) and ``methods`` (method -> cell text)."""
    from cll_ray.config import load_yaml

    path = Path(path)
    values = load_yaml(path.read_text(encoding="utf-8")) if path.exists() else None
    if not isinstance(values, dict) or not isinstance(values.get("methods"), dict):
        raise ValueError(f"{path}: expected a YAML mapping with 'header' and 'methods' (method -> figures)")
    return values


def copy_results(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Copy what a results table is built from (each method's ``results.jsonl`` and ``config.yaml``, every task
    order's, without checkpoints or events) into ``out`` (one run: as ``out`` itself; several: ``out/<run>``),
    which must not exist: written beside it, then renamed."""
    import shutil

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists (results are never overwritten; remove it first)")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    runs = [Path(p).expanduser() for p in run_dirs]
    for run in runs:
        for src in sorted([*run.rglob(RESULTS_FILE), *run.rglob(CONFIG_FILE)]):
            if "train" in src.relative_to(run).parts:
                continue  # Ray Train's own folders (checkpoints) are not results
            # one run: its folders become out's; several: one sub-folder per run
            dest = (tmp if len(runs) == 1 else tmp / run.name) / src.relative_to(run)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    if not tmp.exists():
        raise FileNotFoundError(f"no {RESULTS_FILE} under {', '.join(map(str, run_dirs))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def _task_header(results: Mapping[str, Sequence[Mapping]]) -> list[str]:
    """Column names ``1 en``, ``2 fr``... when every method follows the same order, else ``1``, ``2``..."""
    orders = [task_order(rows) for rows in results.values()]
    longest = max(orders, key=len, default=[])
    same = all(o == longest[: len(o)] for o in orders)
    return [f"{i + 1} {lang}" if same else str(i + 1) for i, lang in enumerate(longest)]


def series_table(results: Mapping[str, Sequence[Mapping]], metric: str = "t2i_r1", key: str = "AA") -> str:
    """A markdown table of one CL value after every task: a row per method, a column per task."""
    header = _task_header(results)
    body = []
    for label, rows in results.items():
        cells = [_fmt(r.get("cl", {}).get(metric, {}).get(key)) for r in rows]
        body.append([label] + cells + [MISSING] * (len(header) - len(cells)))
    return _markdown(["method"] + header, body)


def _new_tokens(growth) -> float:
    if not isinstance(growth, Mapping):
        return math.nan
    return _value(growth.get("new_size")) - _value(growth.get("old_size"))


def growth_table(results: Mapping[str, Sequence[Mapping]]) -> str:
    """New tokens (``new_size - old_size``) per language per method, and the final vocabulary size."""
    langs: list[str] = []
    for rows in results.values():
        langs += [lang for lang in task_languages(rows) if lang not in langs]
    body = []
    for label, rows in results.items():
        by_lang = {r["lang"]: _new_tokens(r.get("growth")) for r in rows}
        sizes = [_value(r["growth"].get("new_size")) for r in rows if isinstance(r.get("growth"), Mapping)]
        cells = [_fmt(by_lang.get(lang), 0) for lang in langs]
        body.append([label] + cells + [_fmt(sizes[-1] if sizes else math.nan, 0)])
    return _markdown(["method"] + langs + ["final vocab"], body)


# --------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    return fig


def heatmap_figure(
    matrix: np.ndarray,
    languages: Sequence[str],
    metric: str,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = True,
    tasks: Sequence[str] | None = None,
):
    """An annotated heatmap of an accuracy matrix (rows: after task t, columns: evaluated language).

    The colour scale spans ``vmin``..``vmax`` (default: the matrix's range); ``annotate`` writes each value
    in its cell (the slow part of rendering a 36-language matrix).
    """
    import matplotlib as mpl

    a = np.asarray(matrix, dtype=np.float64)
    T, J = a.shape
    finite = a[np.isfinite(a)]
    lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else vmin)
    hi = float(finite.max()) if vmax is None and finite.size else (100.0 if vmax is None else vmax)
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    cell = 0.55 if J <= 12 else 0.4
    fig = _figure(max(4.5, cell * J + 2.6), max(3.5, cell * T + 1.6))
    ax = fig.add_subplot()
    cmap = mpl.colormaps["viridis"].with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(a), cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    tasks = list(tasks if tasks is not None else languages)
    ax.set_xticks(range(J), labels=list(languages)[:J], rotation=90 if J > 12 else 0)
    ax.set_yticks(range(T), labels=[f"{t + 1}: {lang}" for t, lang in enumerate(tasks[:T])])
    ax.set_xlabel("evaluated language")
    ax.set_ylabel("after task (learned language)")
    ax.set_title(title or f"accuracy matrix, {metric_label(metric)}")
    ax.tick_params(top=False, bottom=True, length=0)
    ax.set_xticks(np.arange(J + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(T + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    size = 9 if J <= 8 else 7 if J <= 16 else 5
    for t in range(T if annotate else 0):
        for j in range(J):
            if np.isfinite(a[t, j]):
                r, g, b, _ = cmap((a[t, j] - lo) / (hi - lo))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(
                    j,
                    t,
                    f"{a[t, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if dark else "black",
                )
    cbar = fig.colorbar(im, ax=ax, shrink=0.9)
    cbar.set_label(f"{metric_label(metric)} (%)")
    return fig


def figure_to_rgb(fig) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def plot_heatmap(
    rows: Sequence[Mapping],
    metric: str,
    path: str | Path,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """Write the annotated accuracy heatmap of ``rows`` for ``metric`` to ``path`` (PNG)."""
    return _save(
        heatmap_figure(accuracy_matrix(rows, metric), evaluated_languages(rows), metric, title, vmin, vmax,
                       tasks=task_languages(rows)),
        path,
    )


_KEY_NAMES = {
    "AA": "average accuracy (AA)",
    "F": "forgetting (F)",
    "Fen": "English forgetting (Fen)",
    "BWT": "backward transfer (BWT)",
    "FWT": "forward transfer (FWT)",
    "plasticity": "plasticity",
}


def plot_curves(
    results: Mapping[str, Sequence[Mapping]],
    metric: str,
    key: str,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """One CL value (``AA``, ``F``...) after every task for every method, on one axes; NaN points are gaps."""
    header = _task_header(results)
    fig = _figure(max(5.5, 0.45 * len(header) + 3.0), 4.0)
    ax = fig.add_subplot()
    markers = "osD^vP*X<>"
    for i, (label, rows) in enumerate(results.items()):
        y = [_value(r.get("cl", {}).get(metric, {}).get(key)) for r in rows]
        ax.plot(range(1, len(y) + 1), y, marker=markers[i % len(markers)], label=label)
    ax.set_xticks(
        range(1, len(header) + 1),
        labels=[h.replace(" ", "\n", 1) for h in header],
        fontsize=9 if len(header) <= 16 else 6,
    )
    ax.set_xlim(0.5, len(header) + 0.5)
    ax.set_xlabel("after task (learned language)")
    ax.set_ylabel(f"{key} (%)")
    ax.set_title(title or f"{_KEY_NAMES.get(key, key)}, {metric_label(metric)}")
    ax.grid(alpha=0.3)
    if results:
        ax.legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- report


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label.replace("/", "__")).strip("_") or "method"


def build_report(run_dirs: Sequence[str | Path] | str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/plots/*.png`` for one or more runs; return report.md's path.

    ``out_dir`` defaults to the (first) run directory. Plots: the t2i_r1 heatmap of every method, and AA and
    F curves over tasks for t2i_r1 and i2t_r1. Every file is written atomically.
    """
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise ValueError("no run directory given")
    return _write_report(collect_results(run_dirs), run_dirs, out_dir)


def _write_report(results: dict[str, list[dict]], run_dirs: Sequence[str | Path], out_dir) -> Path:
    out = Path(out_dir if out_dir is not None else run_dirs[0]).expanduser()
    plots = out / PLOTS_DIR

    heatmaps: list[tuple[str, Path]] = []
    for metric in HEATMAP_METRICS:
        values = np.concatenate([accuracy_matrix(rows, metric).ravel() for rows in results.values()])
        values = values[np.isfinite(values)]
        lo, hi = (float(values.min()), float(values.max())) if values.size else (None, None)
        for label, rows in results.items():  # one colour scale for all methods: the colours compare
            path = plot_heatmap(
                rows,
                metric,
                plots / f"heatmap_{_slug(label)}_{metric}.png",
                title=f"{label}: accuracy matrix, {metric_label(metric)}",
                vmin=lo,
                vmax=hi,
            )
            heatmaps.append((f"{label}, {metric}", path))
    curves = [
        (f"{key}, {metric}", plot_curves(results, metric, key, plots / f"curves_{key}_{metric}.png"))
        for metric in CURVE_METRICS
        for key in CURVE_KEYS
    ]

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
    lines += ["## Plots", ""]
    for caption, path in heatmaps + curves:
        rel = path.relative_to(out).as_posix()
        lines += [f"**{caption}** ([{rel}]({rel}))", "", f"![{caption}]({rel})", ""]
    lines += [
        "## Vocabulary growth",
        "",
        "New tokens added per language (new size − old size).",
        "",
        growth_table(results),
        "",
    ]
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


if __name__ == "__main__":
    raise SystemExit(main())
