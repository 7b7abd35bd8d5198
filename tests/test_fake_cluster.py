"""The cluster as documented, on one machine: Ray's own ``fake_multinode`` autoscaling cluster from
cluster/local-fake.yaml (a head with CPU 0 and TRAIN_DRIVER, worker node types that scale from zero), with token
auth on. ``cll-ray run`` with two methods and a small ``cll-ray tune`` sweep go in through ``ray job submit``
with the token; Ray's own records (its node and actor tables, the autoscaler's log) then show the worker nodes
coming up for the run's request, both methods' Train workers alive at the same time on worker nodes, the trial
drivers on the head, the results written, and every worker node gone again once idle.

The head is started on its own port and temporary directory and stopped by them (helpers.stop_head), never
with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from helpers import BIN, REPO, cli_env, free_port, head_ports, stop_head, token_env, write_token

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(3000)]

TINY = ["--quiet", "data.synthxm_size=tiny", "train.epochs=1", "train.batch_size=32", "train.lr=5e-3",
        "model.language_vocab_size=600"]
METHODS = ["cll_clip", "cll_clip_teir"]
LANGS = ["en", "fr"]
IDLE_TIMEOUT_MIN = 0.25  # the test's copy: idle fake nodes go after 15 s
SCALE_DOWN_WAIT_S = 600


def _ray(env: dict, *args: str, timeout: int = 180) -> str:
    done = subprocess.run([str(BIN / "ray"), *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"ray {' '.join(args)}:\n{(done.stdout + done.stderr)[-4000:]}"
    return done.stdout


def _listed(env: dict, what: str) -> list[dict]:
    out = _ray(env, "list", what, "--detail", "--format", "json", "--limit", "10000", "--address", env["RAY_ADDRESS"])
    return json.loads(out)


@pytest.fixture(scope="module")
def fake_cluster(cli_home, tmp_path_factory):
    """The head of cluster/local-fake.yaml (its resources as the YAML declares them) on a free port, with a
    copy of the YAML that points the fake nodes at that port and removes idle nodes sooner."""
    from ray._private.services import get_node_ip_address

    work = tmp_path_factory.mktemp("fake")
    temp_dir = tempfile.mkdtemp(prefix="cllfake-", dir="/tmp")  # short: Ray's socket paths live under it
    ip, port, dashboard = get_node_ip_address(), free_port(), free_port()
    config = yaml.safe_load((REPO / "cluster" / "local-fake.yaml").read_text(encoding="utf-8"))
    config["idle_timeout_minutes"] = IDLE_TIMEOUT_MIN
    config["provider"]["gcs_address"] = f"{ip}:{port}"
    (work / "fake.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    write_token(work / "auth_token")
    head = dict(config["available_node_types"]["ray.head.default"]["resources"])
    env = {**token_env(cli_env(cli_home), work / "auth_token"), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_ADDRESS": f"{ip}:{port}",
           "RAY_DASHBOARD_URL": f"http://127.0.0.1:{dashboard}"}
    start = ["start", "--head", f"--port={port}", f"--node-ip-address={ip}", f"--num-cpus={head.pop('CPU')}",
             f"--resources={json.dumps(head)}", f"--autoscaling-config={work / 'fake.yaml'}", f"--temp-dir={temp_dir}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             *head_ports(), "--disable-usage-stats"]
    try:
        for attempt in range(3):  # on a saturated machine the head can miss Ray's registration window
            done = subprocess.run([str(BIN / "ray"), *start], env={**env, "RAY_raylet_start_wait_time_s": "120"},
                                  cwd=REPO, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                break
            stop_head(env)
            assert attempt < 2 and "timed out during startup" in done.stderr, (done.stdout + done.stderr)[-4000:]
        yield {"env": env, "work": work, "temp_dir": Path(temp_dir)}
    finally:
        stop_head(env)  # the head, the autoscaler, and the fake nodes it started (all name this GCS address)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(env: dict, *entrypoint: str) -> str:
    """`ray job submit` with the token, from the repository root. No ``--working-dir``: every fake node keeps its
    runtime environments in the one session directory they share, and a node that goes idle deletes the
    uploaded package there under the others' feet. The code is the venv's editable install of this checkout."""
    runtime_env = json.dumps({"env_vars": {k: env[k] for k in ("CLL_RAY_HOME", "RAY_ENABLE_UV_RUN_RUNTIME_ENV",
                                                                  "RAY_DATA_DISABLE_PROGRESS_BARS")}})
    command = [str(BIN / "ray"), "job", "submit", "--address", env["RAY_DASHBOARD_URL"],
               "--runtime-env-json", runtime_env, "--", *entrypoint]
    for _ in range(60):  # the head's job agent registers a while after `ray start` returns (no job made yet)
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
        if "No available agent to submit job" not in done.stderr:
            break
        time.sleep(5)
    assert done.returncode == 0 and "succeeded" in done.stdout, (done.stdout + done.stderr)[-6000:]
    return done.stdout


def _autoscaler_events(temp_dir: Path) -> list[str]:
    """The autoscaler's own account, from its log: launches and removals as it logs them, and the span of its
    status reports that list the run's ``request_resources`` bundles."""
    events, requests, stamp = [], [], ""
    for log in temp_dir.glob("session_*/logs/monitor.log"):
        for line in log.read_text(errors="replace").splitlines():
            if re.match(r"\d{4}-\d\d-\d\d ", line):
                stamp = line[:19]
            if "event_summary" in line:
                events.append(f"{stamp}  {line.split('event_summary:', 1)[1]}")
            elif "from request_resources()" in line:
                requests.append(f"{stamp}  {line.strip()}")
    if requests:
        events += [f"{requests[0]} (first report)", f"{requests[-1]} (last report)"]
    return sorted(events)


