import os

# No GPU, no network, quiet Ray: set before anything imports torch or ray.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")

import pytest  # noqa: E402

TINY_LANGS = ["en", "fr", "de", "ru", "zh"]


@pytest.fixture(scope="session")
def tiny_synthxm(tmp_path_factory):
    """A tiny SynthXM in five languages (Latin, Cyrillic, Han scripts)."""
    from cll_ray.synthxm import generate_synthxm

    out = tmp_path_factory.mktemp("data") / "synthxm-tiny"
    generate_synthxm(out, size="tiny", languages=TINY_LANGS, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def shipped_base():
    from cll_ray.base_model import BaseModel, shipped_base_dir

    return BaseModel.load(shipped_base_dir())


@pytest.fixture(scope="session")
def tiny_features(tiny_synthxm, shipped_base, tmp_path_factory):
    from cll_ray.features import load_or_compute_features

    return load_or_compute_features(tiny_synthxm, shipped_base, tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="session")
def cli_home(tmp_path_factory):
    """The session's data home: tiny SynthXM (every language) where `data.synthxm_size=tiny` looks. Runs in this
    process and CLI subprocesses share it, so teacher features are computed once per session."""
    from cll_ray.synthxm import generate_synthxm

    home = tmp_path_factory.mktemp("cli-home")
    generate_synthxm(home / "synthxm" / "tiny-seed0", size="tiny", progress=False)
    return home


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for every in-process Ray test of the session (started on first use), with its
    dashboard on loopback as a run's (``ensure_ray``): Ray Train's placement-group cleaner needs its state API."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             object_store_memory=300 * 1024**2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_head(cli_home, tmp_path_factory):
    """One `ray start --head` on loopback for the CLI tests that need a standing cluster (job submit, the sweep),
    with token auth on as on the documented clusters (the token in a 0600 file, RAY_AUTH_TOKEN_PATH); stopped by
    its own address only, never another process's Ray. Yields the CLI environment pointing at it."""
    from helpers import cli_env, start_head, stop_head, token_env, write_token

    token = write_token(tmp_path_factory.mktemp("auth") / "auth_token")
    env = start_head(token_env(cli_env(cli_home), token))
    yield env
    stop_head(env)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: on two shared cores it is several times faster than two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """Tests on the in-process Ray run first, one after another, so that its instance can stop before the tests
    that start Ray in subprocesses or a `ray start` head (two idle instances on two cores only slow both)."""
    items.sort(key=lambda item: "ray_local" not in getattr(item, "fixturenames", ()))


def pytest_runtest_teardown(item, nextitem):
    if "ray_local" in getattr(item, "fixturenames", ()) and (
            nextitem is None or "ray_local" not in getattr(nextitem, "fixturenames", ())):
        import ray

        ray.shutdown()  # the last test on it: the session fixture's own teardown then finds nothing to stop
