"""The cluster connection: join the cluster a job runs on, or start a local Ray with its dashboard."""

from __future__ import annotations

import os
import time

import ray

# Python worker processes a local Ray starts at once (Ray's default: one per CPU). The raylet warns each time the
# processes started reach a multiple of 4 or more of this number, and a run starts a Train controller and a worker
# per method, the event actor and Ray Data's actors: about 8 processes on 2 CPUs. With 8 it warns only for a
# pool that is large for any machine
LOCAL_STARTUP_CONCURRENCY = 8


def ensure_ray(num_cpus: int | None = None, attempts: int = 3, log_to_driver: bool = True) -> str | None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`; ``RAY_ADDRESS=auto`` joins a cluster started
    with `ray start` on this machine), else start a new local Ray, never another process's instance. Returns the
    dashboard's address (printed once, when this process connects), or None when Ray was already connected.

    A local Ray starts with its dashboard on loopback: besides the dashboard, it serves the state API that Ray
    Train's placement-group cleaner asks whether a Train controller died (without it, that cleaner warns hundreds
    of times and cannot release a dead controller's groups). A local start is retried: on a saturated machine the
    raylet can miss Ray's fixed 30 s registration window.
    ``log_to_driver`` False: the workers' output stays in Ray's session logs (``cll-ray run`` without --verbose).
    """
    for attempt in range(1, attempts + 1):
        if ray.is_initialized():
            return None
        if os.environ.get("RAY_ADDRESS"):  # a cluster's resources are its own: num_cpus is for a local start
            return _announce(ray.init(log_to_driver=log_to_driver))
        try:
            return _announce(ray.init(
                address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                log_to_driver=log_to_driver,
                _system_config={"worker_maximum_startup_concurrency":
                                max(LOCAL_STARTUP_CONCURRENCY, num_cpus or os.cpu_count() or 1)}))
        except Exception as e:  # Ray raises a bare Exception for a node that timed out during startup
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            print(f"Ray did not start in time (attempt {attempt}/{attempts}); retrying", flush=True)
            ray.shutdown()
            time.sleep(5 * attempt)
    return None


def _announce(context) -> str | None:
    url = context.dashboard_url or None
    if url:
        print(f"Ray dashboard: http://{url}" if "://" not in url else f"Ray dashboard: {url}", flush=True)
    return url
