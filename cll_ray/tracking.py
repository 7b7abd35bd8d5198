"""TensorBoard logging of a continual-language-learning sequence (``torch.utils.tensorboard``; no Ray).

Tags (module constants, so that other code and Tune can refer to them):

- ``train/{lang}/{name}``: per optimizer step, x = the global step across the whole sequence;
- ``eval/{lang}/{metric}``: the score on every seen language after each task, x = task index (matrix row);
- ``cl/{metric}/{key}``: AA, F, Fen, BWT, FWT, plasticity after each task (undefined values skipped);
- ``cl/accuracy_matrix/{metric}``: the accuracy-matrix heatmap (an image) after each task;
- ``vocab/size``, ``vocab/new_tokens``: the vocabulary after each task and the tokens it added;
- ``task/{name}``: seconds, best_epoch and best_val_r_mean of each task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

TRAIN_TAG = "train/{lang}/{name}"
EVAL_TAG = "eval/{lang}/{metric}"
CL_TAG = "cl/{metric}/{key}"
MATRIX_TAG = "cl/accuracy_matrix/{metric}"
GROWTH_TAG = "vocab/{name}"
TASK_TAG = "task/{name}"
MATRIX_METRICS = ("t2i_r1", "i2t_r1")
ANNOTATE_UP_TO = 16  # heatmap images write the values in their cells up to this many languages
HPARAMS_RUN = "hparams"  # the sub-directory add_hparams writes to


def _number(value) -> float | None:
    """``value`` (a number, a numpy or 0-d torch scalar) as a float; None when it is not a number."""
    if value is None or isinstance(value, str):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _finite(value) -> float | None:
    """``value`` as a float, or None when it is not a finite number (NaN, inf, None, a string...)."""
    v = _number(value)
    return v if v is not None and math.isfinite(v) else None


def flatten(d: Mapping, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested dicts -> dotted keys, keeping bools, numbers and strings; lists/tuples of those become
    comma-joined strings; anything else (None, objects) is dropped."""
    out: dict[str, bool | int | float | str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
        elif isinstance(v, list | tuple) and all(isinstance(x, bool | int | float | str) for x in v):
            out[key] = ",".join(str(x) for x in v)
        elif hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # a numpy / torch scalar
            out[key] = v.item()
    return out


class Tracker:
    """Writes one TensorBoard event stream for a method's sequence; the SummaryWriter is created on first use.

    ``log_task`` keeps the rows it was given, so that each task's heatmap shows the accuracy matrix so far.
    """

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self._writer = None
        self._rows: dict[int, dict] = {}

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.logdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.logdir))
        return self._writer

    @property
    def rows(self) -> list[dict]:
        """The task rows logged so far, in task order."""
        return [self._rows[t] for t in sorted(self._rows)]

    def log_step(self, lang: str, global_step: int, scalars: Mapping[str, float]) -> None:
        """``train/<lang>/<name>`` for every scalar (loss, lr, ...) at the global optimizer step."""
        for name, value in scalars.items():
            if (v := _number(value)) is not None:  # a NaN loss is logged: divergence stays visible
                self.writer.add_scalar(TRAIN_TAG.format(lang=lang, name=name), v, int(global_step))

    def log_task(self, row: Mapping) -> None:
        """Log a ``results.jsonl`` row: eval scores, CL metrics, matrix heatmaps, vocabulary growth."""
        t = int(row["task"])
        w = self.writer
        self._rows = {k: r for k, r in self._rows.items() if k < t}  # a re-run task replaces what followed
        self._rows[t] = dict(row)
        rows = self.rows
        langs = list(row.get("languages") or [r["lang"] for r in rows])
        for metric, values in row.get("scores", {}).items():
            for lang, value in zip(langs, values):
                if (v := _finite(value)) is not None:
                    w.add_scalar(EVAL_TAG.format(lang=lang, metric=metric), v, t)
        for metric, values in row.get("cl", {}).items():
            for key, value in values.items():
                if (v := _finite(value)) is not None:
                    w.add_scalar(CL_TAG.format(metric=metric, key=key), v, t)
        growth = row.get("growth")
        if isinstance(growth, Mapping):
            size, old = _finite(growth.get("new_size")), _finite(growth.get("old_size"))
            if size is not None:
                w.add_scalar(GROWTH_TAG.format(name="size"), size, t)
                if old is not None:
                    w.add_scalar(GROWTH_TAG.format(name="new_tokens"), size - old, t)
        for name in ("seconds", "best_epoch", "best_val_r_mean"):
            if (v := _finite(row.get(name))) is not None:
                w.add_scalar(TASK_TAG.format(name=name), v, t)
        if [r["task"] for r in rows] == list(range(len(rows))):  # the matrix needs every earlier row
            self._log_matrices(rows, t)

    def _log_matrices(self, rows: list[dict], t: int) -> None:
        from cll_ray.report import (
            accuracy_matrix,
            evaluated_languages,
            figure_to_rgb,
            heatmap_figure,
            task_languages,
        )

        for metric in MATRIX_METRICS:
            if not all(metric in r.get("scores", {}) for r in rows):
                continue
            fig = heatmap_figure(
                accuracy_matrix(rows, metric),
                evaluated_languages(rows),
                metric,
                title=f"after task {t + 1}: accuracy matrix, {metric}",
                annotate=len(rows) <= ANNOTATE_UP_TO,
                tasks=task_languages(rows),  # a joint run: one row over every evaluated language
            )
            self.writer.add_image(MATRIX_TAG.format(metric=metric), figure_to_rgb(fig), t, dataformats="HWC")

    def log_hparams(self, hparams: Mapping, metrics: Mapping) -> None:
        """``add_hparams`` with nested dicts flattened to dotted keys (scalars and strings only) and only the
        finite metrics; written to the ``hparams/`` sub-directory of the log directory."""
        metric_dict = {
            k: v for k, v in flatten(metrics).items() if not isinstance(v, str) and _finite(v) is not None
        }
        self.writer.add_hparams(flatten(hparams), metric_dict, run_name=HPARAMS_RUN)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
