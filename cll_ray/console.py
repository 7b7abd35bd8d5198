"""What ``cll-ray run`` prints (no Ray): one live progress line per method, a result line per finished task and
the compact final table.

On a terminal the progress lines are a ``rich`` live display redrawn in place, with the result lines printed
above it; elsewhere (a file, ``ray job logs``) plain progress lines every ``interval`` seconds, no carriage returns.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cll_ray.report.tables import ACROSS_KEYS, ACROSS_METRICS, _fmt, _value, column_bests

TABLE_WIDTH = 110  # the final table fits this many characters
BEST = "*"


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Progress:
    """Where one method (one task order) stands, from its events."""

    label: str
    tasks: int = 0
    task: int = 0  # 1-based
    lang: str = ""
    epoch: int = 0
    epochs: int = 0
    task_step: int = 0
    task_steps: int = 0
    loss: float | None = None
    started: float = field(default_factory=time.time)
    first: float | None = None  # the fraction done when this process first heard of it (a resumed run)
    done: bool = False

    def fraction(self) -> float:
        if self.done:
            return 1.0
        if not self.tasks or not self.task:
            return 0.0
        within = self.task_step / self.task_steps if self.task_steps else 0.0
        return min(1.0, (self.task - 1 + within) / self.tasks)

    def update(self, event: Mapping) -> None:
        kind = event["kind"]
        self.tasks, self.task, self.lang = int(event["tasks"]), int(event["task"]), str(event["lang"])
        if kind == "task_start":
            self.epoch, self.epochs, self.task_steps, self.task_step = 0, int(event["epochs"]), int(event["steps"]), 0
        elif kind == "step":
            self.task_step, self.loss = int(event["task_step"]), float(event["scalars"]["loss"])
            self.epoch = max(self.epoch, 1)
        elif kind == "epoch":
            self.task_step, self.epoch = int(event["task_step"]), int(event["epoch"])
        if self.first is None:
            self.first = self.fraction()

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.time()) - self.started
        if self.done:
            return f"{self.label:<20} done in {clock(elapsed)}"
        if not self.task:
            return f"{self.label:<20} starting ({clock(elapsed)})"
        gained = self.fraction() - (self.first or 0.0)
        eta = clock(elapsed * (1 - self.fraction()) / gained) if gained > 0 else "?"
        loss = f"{self.loss:.4f}" if self.loss is not None and math.isfinite(self.loss) else "-"
        epoch = f"epoch {self.epoch}/{self.epochs}" if self.epochs else "evaluating"
        return (f"{self.label:<20} task {self.task}/{self.tasks} {self.lang:<5} {epoch}  step "
                f"{self.task_step}/{self.task_steps}  loss {loss}  {clock(elapsed)} elapsed  ETA {eta}")


class ProgressConsole:
    """The run's console: ``update`` a method's progress, ``print`` a line that stays, ``close`` at the end."""

    def __init__(self, stream=None, interactive: bool | None = None, interval: float = 30.0, progress: bool = True):
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.interval = interval
        self.progress = progress
        self.states: dict[str, Progress] = {}
        self._lock = threading.Lock()
        self._last = time.time()  # the first plain progress lines come after one interval
        self._live = None
        if self.interactive and progress:
            from rich.console import Console
            from rich.live import Live

            self._live = Live("", console=Console(file=self.stream, highlight=False), refresh_per_second=2,
                              transient=True, redirect_stdout=False, redirect_stderr=False)
            self._live.start()

    def state(self, label: str) -> Progress:
        with self._lock:
            return self.states.setdefault(label, Progress(label))

    def refresh(self, force: bool = False) -> None:
        """Redraw the live display, or (not a terminal) print the progress lines when ``interval`` has passed."""
        if not self.progress:
            return
        with self._lock:
            lines = [s.line() for s in self.states.values() if not s.done or self._live is not None]
            if self._live is not None:
                from rich.text import Text

                self._live.update(Text("\n".join(lines)))
                return
            now = time.time()
            if lines and (force or now - self._last >= self.interval):
                self._last = now
                self.stream.write("".join(f"  {line}\n" for line in lines))
                self.stream.flush()

    def print(self, text: str) -> None:
        with self._lock:
            if self._live is not None:
                self._live.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None


def result_line(label: str, row: Mapping) -> str:
    """One finished task: each evaluated language's T2I R@1, then AA and F of T2I and I2T R@1."""
    cl = row.get("cl", {})
    langs = list(row.get("languages") or [])
    scores = " ".join(f"{lang} {v:.1f}" for lang, v in zip(langs, row["scores"]["t2i_r1"]))
    tasks = len(row.get("order") or langs) if not row.get("joint") else 1
    summary = "  ".join(f"{m.split('_')[0].upper()} AA {_fmt(cl.get(m, {}).get('AA'))} F {_fmt(cl.get(m, {}).get('F'))}"
                        for m in ACROSS_METRICS)
    seconds = f"  ({row['seconds']:.0f}s)" if isinstance(row.get("seconds"), int | float) else ""
    return f"{label}  task {int(row['task']) + 1}/{tasks} {row['lang']}: T2I R@1 {scores} | {summary}{seconds}"


def compact_table(results: Mapping[str, Sequence[Mapping]]) -> str:
    """Per method: T2I and I2T AA / F / Fen / plasticity after its last task (the mean over the runs or task
    orders that have it, ± the std where there are several); ``*`` marks each column's best (lowest F and Fen).
    At most TABLE_WIDTH characters wide; report.md has the full table."""
    groups: dict[str, list[Sequence[Mapping]]] = {}
    for label, rows in results.items():
        groups.setdefault(label.rsplit("/", 1)[-1], []).append(rows)
    columns = [(m, k) for m in ACROSS_METRICS for k in ACROSS_KEYS]
    values = {name: [[_value(rows[-1].get("cl", {}).get(m, {}).get(k)) if rows else math.nan for rows in runs]
                     for m, k in columns] for name, runs in groups.items()}
    means = {name: [float(sum(v) / len(v)) if v and all(map(math.isfinite, v)) else math.nan for v in cols]
             for name, cols in values.items()}
    best = column_bests(list(means.values()), [k for _, k in columns])

    def cell(name: str, c: int) -> str:
        runs = values[name][c]
        mean = means[name][c]
        if not math.isfinite(mean):
            return "-"
        text = f"{mean:.1f}"
        if len(runs) > 1:
            text += f"±{math.sqrt(sum((v - mean) ** 2 for v in runs) / len(runs)):.1f}"
        return text + (BEST if math.isfinite(best[c]) and round(mean, 1) == round(best[c], 1) else "")

    header = ["method"] + [f"{m.split('_')[0].upper()} {'plast.' if k == 'plasticity' else k}" for m, k in columns]
    body = [[name] + [cell(name, c) for c in range(len(columns))] for name in groups]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(r))
             for r in [header, *body]]
    lines.insert(1, "-" * len(lines[0]))
    if max(map(len, lines)) > TABLE_WIDTH:  # a very long method name: cut it, never the numbers
        cut = max(8, widths[0] - (max(map(len, lines)) - TABLE_WIDTH))
        return compact_table({name[:cut]: rows for name, rows in results.items()})
    return "\n".join(lines) + f"\n({BEST} best of the column; F and Fen: lower is better)"
