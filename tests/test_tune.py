"""A real sweep on a real Ray cluster: `cll-ray tune` killed after its first finished trial, resumed, reported.

Tiny SynthXM, 3 languages, 2 seeded orders, 4 samples of tune_spaces/teir.yaml; each trial's driver fits its own
TorchTrainer (one worker) that learns both orders and reports after every task. The sweep runs against a
`ray start --head` cluster on loopback (as under `ray job submit`), whose driver is killed and restarted.
"""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, cli, cluster_state, kill_tree

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(2700)]

SWEEP = ["tune_spaces/teir.yaml", "--samples", "4", "--orders", "2", "--quiet",
         "data.synthxm_size=tiny", "run.languages=[en,fr,ru]", "train.batch_size=32", "train.lr=5e-3",
         "model.language_vocab_size=600"]
TASKS = 6  # 2 orders x 3 languages
RESUME_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def env(ray_head):
    return ray_head  # the session's `ray start` head, shared with the job-submit test


def finished_trials(sweep_dir: Path) -> dict[str, float]:
    """Trials whose last task checkpoint (order 1, task 3) exists, with that folder's newest mtime."""
    out = {}
    for trial in (sweep_dir / "trials").glob("*"):
        last = list((trial / "checkpoints").glob("o1-task03-*"))
        if last and (last[0] / "learner-o1.pt").exists():
            out[trial.name] = max(p.stat().st_mtime for p in (trial / "checkpoints").rglob("*") if p.is_file())
    return out


def steady_after_a_finish(sweep_dir: Path) -> bool:
    """A trial finished over 5 s ago (Tune has recorded it) and every started trial has checkpointed a task: the
    kill lands in training, not while Tune or Train is placing a trial (a window this test does not aim at)."""
    done = finished_trials(sweep_dir)
    started = list((sweep_dir / "trials").glob("*"))
    return (bool(done) and time.time() - max(done.values()) > 5 and len(started) > len(done)
            and all(list((t / "checkpoints").glob("o*-task*")) for t in started))


def test_sweep_reports_every_trial_resumes_after_a_kill_and_writes_its_report(env, tmp_path):
    sweep_dir = tmp_path / "sw"
    # 1. start the sweep; kill its driver once a trial has run every task of both orders, while the others train
    proc = cli(["tune", *SWEEP, f"run.output_dir={tmp_path}", "run.name=sw"], env, start_new_session=True)
    deadline = time.time() + 900
    while not steady_after_a_finish(sweep_dir):
        if proc.poll() is not None:
            pytest.fail("the sweep ended before it could be interrupted:\n" + proc.stdout.read()[-4000:])
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(0.5)
    kill_tree(proc)
    before = finished_trials(sweep_dir)
    assert 1 <= len(before) < 4

    # 2. resume: the remaining trials run, the finished ones are not rerun
    resumed = cli(["tune", "--resume", str(sweep_dir), "--quiet"], env, start_new_session=True)
    try:
        out, _ = resumed.communicate(timeout=RESUME_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        state = cluster_state(env)
        kill_tree(resumed)
        pytest.fail(f"the resumed sweep did not end in {RESUME_TIMEOUT_S} s:\n{resumed.stdout.read()[-4000:]}\n{state}")
    assert resumed.returncode == 0, out[-4000:]
    assert "resuming sweep" in out
    after = finished_trials(sweep_dir)
    for trial_id, mtime in before.items():
        assert after.get(trial_id) == mtime, f"finished trial {trial_id} was trained again"

    # 3. every trial reported, up to the end or until ASHA stopped it at a task boundary
    from ray.tune import ExperimentAnalysis

    info = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(info["orders"]) == 2 and all(o[0] == "en" for o in info["orders"]) and info["orders"][0] != info["orders"][1]
    trials = ExperimentAnalysis(info["experiment_path"]).trials
    assert len(trials) == 4
    for trial in trials:
        last = trial.last_result
        assert "objective" in last and 1 <= last["step"] <= TASKS, trial.trial_id
        assert trial.status == "TERMINATED", (trial.trial_id, trial.status)
    complete = [t for t in trials if t.last_result["step"] == TASKS]
    # a trial that had run every task before the kill ends with its final result, whether or not its last
    # report reached Tune before the kill (a resumed Train run re-reports its last checkpointed task)
    assert set(before) <= {t.trial_id for t in complete}

    # 4. the objective (AA - F, averaged over orders) recomputed from each complete trial's accuracy matrices
    from cll_ray.checkpoint import load_checkpoint
    from cll_ray.metrics import cl_metrics
    from cll_ray.sequence import accuracy_matrix

    for trial in complete:
        folder = sweep_dir / "trials" / trial.trial_id / "checkpoints"
        last = next(folder.glob("o1-task03-*"))
        scores = []
        for k, order in enumerate(info["orders"]):
            records = load_checkpoint(last / f"learner-o{k}.pt")["learner"]["tasks"]
            assert [r["lang"] for r in records] == order
            cl = cl_metrics(accuracy_matrix(records, "t2i_r1"))
            assert trial.last_result[f"o{k}_AA"] == pytest.approx(cl["AA"])
            scores.append(cl["AA"] - cl["F"])
        assert trial.last_result["objective"] == pytest.approx(sum(scores) / 2)
        assert all(math.isfinite(s) for s in scores)

    # 5. the report: the table of best configurations, one plot per parameter, the best trial's heatmaps, HParams
    report = (sweep_dir / "report.md").read_text()
    assert "## Best configurations" in report and "± " in report
    table_rows = [line for line in report.splitlines()
                  if line.startswith("| ") and not line.startswith(("| trial", "| ---"))]
    assert len(table_rows) == len(complete)
    from cll_ray.sweep import load_space

    keys = [p.key for p in load_space(REPO / "tune_spaces" / "teir.yaml").params]
    for key in keys:
        assert (sweep_dir / "plots" / f"param_{key}.png").stat().st_size > 1000, key
    assert (sweep_dir / "plots" / "best_heatmap_o0.png").exists() and (sweep_dir / "plots" / "best_heatmap_o1.png").exists()
    assert len(list((sweep_dir / "tensorboard").glob("*/hparams/events.out.tfevents.*"))) == 4

    # 6. `cll-ray report SWEEP_DIR` rebuilds it
    again = subprocess.run([sys.executable, "-m", "cll_ray", "report", str(sweep_dir)], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "objective" in again.stdout