def _seconds(value) -> float:
    """A time of Ray's state CLI in seconds: ``--format json`` prints the ``*_ms`` columns as local datetimes."""
    if isinstance(value, (int, float)):
        return value / 1000
    return datetime.fromisoformat(str(value)).timestamp()


def _actor_spans(tasks: list[dict]) -> dict[str, tuple[float, float]]:
    """(first start, last end) in seconds of each actor's tasks: when it was at work (Ray's actor table has no
    times; its task table does)."""
    spans: dict[str, tuple[float, float]] = {}
    for task in tasks:
        if task.get("actor_id") and task.get("start_time_ms"):
            start, end = _seconds(task["start_time_ms"]), _seconds(task.get("end_time_ms") or task["start_time_ms"])
            first, last = spans.get(task["actor_id"], (start, end))
            spans[task["actor_id"]] = (min(first, start), max(last, end))
    return spans


def test_fake_cluster_scales_up_for_the_run_trains_side_by_side_and_scales_down(fake_cluster, tmp_path):
    env, temp_dir = fake_cluster["env"], fake_cluster["temp_dir"]
    nodes = _listed(env, "nodes")
    assert [n["is_head_node"] for n in nodes if n["state"] == "ALIVE"] == [True], nodes  # no workers yet
    (head,) = [n for n in nodes if n["is_head_node"]]
    assert head["resources_total"].get("CPU", 0) == 0 and head["resources_total"]["TRAIN_DRIVER"] == 4

    # 1. a run with two methods, and a sweep of two trials side by side, both through `ray job submit`
    t0 = time.time()
    out = submit(env, "cll-ray", "run", "--methods", ",".join(METHODS), "--langs", ",".join(LANGS), "--workers", "1",
                 *TINY, f"run.output_dir={tmp_path}", "run.name=fake")
    assert "trainers: 2 side by side, 1 worker(s) each" in out, out[-4000:]
    t_run = time.time()
    # no --concurrent: on an autoscaling cluster the sweep runs its trials side by side (up to 8), not what is up
    submit(env, "cll-ray", "tune", "tune_spaces/teir.yaml", "--samples", "2", "--orders", "1",
           *TINY, f"run.languages=[{','.join(LANGS)}]", f"run.output_dir={tmp_path}", "run.name=sweep")
    t_sweep = time.time()

    # 2. the results: every method learned every language; every trial reported after every task
    for method in METHODS:
        rows = (tmp_path / "fake" / method / "results.jsonl").read_text().splitlines()
        assert [json.loads(r)["lang"] for r in rows] == LANGS, method
    summary = json.loads((tmp_path / "fake" / "run.json").read_text())
    assert set(summary) == set(METHODS)
    trials = sorted((tmp_path / "sweep" / "trials").iterdir())
    assert len(trials) == 2 and all((t / "config.yaml").exists() for t in trials)
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["concurrent"] == 2

    # 3. idle worker nodes go: wait for the head to be alone again
    deadline = time.time() + SCALE_DOWN_WAIT_S
    while len([n for n in _listed(env, "nodes") if n["state"] == "ALIVE"]) > 1:
        assert time.time() < deadline, f"worker nodes still up {SCALE_DOWN_WAIT_S} s after the jobs:\n" + \
            _ray(env, "status", "--address", env["RAY_ADDRESS"])
        time.sleep(5)
    t_down = time.time()

    # 4. what happened, from Ray's node, actor and task tables and the autoscaler's log
    nodes = _listed(env, "nodes")
    workers = [n for n in nodes if not n["is_head_node"]]
    actors = _listed(env, "actors")
    spans = _actor_spans(_listed(env, "tasks"))
    train_workers = [a for a in actors if a["class_name"] == "RayTrainWorker" and a["actor_id"] in spans]
    run_workers = [a for a in train_workers if spans[a["actor_id"]][0] < t_run]
    sweep_workers = [a for a in train_workers if spans[a["actor_id"]][0] >= t_run]
    # a trial's driver runs in its Tune placement group, so it asks for the group's bundle resource
    # (TRAIN_DRIVER_group_<i>_<id>), not TRAIN_DRIVER itself
    trial_drivers = [a for a in actors if any(k.startswith("TRAIN_DRIVER") for k in a.get("required_resources") or {})]
    events = _autoscaler_events(temp_dir)

    # 5. the timeline, for the record (printed before the checks, so that a failure shows it too)
    def at(seconds: float) -> str:
        return f"{seconds - t0:7.1f} s"

    lines = [f"{at(t0)}  run submitted ({', '.join(METHODS)}; {', '.join(LANGS)}; --workers 1)"]
    for n in workers:
        lines.append(f"{at(_seconds(n['start_time_ms']))}  node up   {n['node_id'][-5:]} CPU {n['resources_total'].get('CPU')}")
        if n.get("end_time_ms"):
            lines.append(f"{at(_seconds(n['end_time_ms']))}  node down {n['node_id'][-5:]}")
    for a in train_workers:
        start, end = spans[a["actor_id"]]
        what = "run" if a in run_workers else "sweep"
        lines.append(f"{at(start)}  {what} Train worker at work on node {a['node_id'][-5:]} until {at(end)}")
    lines += [f"{at(t_run)}  run finished", f"{at(t_sweep)}  sweep finished (trial drivers: "
              f"{[a['node_id'][-5:] for a in trial_drivers]}, head {head['node_id'][-5:]})", f"{at(t_down)}  head alone"]
    lines = sorted(lines) + [f"autoscaler {event}" for event in events]
    (tmp_path / "timeline.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    # 6. the checks
    assert workers and all(n["state"] == "DEAD" for n in workers)
    assert all("GPU" not in n["resources_total"] for n in workers)
    assert any("request_resources" in e for e in events), "the autoscaler never saw the run's request"
    assert len(run_workers) >= 2 and sweep_workers, [a["class_name"] for a in actors]
    assert {a["node_id"] for a in train_workers} <= {n["node_id"] for n in workers}, "training on the head"
    run_spans = sorted(spans[a["actor_id"]] for a in run_workers)
    overlapping = [(a, b) for i, a in enumerate(run_spans) for b in run_spans[i + 1:] if b[0] < a[1]]
    assert overlapping, f"the two methods' Train workers never worked at the same time: {run_spans}"
    assert len(trial_drivers) >= 2 and all(a["node_id"] == head["node_id"] for a in trial_drivers), trial_drivers
