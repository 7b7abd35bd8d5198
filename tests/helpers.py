"""Helpers for tests that run the CLI in separate processes."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def cli_env(home: Path) -> dict[str, str]:
    """The environment of a CLI subprocess: data under ``home``, quiet local Ray without auth."""
    return {**os.environ, "CLL_RAY_HOME": str(home), "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def cli(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cll_ray", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a CLI process started with ``start_new_session=True``, and everything it started (its local Ray)."""
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_token(path: Path) -> Path:
    """A fresh Ray auth token at ``path``, readable by its owner only, as the cluster docs make theirs (Ray's own
    `get-auth-token --generate` writes with the default umask: world-readable)."""
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())
    return path


def token_env(env: dict, token_file: Path) -> dict:
    """``env`` with token auth on, the token read from ``token_file`` (RAY_AUTH_TOKEN_PATH), as a client of the
    documented clusters runs."""
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def head_ports() -> list[str]:
    """`ray start --head` flags for every port that would otherwise be a fixed default (the dashboard agent's
    52365, the Ray client's 10001), which another Ray on this machine may hold."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"]


def start_head(env: dict, num_cpus: int = 2) -> dict:
    """``ray start --head`` on loopback; returns ``env`` with RAY_ADDRESS pointing at it (and RAY_DASHBOARD_URL).

    Its processes inherit RAY_ADDRESS, so Ray's own state API inside them finds this cluster even when another
    Ray instance runs on the same machine.
    """
    port, dashboard = free_port(), free_port()
    env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_DASHBOARD_URL": f"http://127.0.0.1:{dashboard}"}
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", *head_ports(),
         "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    return env


def stop_head(env: dict) -> None:
    """Stop only the cluster at env's RAY_ADDRESS (``ray stop`` would stop every Ray on the machine)."""
    address = env["RAY_ADDRESS"]
    port = address.rsplit(":", 1)[1]
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        # the monitor and log monitor name the GCS by the node's own IP, not the loopback address given
        if address in cmdline or f"--gcs_server_port={port}" in cmdline or re.search(
                rf"--gcs-address=\S+:{port}(\s|$)", cmdline):
            try:
                p.kill()
            except psutil.Error:
                pass
    # `ray start` recorded the cluster for address auto-detection; forget it as `ray stop` does
    current = Path("/tmp/ray/ray_current_cluster")
    if current.exists() and current.read_text().strip().endswith(f":{port}"):
        current.unlink(missing_ok=True)


def cluster_state(env: dict) -> str:
    """What the cluster at env's RAY_ADDRESS holds (resources, placement groups, live actors), for a failure message
    when a run that should have ended is still waiting."""
    ray = str(BIN / "ray")
    commands = [[ray, "status", "--address", env["RAY_ADDRESS"]],
                [ray, "list", "placement-groups", "--detail", "--address", env["RAY_ADDRESS"]],
                [ray, "list", "actors", "--filter", "state!=DEAD", "--address", env["RAY_ADDRESS"]],
                [ray, "list", "jobs", "--address", env["RAY_ADDRESS"]]]
    parts = []
    for command in commands:
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
            parts.append(f"$ {' '.join(command[1:4])}\n{done.stdout[-6000:]}{done.stderr[-2000:]}")
        except subprocess.TimeoutExpired:
            parts.append(f"$ {' '.join(command[1:4])}: no answer in 60 s")
    return "\n".join(parts)
