"""The sweep report: best configurations (mean ± std across task orders), one plot per hyper-parameter against
the objective, the best trial's accuracy heatmaps, and TensorBoard's HParams view.

Trials are read from Tune's experiment state (``ray.tune.ExperimentAnalysis``, no running cluster needed); the
best trial's accuracy matrices from its last task checkpoint in ``<sweep>/trials/<trial_id>/checkpoints``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cll_ray.distributed.tuner import SPACE_COPY, SWEEP_FILE, experiment_path
from cll_ray.io import atomic_write_text
from cll_ray.report.builder import _slug
from cll_ray.report.plots import _figure, _save, heatmap_figure, metric_label
from cll_ray.report.tables import MISSING, _fmt, _markdown
from cll_ray.sweep import OBJECTIVES, load_space

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
TOP = 10


@dataclass
class TrialSummary:
    trial_id: str
    status: str
    point: dict
    objective: float
    step: int  # tasks reported (of all orders)
    per_order: list[dict] = field(default_factory=list)  # order k -> {"AA", "F", "Fen"} (final when complete)

    def stat(self, key: str) -> tuple[float, float]:
        values = [o[key] for o in self.per_order if math.isfinite(o.get(key, math.nan))]
        if not values:
            return math.nan, math.nan
        return float(np.mean(values)), float(np.std(values))


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def load_trials(sweep_dir: str | Path) -> tuple[dict, list[TrialSummary]]:
    """The sweep's info (sweep.json) and a summary of every trial that reported at least once."""
    from ray.tune import ExperimentAnalysis

    sweep_dir = Path(sweep_dir)
    info = json.loads((sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))
    analysis = ExperimentAnalysis(experiment_path(sweep_dir))
    space = load_space(sweep_dir / SPACE_COPY)
    keys = [p.key for p in space.params]
    trials = []
    for trial in analysis.trials:
        last = trial.last_result or {}
        if "objective" not in last:
            continue
        per_order = [{key: float(last.get(f"o{k}_{key}", math.nan)) for key in ("AA", "F", "Fen")}
                     for k in range(len(info["orders"])) if f"o{k}_AA" in last]
        trials.append(TrialSummary(
            trial_id=trial.trial_id, status=trial.status, point={k: trial.config.get(k) for k in keys},
            objective=float(last["objective"]), step=int(last.get("step", 0)), per_order=per_order))
    return info, trials


def _complete(info: dict, trials: list[TrialSummary]) -> list[TrialSummary]:
    total = sum(len(o) for o in info["orders"])
    return sorted((t for t in trials if t.step >= total), key=lambda t: -t.objective)


