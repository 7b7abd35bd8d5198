"""The report's plots (matplotlib, Agg, without pyplot's global state): accuracy heatmaps and CL curves."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cll_ray.io import atomic_write_with
from cll_ray.report.results import accuracy_matrix, evaluated_languages, task_languages
from cll_ray.report.tables import _task_header, _value

HEATMAP_METRICS = ("t2i_r1", "i2t_r1")
CURVE_METRICS = ("t2i_r1", "i2t_r1")
CURVE_KEYS = ("AA", "F")

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


FORGETTING_METRICS = ("t2i_r1", "i2t_r1")


def forgetting_scores(rows: Sequence[Mapping], metric: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each learned language's score right after its own task (the diagonal a[j, j]) and after the last task
    (a[T-1, j]); empty for a joint run (one task over every language: nothing learned after it to forget by)."""
    if not rows or rows[-1].get("joint"):
        return [], np.zeros(0), np.zeros(0)
    a = accuracy_matrix(rows, metric)
    langs = task_languages(rows)
    return langs, np.diag(a)[: len(langs)].copy(), a[len(rows) - 1, : len(langs)].copy()


def plot_forgetting(rows: Sequence[Mapping], path: str | Path, title: str,
                    metrics: Sequence[str] = FORGETTING_METRICS) -> Path | None:
    """Per language, its score right after its own task against after the last task, one panel per metric
    (the gap between the two bars is what the sequence made it forget); None for a joint run."""
    panels = [(m, *forgetting_scores(rows, m)) for m in metrics]
    if not panels or not len(panels[0][1]):
        return None
    n = len(panels[0][1])
    fig = _figure(max(5.0, 0.5 * n + 2.5) * len(panels), 3.8)
    x = np.arange(n)
    for i, (metric, langs, own, last) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.bar(x - 0.2, own, width=0.4, label="after its own task", color="#4c72b0")
        ax.bar(x + 0.2, last, width=0.4, label=f"after the last task ({len(rows)}: {langs[-1]})", color="#dd8452")
        ax.set_xticks(x, labels=langs, rotation=90 if n > 12 else 0)
        ax.set_xlabel("language (in task order)")
        ax.set_ylabel(f"{metric_label(metric)} (%)")
        ax.set_title(metric_label(metric))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
