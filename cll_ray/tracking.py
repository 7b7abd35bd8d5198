"""TensorBoard logging of a continual-language-learning sequence (``torch.utils.tensorboard``; no Ray).

Tags (module constants, so that other code and Tune can refer to them):

- ``train/{name}`` (loss and its terms, lr, temperature): every few optimizer steps, one curve across the
  whole sequence, x = the global step; ``train/{lang}/loss`` beside it, the loss split by task;
- ``epoch/{name}``: each epoch's mean training loss and validation scores, x = the global step;
- ``eval/{lang}/{metric}``: the score on every seen language after each task, x = the task number (1-based,
  as the console and the checkpoint folders ``taskNN-<lang>``);
- ``cl/{metric}/{key}``: AA, F, Fen, BWT, FWT, plasticity after each task (undefined values skipped);
- ``cl/accuracy_matrix/{metric}``: the accuracy-matrix heatmap (an image) after each task;
- ``vocab/size``, ``vocab/new_tokens``: the vocabulary after each task and the tokens it added;
- ``task/{name}``: seconds, best_epoch and best_val_r_mean of each task;
- the text ``config`` (the resolved config) and, at the end, HParams (``log_hparams``).

``LiveBoard`` writes one method's stream from the events of a run as they arrive, each task's evaluation once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from cll_ray.io import atomic_write_text

TRAIN_TAG = "train/{lang}/{name}"
SEQUENCE_TAG = "train/{name}"
EPOCH_TAG = "epoch/{name}"
EVAL_TAG = "eval/{lang}/{metric}"
CL_TAG = "cl/{metric}/{key}"
MATRIX_TAG = "cl/accuracy_matrix/{metric}"
GROWTH_TAG = "vocab/{name}"
TASK_TAG = "task/{name}"
MATRIX_METRICS = ("t2i_r1", "i2t_r1")
ANNOTATE_UP_TO = 16  # heatmap images write the values in their cells up to this many languages
HPARAMS_RUN = "hparams"  # the sub-directory add_hparams writes to
LEDGER_FILE = "logged.json"  # in a LiveBoard's log directory: the tasks (and hparams) already written


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

    def log_train(self, lang: str, global_step: int, scalars: Mapping[str, float]) -> None:
        """``train/<name>`` (one curve across the sequence) and the loss split by task, ``train/<lang>/loss``,
        at the global step."""
        for name, value in scalars.items():
            if (v := _number(value)) is not None:
                self.writer.add_scalar(SEQUENCE_TAG.format(name=name), v, int(global_step))
        self.log_step(lang, global_step, {k: v for k, v in scalars.items() if k == "loss"})

    def log_epoch(self, global_step: int, scalars: Mapping[str, float]) -> None:
        """``epoch/<name>`` for every finite scalar, at the global step the epoch ended on."""
        for name, value in scalars.items():
            if (v := _finite(value)) is not None:
                self.writer.add_scalar(EPOCH_TAG.format(name=name), v, int(global_step))

    def log_text(self, tag: str, text: str) -> None:
        """A text (markdown) entry, e.g. the resolved config; indented so that it shows as code."""
        self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), 0)

    def log_task(self, row: Mapping) -> None:
        """Log a ``results.jsonl`` row (``task`` 0-based) at its task number, 1-based: eval scores, CL metrics,
        matrix heatmaps, vocabulary growth."""
        index = int(row["task"])
        t = index + 1
        w = self.writer
        self.keep_rows([r for k, r in sorted(self._rows.items()) if k < index])  # a re-run task replaces what followed
        self._rows[index] = dict(row)
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

    def keep_rows(self, rows: list[Mapping]) -> None:
        """The earlier task rows the next task's heatmap builds on, without logging them (written before)."""
        self._rows = {int(r["task"]): dict(r) for r in rows}

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
                title=f"after task {t}: accuracy matrix, {metric}",
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


class LiveBoard:
    """One method's (one task order's) TensorBoard, written from a run's events as they arrive and flushed, so
    that it shows the progress while the method runs.

    Each task's evaluation is written once, whatever repeats it: a worker group restarted after the task's event
    but before its checkpoint, or ``--resume``. ``logged.json`` beside the events lists what is written (after
    the events are flushed), and ``task`` skips what it lists. Training scalars lost in a restart stay lost.
    """

    def __init__(self, logdir: str | Path):
        self.tracker = Tracker(logdir)
        self.ledger = Path(logdir) / LEDGER_FILE
        try:
            stored = json.loads(self.ledger.read_text(encoding="utf-8")) if self.ledger.exists() else {}
            self.logged, self.hparams = set(stored.get("tasks", [])), bool(stored.get("hparams"))
            self.config = bool(stored.get("config"))
        except (ValueError, AttributeError, TypeError) as e:
            raise ValueError(f"{self.ledger}: not a TensorBoard ledger ({e}); delete it to write every task again") from e

    def _save(self) -> None:
        self.tracker.flush()
        atomic_write_text(self.ledger, json.dumps({"tasks": sorted(self.logged), "hparams": self.hparams,
                                                   "config": self.config}))

    def event(self, event: Mapping) -> None:
        """A ``step`` or ``epoch`` event of ``sequence.run_tasks``."""
        if event["kind"] == "step":
            self.tracker.log_train(event["lang"], event["step"], event["scalars"])
        elif event["kind"] == "epoch":
            self.tracker.log_epoch(event["step"], {k: v for k, v in event.items() if k.startswith(("train_", "val_"))})
        self.tracker.flush()

    def task(self, row: Mapping, earlier: list[Mapping] | None = None) -> bool:
        """Write the evaluation of a task (a results row) unless it is written already; ``earlier``: the rows
        before it, for the heatmap. Returns whether it was new."""
        if earlier is not None:
            self.tracker.keep_rows(earlier)
        if int(row["task"]) in self.logged:
            self.tracker.keep_rows([*self.tracker.rows, row] if earlier is None else [*earlier, row])
            return False
        self.tracker.log_task(row)
        self.logged.add(int(row["task"]))
        self._save()
        return True

    def config_text(self, text: str) -> None:
        """The resolved config as text, once per run."""
        if not self.config:
            self.tracker.log_text("config", text)
            self.config = True
            self._save()

    def finish(self, hparams: Mapping, metrics: Mapping) -> None:
        """HParams (once per run, after its last task) and close."""
        if not self.hparams:
            self.tracker.log_hparams(hparams, metrics)
            self.hparams = True
            self._save()
        self.tracker.close()