def _value(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _pm(stat: tuple[float, float]) -> str:
    mean, std = stat
    return MISSING if not math.isfinite(mean) else f"{mean:.1f} ± {std:.1f}"


def best_table(info: dict, trials: list[TrialSummary], keys: list[str], preset_id: str | None) -> str:
    rows = []
    for t in _complete(info, trials)[:TOP]:
        label = f"{t.trial_id}{' (preset)' if t.trial_id == preset_id else ''}"
        rows.append([label, *[_value(t.point[k]) for k in keys], _fmt(t.objective), _pm(t.stat("AA")),
                     _pm(t.stat("F")), _pm(t.stat("Fen"))])
    return _markdown(["trial", *keys, "objective", "AA", "F", "Fen"], rows)


def plot_parameter(trials: list[TrialSummary], complete_ids: set[str], key: str, objective: str, path: Path) -> Path:
    """Objective against one hyper-parameter: complete trials filled, trials stopped early hollow (their
    objective is over the tasks they reached)."""
    fig = _figure(4.8, 3.4)
    ax = fig.add_subplot()
    values = [t.point[key] for t in trials]
    categorical = any(isinstance(v, (bool, str)) or v is None for v in values)
    if categorical:
        cats = sorted({_value(v) for v in values})
        xs = [cats.index(_value(v)) for v in values]
        ax.set_xticks(range(len(cats)), labels=cats)
    else:
        xs = [float(v) for v in values]
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
    for done, style in ((True, {"color": "C0", "label": "all orders"}),
                        (False, {"facecolors": "none", "edgecolors": "C7", "label": "stopped early (partial)"})):
        pick = [(x, t.objective) for x, t in zip(xs, trials) if (t.trial_id in complete_ids) == done]
        if pick:
            ax.scatter(*zip(*pick), s=28, **style)
    ax.set_xlabel(key)
    ax.set_ylabel(f"objective ({objective})")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def best_trial_rows(sweep_dir: Path, trial_id: str) -> list[list[dict]]:
    """Per order, the results rows of the best trial, from its last task checkpoint."""
    from cll_ray.checkpoint import load_checkpoint
    from cll_ray.sequence import results_rows

    folders = sorted((sweep_dir / "trials" / trial_id / "checkpoints").glob("*task*"))
    if not folders:
        return []
    last = max(folders, key=lambda f: (f.name.split("-task")[0], f.name))
    rows = []
    for path in sorted(last.glob("learner-o*.pt"), key=lambda p: int(p.stem.split("-o")[1])):
        rows.append(results_rows(load_checkpoint(path)["learner"]["tasks"]))
    return rows


def log_hparams(sweep_dir: Path, trials: list[TrialSummary]) -> Path:
    """One TensorBoard run per trial in ``<sweep>/tensorboard`` for the HParams view."""
    from cll_ray.tracking import Tracker

    root = sweep_dir / "tensorboard"
    for t in trials:
        metrics = {"objective": t.objective, "AA_mean": t.stat("AA")[0], "F_mean": t.stat("F")[0], "tasks": t.step}
        with Tracker(root / t.trial_id) as tracker:
            tracker.log_hparams({k: _value(v) if v is None else v for k, v in t.point.items()}, metrics)
    return root


def build_sweep_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, str]:
    """Write ``report.md`` and its plots; returns (path, the best-configurations table)."""
    sweep_dir = Path(sweep_dir).resolve()
    out = Path(out_dir).resolve() if out_dir else sweep_dir
    info, trials = load_trials(sweep_dir)
    if not trials:
        raise ValueError(f"{sweep_dir}: no trial has reported yet")
    space = load_space(sweep_dir / SPACE_COPY)
    keys = [p.key for p in space.params]
    preset_id = _preset_trial(space, info, trials)
    complete = _complete(info, trials)
    table = best_table(info, trials, keys, preset_id)
    plots = out / PLOTS_DIR
    param_plots = [plot_parameter(trials, {t.trial_id for t in complete}, k, info["objective"],
                                  plots / f"param_{_slug(k)}.png") for k in keys]
    heatmaps = []
    if complete:
        for k, rows in enumerate(best_trial_rows(sweep_dir, complete[0].trial_id)):
            from cll_ray.report import accuracy_matrix, task_languages

            fig = heatmap_figure(accuracy_matrix(rows, info["metric"]), task_languages(rows), info["metric"],
                                 title=f"best trial {complete[0].trial_id}, order {k}: {metric_label(info['metric'])}")
            heatmaps.append(_save(fig, plots / f"best_heatmap_o{k}.png"))
    tb = log_hparams(sweep_dir, trials)
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"Space `{Path(info['space_file']).name}` (preset `{space.method}`), {len(trials)} trials reported, "
        f"{len(complete)} ran every order. Objective `{info['objective']}`: {OBJECTIVES[info['objective']]} of "
        f"{metric_label(info['metric'])} (`{info['metric']}`). AA, F and Fen: mean ± std across the "
        f"{len(info['orders'])} orders.",
        "",
        "Orders:",
        "",
        *[f"- o{k}: {' → '.join(order)}" for k, order in enumerate(info["orders"])],
        "",
        "## Best configurations",
        "",
        table,
        "",
        "## Each hyper-parameter against the objective",
        "",
        *[f"![{k}]({p.relative_to(out).as_posix()})" for k, p in zip(keys, param_plots)],
        "",
    ]
    if heatmaps:
        lines += ["## The best trial's accuracy matrices", "",
                  *[f"![order {k}]({p.relative_to(out).as_posix()})" for k, p in enumerate(heatmaps)], ""]
    lines += [f"TensorBoard HParams: `tensorboard --logdir {tb}`", ""]
    report = out / REPORT_FILE
    atomic_write_text(report, "\n".join(lines))
    return report, table


def _preset_trial(space, info: dict, trials: list[TrialSummary]) -> str | None:
    """The trial that ran the preset's own values (the first point evaluated), if any."""
    if not space.evaluate_preset:
        return None
    point = space.preset_point(space.base_config(info["overrides"]))
    for t in trials:
        if all(_same(t.point[k], v) for k, v in point.items()):
            return t.trial_id
    return None


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b
