"""The CLI as users run it, in separate processes: a driver killed mid-run and resumed; `ray job submit` to the
session's standing `ray start` head (shared with the sweep test)."""

import json
import os
import shutil
import subprocess
import time

import pytest
from helpers import BIN, REPO, cli, cli_env, kill_tree

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

TINY = ["--methods", "cll_clip_teir", "--langs", "en,fr,ru", "--workers", "1", "--quiet", "data.synthxm_size=tiny",
        "train.batch_size=32", "train.lr=5e-3", "model.language_vocab_size=600"]


@pytest.fixture(scope="module")
def env(cli_home):
    return cli_env(cli_home)


def run_cli(args, env, **kwargs):
    return cli(["run", *args], env, **kwargs)


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def matrix(run_dir):
    rows = [json.loads(line) for line in (run_dir / "cll_clip_teir" / "results.jsonl").read_text().splitlines()]
    return [r["lang"] for r in rows], [r["scores"]["t2i_r1"] + r["scores"]["i2t_r1"] for r in rows]


def test_driver_killed_mid_sequence_resumes_without_losing_or_repeating_a_task(env, tmp_path):
    # 1. an uninterrupted run, for reference
    finish(run_cli([*TINY, f"run.output_dir={tmp_path}", "run.name=straight"], env))
    # 2. the same run, its driver (and the local Ray it started) killed once task 1 is checkpointed
    proc = run_cli([*TINY, f"run.output_dir={tmp_path}", "run.name=killed"], env, start_new_session=True)
    first_checkpoint = tmp_path / "killed" / "train" / "killed-cll_clip_teir" / "task01-en"
    deadline = time.time() + 900
    while not first_checkpoint.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before its first task"
        time.sleep(0.2)
    kill_tree(proc)
    assert not (tmp_path / "killed" / "cll_clip_teir" / "results.jsonl").exists()
    # 3. resume: continues after the last completed task and reaches the same final matrix
    out = finish(run_cli(["--resume", str(tmp_path / "killed"), "--quiet"], env))
    assert "resuming" in out
    langs, resumed = matrix(tmp_path / "killed")
    assert langs == ["en", "fr", "ru"]
    assert resumed == matrix(tmp_path / "straight")[1]
    # TensorBoard, written by both drivers: every task's evaluation once
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(tmp_path / "killed" / "tensorboard" / "cll_clip_teir"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/en/t2i_r1")] == [1, 2, 3]


def test_the_console_shows_cll_rays_own_lines(env, tmp_path):
    """Not a terminal (as under `ray job submit`): the header, plain progress lines, one result line per task
    and the compact table; no Ray INFO/WARNING line (they are in RUN_DIR/ray.log), no carriage return."""
    import re

    out = finish(run_cli(["--methods", "cll_clip_teir", "--langs", "en,fr", "--workers", "1", "data.synthxm_size=tiny",
                          "train.batch_size=32", "train.lr=5e-3", "model.language_vocab_size=600",
                          f"run.output_dir={tmp_path}", "run.name=console"], env))
    (tmp_path / "console.txt").write_text(out)
    lines = out.splitlines()
    assert [line for line in lines if re.search(r"\b(INFO|WARNING)\b", line)] == []
    assert "initialized randomly" not in out and "TrainingReport(" not in out and "\r" not in out
    results = [line.split(":")[0] for line in lines if re.match(r"cll_clip_teir  task \d/2 \w+: T2I R@1", line)]
    assert results == ["cll_clip_teir  task 1/2 en", "cll_clip_teir  task 2/2 fr"]
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("method ")):]
    table = table[: table.index("")]
    assert len(table) == 4 and table[2].startswith("cll_clip_teir") and max(map(len, table)) <= 110  # + footnote
    assert lines[0] == f"run {tmp_path / 'console'}" and any("tensorboard --logdir" in line for line in lines[:5])
    assert (tmp_path / "console" / "ray.log").exists()


def test_a_failing_workers_traceback_reaches_the_console(env, tmp_path):
    """Ray's output goes to ray.log, but an error inside a worker still reaches the user, with its traceback."""
    proc = run_cli(["--methods", "cll_clip_teir", "--langs", "en,fr", "--workers", "1", "data.synthxm_size=tiny",
                    "train.batch_size=1000", "run.max_failures=0", f"run.output_dir={tmp_path}", "run.name=fails"], env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "ValueError: en: 320 training captions < batch size 1000" in out
    assert 'cll_ray/distributed/worker.py", line' in out  # the worker's own frames


def test_ctrl_c_mid_sequence_then_resume_completes_the_run(env, tmp_path):
    """Ctrl-C in the terminal (SIGINT to the run's process group) once task 1 is checkpointed: the run stops,
    its checkpoints stay readable, and --resume learns only what is left."""
    import os
    import signal

    from cll_ray.checkpoint import check_resumable, load_run_configs

    run_dir = tmp_path / "interrupted"
    # as in a terminal: SIGINT at its default. A test run from a background job (CI, `cmd &`) inherits SIGINT
    # ignored, and Python then leaves it ignored in the child: Ctrl-C would never reach the run.
    proc = run_cli([*TINY, f"run.output_dir={tmp_path}", "run.name=interrupted"], env, start_new_session=True,
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first_checkpoint = run_dir / "train" / "interrupted-cll_clip_teir" / "task01-en"
    deadline = time.time() + 900
    while not first_checkpoint.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before its first task"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        pytest.fail("the run did not stop within 120 s of Ctrl-C")
    assert proc.returncode != 0, out[-4000:]
    if (run_dir / "cll_clip_teir" / "results.jsonl").exists():
        pytest.skip("the whole run finished before Ctrl-C reached it")
    found = check_resumable(run_dir, load_run_configs(run_dir))["cll_clip_teir"]
    assert found.startswith("after task"), found
    out = finish(run_cli(["--resume", str(run_dir), "--quiet"], env))
    assert f"cll_clip_teir {found}" in out
    langs, rows = matrix(run_dir)
    assert langs == ["en", "fr", "ru"] and len(rows[-1]) == 6


def test_ray_job_submit_against_a_local_cluster(ray_head, tmp_path):
    """As the cluster docs submit: token auth on, the token from a file only its owner reads. Without the token
    the cluster refuses the job."""
    env = ray_head
    assert env["RAY_AUTH_MODE"] == "token" and oct(os.stat(env["RAY_AUTH_TOKEN_PATH"]).st_mode & 0o777) == "0o600"
    refused = subprocess.run([str(BIN / "ray"), "job", "list", "--address", env["RAY_DASHBOARD_URL"]],
                             env={k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
                             | {"HOME": str(tmp_path)}, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower()
    runtime_env = json.dumps({"env_vars": {k: env[k] for k in ("CLL_RAY_HOME", "RAY_ENABLE_UV_RUN_RUNTIME_ENV",
                                                                  "RAY_DATA_DISABLE_PROGRESS_BARS")},
                              "excludes": [".venv", "runs", ".cache", ".git"]})
    try:
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", env["RAY_DASHBOARD_URL"], "--working-dir", str(REPO),
             "--runtime-env-json", runtime_env, "--",
             "cll-ray", "run", *TINY, f"run.output_dir={tmp_path}", "run.name=job"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
        assert "succeeded" in submit.stdout
        langs, rows = matrix(tmp_path / "job")
        assert langs == ["en", "fr", "ru"] and len(rows[-1]) == 6
        assert (tmp_path / "job" / "report.md").exists()
    finally:
        shutil.rmtree(tmp_path / "job" / "train", ignore_errors=True)
