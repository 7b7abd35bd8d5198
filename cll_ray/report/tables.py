"""Markdown tables of runs' results: CL values after the last task, across runs (mean ± std), the README's
results table, AA per task and vocabulary growth."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cll_ray.metrics import CL_KEYS
from cll_ray.report.results import method_name, runs_by_method, task_languages, task_order

TABLE_METRICS = ("t2i_r1", "i2t_r1", "r_mean")
SERIES_METRICS = ("t2i_r1", "i2t_r1")
ACROSS_METRICS = ("t2i_r1", "i2t_r1")
ACROSS_KEYS = ("AA", "F", "Fen", "plasticity")
MISSING = "–"


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


COMPACT_LOWER_IS_BETTER = ("F", "Fen")  # forgetting: lower is better; AA and plasticity: higher


def column_bests(rows: Sequence[Sequence[float]], keys: Sequence[str]) -> list[float]:
    """Each column's best value over ``rows`` (the lowest F and Fen, the highest AA and plasticity); nan where
    fewer than two rows have a value, since a lone method is best of nothing."""
    best = []
    for i, key in enumerate(keys):
        finite = [row[i] for row in rows if math.isfinite(row[i])]
        best.append((min if key in COMPACT_LOWER_IS_BETTER else max)(finite) if len(finite) > 1 else math.nan)
    return best


def compact_table(results: Mapping[str, Sequence[Mapping]]) -> str:
    """A table that fits a page: a row per method, T2I then I2T AA / F / Fen / plasticity after its last task,
    the best value of each column in bold (highest AA and plasticity, lowest forgetting)."""
    columns = [(m, k) for m in ACROSS_METRICS for k in ACROSS_KEYS]
    header = ["method", "tasks"] + [f"{m.split('_')[0].upper()} {_SHORT_KEYS.get(k, k)}" for m, k in columns]
    values = {label: [_value((rows[-1].get("cl", {}) if rows else {}).get(m, {}).get(k)) for m, k in columns]
              for label, rows in results.items()}
    best = column_bests(list(values.values()), [k for _, k in columns])
    body = []
    for label, rows in results.items():
        cells = [f"**{_fmt(v)}**" if _fmt(v) == _fmt(b) else _fmt(v) for v, b in zip(values[label], best)]
        body.append([label, _tasks_cell(rows), *cells])
    return _markdown(header, body)


def flat_config(values: Mapping, prefix: str = "") -> dict[str, object]:
    """A nested config as dotted keys (``train.lr``)."""
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_rows(configs: Mapping[str, Mapping]) -> tuple[list[list[str]], list[list[str]]]:
    """Resolved configs side by side: (``[key, value]`` for every key all methods agree on, ``[key, value per
    method...]`` for the others), keys in the order the configs give them."""
    flat = {label: flat_config(values) for label, values in configs.items()}
    keys = list(dict.fromkeys(k for values in flat.values() for k in values))
    shared, differing = [], []
    for key in keys:
        cells = [str(values[key]) if key in values else MISSING for values in flat.values()]
        if len(set(cells)) == 1:
            shared.append([key, cells[0]])
        else:
            differing.append([key, *cells])
    return shared, differing


def config_tables(configs: Mapping[str, Mapping]) -> str:
    """The resolved configs as markdown: the keys every method shares, then those that differ, by method."""
    shared, differing = config_rows(configs)
    code = [[f"`{key}`", f"`{value}`" if value else ""] for key, value in shared]
    parts = [_markdown(["key", "value"], code, align="l")]
    if differing:
        cells = [[f"`{key}`", *(f"`{v}`" for v in values)] for key, *values in differing]
        parts.append(_markdown(["key", *configs], cells, align="l"))
    return "\n\n".join(parts)
