"""Reading runs' results: each method's ``results.jsonl`` (one JSON line per completed task, in task order), from
one or several run directories (a run of several task orders: ``orders/o<k>/``), and what the rows tell."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.yaml"
ORDERS_DIR = "orders"  # a run with several task orders: orders/o<k>/ is order k's run directory
_REQUIRED = ("task", "lang", "scores", "cl")


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
    return {m: _read_rows(folder / RESULTS_FILE) for m, folder in _method_folders(run_dir).items()}


def _method_folders(run_dir: str | Path) -> dict[str, Path]:
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if (run_dir / RESULTS_FILE).exists() or (run_dir / CONFIG_FILE).exists():
        return {run_dir.name: run_dir}
    methods = sorted(
        p
        for p in run_dir.iterdir()
        if p.is_dir() and ((p / RESULTS_FILE).exists() or (p / CONFIG_FILE).exists())
    )
    if not methods:
        raise FileNotFoundError(f"{run_dir}: no {RESULTS_FILE} here nor in any method sub-folder")
    return {p.name: p for p in methods}


def collect_results(run_dirs: Sequence[str | Path] | str | Path) -> dict[str, list[dict]]:
    """label -> rows over several runs; a method name found in more than one run becomes ``<run>/<method>``."""
    return {label: _read_rows(folder / RESULTS_FILE) for label, folder in collect_method_folders(run_dirs).items()}


def collect_method_folders(run_dirs: Sequence[str | Path] | str | Path) -> dict[str, Path]:
    """label -> method folder (its ``results.jsonl`` and ``config.yaml``), labelled as ``collect_results`` does."""
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    loaded = []
    for d in expand_orders(run_dirs):
        # a method folder given directly belongs to the run of its parent folder
        run = d.parent if (d / RESULTS_FILE).exists() or (d / CONFIG_FILE).exists() else d
        loaded.append((run.resolve(), _method_folders(d)))
    counts: dict[str, int] = {}
    for _, res in loaded:
        for m in res:
            counts[m] = counts.get(m, 0) + 1
    run_names = _short_names([run for run, _ in loaded])
    out: dict[str, Path] = {}
    for (_, res), run_name in zip(loaded, run_names):
        for m, folder in res.items():
            label = f"{run_name}/{m}" if counts[m] > 1 else m
            if label in out:  # the same run given twice
                raise ValueError(f"{label}: given more than once")
            out[label] = folder
    return out


def read_configs(folders: Mapping[str, Path]) -> dict[str, dict]:
    """label -> the method's resolved config (its ``config.yaml`` as saved by the run), where it has one."""
    from cll_ray.config import load_yaml_file

    out = {}
    for label, folder in folders.items():
        if (folder / CONFIG_FILE).is_file():
            values = load_yaml_file(folder / CONFIG_FILE)
            if not isinstance(values, dict):
                raise ValueError(f"{folder / CONFIG_FILE}: expected a YAML mapping (the run's resolved config)")
            out[label] = values
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


def method_name(label: str) -> str:
    """The method of a label (``runB/cll_clip`` -> ``cll_clip``)."""
    return label.rsplit("/", 1)[-1]


def runs_by_method(results: Mapping[str, Sequence[Mapping]]) -> dict[str, list[Sequence[Mapping]]]:
    """method -> its rows in every run that has it (in the order the runs were given)."""
    groups: dict[str, list[Sequence[Mapping]]] = {}
    for label, rows in results.items():
        groups.setdefault(method_name(label), []).append(rows)
    return groups


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
