"""The one channel from a run's workers to its driver: a Ray actor the driver creates per run.

Rank 0 of each Trainer pushes small events to it without waiting (``EventSender``); a driver thread
(``EventPump``) drains it every ``interval`` seconds and hands each event to a callback (``monitor.RunMonitor``:
TensorBoard and the console). In local mode (``run.num_workers=0``) the train loop runs in the driver
process and sends through the same actor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import ray


@ray.remote(num_cpus=0, max_restarts=0)
class EventSink:
    """A list of events: ``push`` appends (in the order one sender sent them), ``drain`` empties."""

    def __init__(self) -> None:
        self._events: list[dict] = []

    def push(self, events: list[dict]) -> None:
        self._events.extend(events)

    def drain(self) -> list[dict]:
        events, self._events = self._events, []
        return events


class EventSender:
    """A worker's side: ``send(event)`` tags it with the method and sequence and pushes it without waiting;
    a rank other than 0, or no sink (a sweep trial), sends nothing."""

    def __init__(self, sink, method: str, rank: int) -> None:
        self.sink = sink if rank == 0 else None
        self.method = method
        self._last = None

    def send(self, event: dict, seq: str = "") -> None:
        if self.sink is not None:
            self._last = self.sink.push.remote([{**event, "method": self.method, "seq": seq}])  # not waited for

    def wait(self) -> None:
        """Until every event sent so far is in the sink (one actor's calls run in the order sent): once per
        task, before its checkpoint is reported, so that a task reported is a task the driver heard of."""
        if self._last is not None:
            ray.get(self._last)
            self._last = None

    def for_sequence(self, seq: str) -> Callable[[dict], None]:
        return lambda event: self.send(event, seq)


class EventPump:
    """The driver's side: a daemon thread draining ``sink`` into ``handle``; ``stop`` drains what is left.

    An error in ``handle`` (a full disk for TensorBoard) is kept and raised by ``stop``, not lost in the thread.
    """

    def __init__(self, handle: Callable[[dict], None], interval: float = 0.5) -> None:
        self.sink = EventSink.remote()
        self.handle = handle
        self.interval = interval
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._draining = threading.Lock()  # one drain at a time: events are handled in the order sent
        self._thread = threading.Thread(target=self._run, name="run-events", daemon=True)

    def start(self) -> EventPump:
        self._thread.start()
        return self

    def flush(self) -> None:
        """Handle every event sent so far (e.g. before a method's outputs are written)."""
        with self._draining:
            for event in ray.get(self.sink.drain.remote()):
                if self.error is None:
                    try:
                        self.handle(event)
                    except BaseException as e:  # raised by stop(), on the driver's thread
                        self.error = e

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception as e:  # the actor gone (Ray shutting down): stop() reports it
                self.error = self.error or e
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            if self.error is None:
                self.flush()  # what arrived since the last poll
            ray.kill(self.sink)
        except Exception as e:  # Ray already shut down
            self.error = self.error or e
        if self.error is not None:
            raise RuntimeError(f"writing the run's events failed: {self.error}") from self.error
