"""The driver's side of a run's events (no Ray): live TensorBoard and the console, from what the workers send.

Rank 0 of each method's Trainer sends small events (``sequence.run_tasks``'s ``task_start`` / ``step`` /
``epoch``, ``task`` with each finished task's results row, ``resumed`` with the rows a restored learner
holds), tagged with the method and the sequence key; ``RunMonitor.handle`` writes each to the method's
TensorBoard as it arrives and updates the console. ``finish`` then logs, from the method's last checkpoint,
any task whose event never came (lost in a worker restart), so the final TensorBoard has every task once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

from cll_ray.console import ProgressConsole, result_line
from cll_ray.tracking import LiveBoard

HPARAM_KEYS = ("train.lr", "train.epochs", "train.batch_size", "model.language_vocab_size", "run.num_workers")


def board_dir(run_dir: Path, method: str, key: str = "") -> Path:
    """A method's TensorBoard run: ``tensorboard/<method>`` (order k of several: ``tensorboard/<method>/o<k>``)."""
    return Path(run_dir) / "tensorboard" / method / key


def label(method: str, key: str = "") -> str:
    return f"{method} {key}" if key else method


def hparams_of(cfg_dict: Mapping) -> dict:
    """The settings the HParams page compares: the method's own (``method.*``) and a few of training's."""
    from cll_ray.tracking import flatten

    flat = flatten(cfg_dict)
    return {"method": flat.get("method.name", ""),
            **{k: v for k, v in flat.items() if k.startswith("method.") and k != "method.name"},
            **{k: flat[k] for k in HPARAM_KEYS if k in flat}}


class RunMonitor:
    """Events -> one ``LiveBoard`` per method and sequence, and the console. Thread-safe."""

    def __init__(self, run_dir: Path, configs: Mapping[str, Mapping], console: ProgressConsole | None = None):
        self.run_dir = Path(run_dir)
        self.configs = dict(configs)  # method -> the resolved config as a dict
        self.console = console or ProgressConsole(progress=False)
        self.boards: dict[tuple[str, str], LiveBoard] = {}
        self.started: dict[str, float] = {}  # method -> when its Trainer started (elapsed and ETA count from it)
        self._lock = threading.RLock()

    def start(self, method: str) -> None:
        """A method's Trainer starts now."""
        with self._lock:
            self.started[method] = time.time()

    def progress(self, method: str, key: str = ""):
        with self._lock:
            state = self.console.state(label(method, key))
            if method in self.started:
                state.started = min(state.started, self.started[method])
            return state

    def board(self, method: str, key: str = "") -> LiveBoard:
        with self._lock:
            if (method, key) not in self.boards:
                import yaml

                board = self.boards[method, key] = LiveBoard(board_dir(self.run_dir, method, key))
                board.config_text(yaml.safe_dump(self.configs[method], sort_keys=False))
            return self.boards[method, key]

    def handle(self, event: Mapping) -> None:
        method, key, kind = event["method"], event.get("seq", ""), event["kind"]
        with self._lock:
            board = self.board(method, key)
            if kind in ("step", "epoch"):
                board.event(event)
            if kind == "resumed":
                rows = list(event["rows"])
                for i, row in enumerate(rows):  # written before, unless its event was lost
                    self._task(method, key, row, rows[:i])
                return
            if kind == "task":
                self._task(method, key, event["row"])
                state = self.progress(method, key)
                state.done = state.done or int(event["row"]["task"]) + 1 >= int(event.get("tasks", 0) or 0)
            elif kind in ("task_start", "step", "epoch"):
                self.progress(method, key).update(event)
        self.console.refresh()

    def _task(self, method: str, key: str, row: Mapping, earlier: list | None = None) -> None:
        if self.board(method, key).task(row, earlier):
            self.console.print(result_line(label(method, key), row))

    def finish(self, method: str, key: str, rows: list[dict]) -> None:
        """A method's sequence ended: every task of ``rows`` (its results, from its checkpoint) logged once,
        HParams against the final CL metrics, the board closed."""
        with self._lock:
            board = self.board(method, key)
            for i, row in enumerate(rows):
                self._task(method, key, row, rows[:i])
            if rows:
                cl = rows[-1].get("cl", {})
                board.finish(hparams_of(self.configs[method]),
                             {f"final/{m}/{k}": cl.get(m, {}).get(k) for m in ("t2i_r1", "i2t_r1")
                              for k in ("AA", "F", "Fen")})
            self.progress(method, key).done = True
            del self.boards[method, key]
        self.console.refresh(force=True)

    def close(self) -> None:
        with self._lock:
            for board in self.boards.values():
                board.tracker.close()
            self.boards.clear()
        self.console.close()
