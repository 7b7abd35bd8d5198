"""The cluster connection: join the cluster a job runs on, or start a local Ray, and keep it free of placement
groups that dead drivers left behind."""

from __future__ import annotations

import os
import threading
import time

import ray

ORPHAN_CHECK_S = 30.0
ORPHAN_THREAD = "orphan-placement-groups"


def ensure_ray(num_cpus: int | None = None, attempts: int = 3, log_to_driver: bool = True) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`; ``RAY_ADDRESS=auto`` joins a cluster started
    with `ray start` on this machine), else start a new local Ray, never another process's instance.

    A local start is retried: on a saturated machine the raylet can miss Ray's fixed 30 s registration window.
    ``log_to_driver`` False: the workers' output stays in Ray's session logs (``cll-ray run`` without --verbose).
    """
    for attempt in range(1, attempts + 1):
        if ray.is_initialized():
            return
        if os.environ.get("RAY_ADDRESS"):  # a cluster's resources are its own: num_cpus is for a local start
            ray.init(log_to_driver=log_to_driver)
            release_orphaned_placement_groups()  # a killed earlier driver's, before this one waits for CPUs
            if not any(t.name == ORPHAN_THREAD for t in threading.enumerate()):  # one per process, across re-inits
                threading.Thread(target=_keep_releasing_orphans, args=(ORPHAN_CHECK_S,), daemon=True,
                                 name=ORPHAN_THREAD).start()
            return
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
        except Exception as e:  # Ray raises a bare Exception for a node that timed out during startup
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            print(f"Ray did not start in time (attempt {attempt}/{attempts}); retrying", flush=True)
            ray.shutdown()
            time.sleep(5 * attempt)


def release_orphaned_placement_groups() -> int:
    """Remove placement groups whose creating driver is dead. A driver killed while Tune or Train was requesting
    one can leave it registered after Ray's job cleanup (seen here: registered 0.09 s after its job ended),
    holding its CPUs for good, so a resumed sweep would wait forever. Such a late group's flags are never set:
    neither ``creator_job_dead`` nor ``creator_actor_dead``, although both are gone, so the job and actor tables
    decide. Detached groups, and groups whose creating actor still lives, are kept. Ray has no public API for a
    group's creator, hence its GCS tables."""
    from ray._private.state import actors, jobs, state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    dead_jobs = {job["JobID"] for job in jobs() if job["IsDead"]}
    released = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if is_orphaned(group, dead_jobs, lambda actor_id: actors(actor_id=actor_id).get("State", "DEAD")):
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
            released += 1
    if released:
        print(f"released {released} placement group(s) left by a driver that died", flush=True)
    return released


def is_orphaned(group, dead_jobs: set[str], actor_state) -> bool:
    """Whether a placement group (GCS ``PlacementGroupTableData``) belongs to no one: not removed, not detached,
    created by a job in ``dead_jobs`` (hex ids), by no actor or by one ``actor_state(hex id)`` says is DEAD."""
    from ray.core.generated import gcs_pb2

    if (group.state == gcs_pb2.PlacementGroupTableData.REMOVED or group.is_detached
            or group.creator_job_id.hex() not in dead_jobs):
        return False
    if group.creator_actor_dead or not group.creator_actor_id.strip(b"\xff"):
        return True
    return actor_state(group.creator_actor_id.hex()) == "DEAD"  # a detached actor of the dead job may use it


def _keep_releasing_orphans(interval_s: float) -> None:
    """A driver that joins a shared cluster keeps freeing what drivers that die meanwhile leave behind."""
    while ray.is_initialized():
        time.sleep(interval_s)
        try:
            release_orphaned_placement_groups()
        except Exception as e:  # best effort: never take the run down (nor speak while Ray shuts down)
            if ray.is_initialized():
                print(f"could not check for orphaned placement groups: {e}", flush=True)
