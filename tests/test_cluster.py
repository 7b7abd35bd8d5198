"""cluster/: the launcher YAMLs pass Ray 2.60's own autoscaler validation, the KubeRay manifests are
well formed, and every config follows the project's rules: dashboard on localhost only, no training on
the head, Ray pinned to 2.60.0, token auth, shared storage. The commands the docs tell people to run
must parse with the real CLI and config. No network, no Ray instance."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private import util as autoscaler_util
from ray.autoscaler._private.util import prepare_config, validate_config

from cll_ray.cli import build_parser, run_configs

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RAY_VERSION = "2.60.0"
SHARED = "/mnt/shared"  # where every multi-node config mounts its shared filesystem

LAUNCHERS = ["aws-gpu.yaml", "gcp-gpu.yaml", "onprem.yaml", "local-fake.yaml"]
REAL_LAUNCHERS = [n for n in LAUNCHERS if n != "local-fake.yaml"]  # reached over SSH, set up by `ray up`
KUBE_CLUSTERS = ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"]
KUBE_STORAGE = "kuberay-shared-storage.yaml"


def _text(name: str) -> str:
    return (CLUSTER / name).read_text(encoding="utf-8")


def _raw(name: str) -> dict:
    return yaml.safe_load(_text(name))


def _prepared(name: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The config as `ray up` (and autoscaler v2) sees it: Ray's prepare_config, defaults merged in.

    The fake_multinode defaults file (example.yaml) is missing from the wheel, so for that provider the
    defaults are empty: exactly the situation of `ray start --autoscaling-config`, where the v1 autoscaler
    reads the file raw. Any key the file forgot then breaks prepare_config or validate_config here.
    """
    cfg = _raw(name)
    if cfg["provider"]["type"] == "fake_multinode":
        monkeypatch.setattr(autoscaler_util, "_get_default_config", lambda provider: {})
    return prepare_config(copy.deepcopy(cfg))


def _head_start(cfg: dict) -> str:
    commands = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    assert len(commands) == 1, cfg["head_start_ray_commands"]
    return commands[0]


def _start_flag_resources(command: str) -> dict:
    """Resources a `ray start` command line sets with --num-cpus, --num-gpus and --resources."""
    resources = {}
    for flag, key in (("--num-cpus", "CPU"), ("--num-gpus", "GPU")):
        m = re.search(rf"{flag}[= ](\d+)", command)
        if m:
            resources[key] = int(m.group(1))
    m = re.search(r"--resources[= ]'(\{.*?\})'", command)
    if m:
        resources.update(json.loads(m.group(1)))
    return resources


def _head_resources(cfg: dict) -> dict:
    """What the head advertises: its node type's resources, overridden by flags of its `ray start`."""
    resources = dict(cfg["available_node_types"][cfg["head_node_type"]]["resources"])
    if cfg["head_start_ray_commands"]:
        resources.update(_start_flag_resources(_head_start(cfg)))
    return resources


# ---------------------------------------------------------------- launcher YAMLs: Ray's own validation


def test_cluster_folder_inventory():
    yamls = {p.name for p in CLUSTER.glob("*.yaml")}
    assert yamls == set(LAUNCHERS) | set(KUBE_CLUSTERS) | {KUBE_STORAGE}, "classify new files in this test"
    assert (CLUSTER / "README.md").is_file() and (CLUSTER / "Dockerfile").is_file()


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_ray_validation(name, monkeypatch):
    cfg = _prepared(name, monkeypatch)
    validate_config(cfg)  # prepare first, then validate (ray.md §5)
    if name == "local-fake.yaml":
        validate_config(_raw(name))  # what the v1 autoscaler itself validates


def test_validation_is_not_vacuous(monkeypatch):
    good = _prepared("aws-gpu.yaml", monkeypatch)
    fractional = copy.deepcopy(good)
    fractional["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5  # schema: integers only
    with pytest.raises(jsonschema.ValidationError):
        validate_config(fractional)
    legacy = copy.deepcopy(good)
    legacy["min_workers"] = 1  # top-level min_workers is no longer a property
    with pytest.raises(jsonschema.ValidationError):
        validate_config(legacy)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_dashboard_is_never_exposed(name, monkeypatch):
    cfg = _prepared(name, monkeypatch)
    assert "0.0.0.0" not in _text(name)
    # Ray's cloud defaults start the head with --dashboard-host=0.0.0.0: our commands must replace them.
    assert "0.0.0.0" not in json.dumps(cfg)
    if name in REAL_LAUNCHERS:
        assert "--dashboard-host=127.0.0.1" in _head_start(cfg)
        assert f"ray dashboard cluster/{name}" in _text(name)


@pytest.mark.parametrize("name", REAL_LAUNCHERS)
def test_head_does_no_training(name, monkeypatch):
    head = _head_resources(_prepared(name, monkeypatch))
    assert head.get("CPU") == 0, head
    assert head.get("GPU", 0) == 0, head
    assert head.get("TRAIN_DRIVER", 0) >= 1, head  # room for Tune trial drivers


def test_fake_head_matches_its_documented_start_command():
    text = _text("local-fake.yaml")
    start = re.sub(r"\\\n#\s*", " ", text)  # the start command, continued over comment lines
    command = next(line for line in start.splitlines() if "ray start --head" in line)
    assert "RAY_FAKE_CLUSTER=1" in command and "--autoscaling-config=cluster/local-fake.yaml" in command
    head = _raw("local-fake.yaml")["available_node_types"]["ray.head.default"]
    assert _start_flag_resources(command) == head["resources"]


@pytest.mark.parametrize("name", REAL_LAUNCHERS)
def test_setup_installs_the_locked_environment_with_ray_pinned(name, monkeypatch):
    cfg = _prepared(name, monkeypatch)
    # prepare_config merges setup_commands into both lists: what each node type really runs
    for commands in (cfg["head_setup_commands"], cfg["worker_setup_commands"]):
        joined = "\n".join(commands)
        assert "uv sync --locked" in joined
        assert RAY_VERSION in joined
    # the lock the nodes sync carries the pin
    assert f'"ray[default,data,train,tune]=={RAY_VERSION}"' in (ROOT / "pyproject.toml").read_text()
    # and every file uv sync needs is mounted (relative to the repository root)
    mounted = {Path(remote).name for remote in cfg["file_mounts"]}
    assert {"pyproject.toml", "uv.lock", "README.md", "cll_ray"} <= mounted


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_node_type_has_min_and_max_workers(name, monkeypatch):
    raw, cfg = _raw(name), _prepared(name, monkeypatch)
    assert "idle_timeout_minutes" in raw
    for node_type in raw.get("available_node_types", {}).values():  # the local provider builds its own
        assert "min_workers" in node_type and "max_workers" in node_type, node_type
    types = cfg["available_node_types"]
    for node_type in types.values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
    assert sum(t["min_workers"] for t in types.values()) <= cfg["max_workers"]
    if cfg["provider"]["type"] != "local":  # on-prem: one node type for head and workers alike
        assert types[cfg["head_node_type"]]["max_workers"] == 0
    if name in ("aws-gpu.yaml", "gcp-gpu.yaml"):  # GPU workers scale from zero
        gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
        assert gpu and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)


@pytest.mark.parametrize("name", REAL_LAUNCHERS)
def test_token_auth_and_shared_storage_on_every_node(name, monkeypatch):
    cfg = _prepared(name, monkeypatch)
    init = "\n".join(cfg["initialization_commands"])
    assert "export RAY_AUTH_MODE=token" in init
    token_mounts = [remote for remote, local in cfg["file_mounts"].items() if local == "~/.ray/auth_token"]
    assert token_mounts and all(remote.endswith(".ray/auth_token") for remote in token_mounts)
    assert SHARED in init and f"CLL_RAY_HOME={SHARED}/" in init
    for local in cfg["file_mounts"].values():
        if not local.startswith("~"):
            path = (ROOT / local).resolve()
            assert path.exists(), local
            assert path != ROOT, "mounting the whole repository makes `ray up` hash .venv"


def _key_paths(text: str):
    """(line number, key path) of every block-mapping key, by indentation."""
    key = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:{}\[\]\-][^:#]*?):(?:\s|$)")
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(text.splitlines()):
        m = key.match(line)
        if not m:
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        yield i, tuple(k for _, k in stack)


def _needs_comment(name: str, path: tuple[str, ...]) -> bool:
    """Top-level keys and the keys of each section, e.g. provider.type or a node type's resources."""
    if len(path) == 1:
        return True
    if name in LAUNCHERS:
        sections = {("provider",): 2, ("auth",): 2, ("available_node_types",): 3}
    else:
        sections = {("metadata",): 2, ("spec",): 2, ("spec", "rayClusterSpec"): 3}
    return any(path[: len(prefix)] == prefix and len(path) <= depth for prefix, depth in sections.items())


@pytest.mark.parametrize("name", LAUNCHERS + KUBE_CLUSTERS + [KUBE_STORAGE])
def test_keys_are_commented(name):
    lines = _text(name).splitlines()
    checked = 0
    for i, path in _key_paths(_text(name)):
        if _needs_comment(name, path):
            checked += 1
            assert i > 0 and lines[i - 1].lstrip().startswith("#"), f"{name}:{i + 1} {'.'.join(path)}"
    assert checked >= 8


# ---------------------------------------------------------------- KubeRay manifests


def _documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(_text(name)) if d is not None]


def _cluster_spec(name: str) -> dict:
    (doc,) = _documents(name)
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]


@pytest.mark.parametrize(
    ("name", "kind"), [("kuberay-raycluster.yaml", "RayCluster"), ("kuberay-rayjob.yaml", "RayJob")]
)
def test_kuberay_manifest_kind(name, kind):
    (doc,) = _documents(name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == kind
    assert doc["metadata"]["name"]


@pytest.mark.parametrize("name", KUBE_CLUSTERS)
def test_kuberay_cluster_spec(name):
    spec = _cluster_spec(name)
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"  # no LoadBalancer/NodePort for the dashboard
    params = head["rayStartParams"]
    assert params["num-cpus"] == "0" and "num-gpus" not in params
    assert "dashboard-host" not in params
    assert json.loads(json.loads(params["resources"])) == {"TRAIN_DRIVER": 4}  # KubeRay's double quoting
    (head_container,) = head["template"]["spec"]["containers"]
    for part in ("limits", "requests"):
        assert {"cpu", "memory"} <= set(head_container["resources"][part])
        assert "nvidia.com/gpu" not in head_container["resources"][part]
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
        (container,) = group["template"]["spec"]["containers"]
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    gpu_groups = [
        g
        for g in groups
        if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0) >= 1
    ]
    assert gpu_groups and all(g["minReplicas"] == 0 for g in gpu_groups)  # scale from zero


@pytest.mark.parametrize("name", KUBE_CLUSTERS)
def test_kuberay_pods_share_storage_and_image(name):
    (pvc,) = _documents(KUBE_STORAGE)
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    base = re.search(r"^FROM (\S+)", dockerfile, re.MULTILINE).group(1)
    assert base == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    images = set()
    for pod in _pods(_cluster_spec(name)):
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        (container,) = pod["containers"]
        images.add(container["image"])
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert claims[mounts[SHARED]] == pvc["metadata"]["name"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["CLL_RAY_HOME"].startswith(SHARED + "/")
    (image,) = images  # head and workers run the same image, whose tag names its base
    assert image.endswith("-ray" + base.split(":")[1]), image


def test_rayjob_runs_cll_ray_and_cleans_up():
    (job,) = _documents("kuberay-rayjob.yaml")
    spec = job["spec"]
    assert shlex.split(spec["entrypoint"])[:2] == ["cll-ray", "run"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and runtime_env
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in runtime_env.get("env_vars", {}).items())


# ---------------------------------------------------------------- documented commands


def _documented_runs(text: str) -> list[str]:
    """Every `cll-ray run ...` command in a text, backslash continuations (also in comments) joined."""
    joined = re.sub(r"\\\n\s*#?\s*", " ", text)
    commands = []
    for m in re.finditer(r"cll-ray run(?=\s+(?:--|[\w.]+=))[^`\"\n]*", joined):  # a flag or override follows; a JSON value ends at its quote
        commands.append(m.group(0).split(" #")[0].strip())
    return commands


def _comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))


def _commands_by_source() -> dict[str, list[str]]:
    """Commands documented in YAML comments, the READMEs and the RayJob entrypoint, by file."""
    sources = {f"cluster/{n}": _comments(_text(n)) for n in LAUNCHERS + KUBE_CLUSTERS}
    sources["cluster/README.md"] = _text("README.md")
    sources["docs/cluster.md"] = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")
    found = {src: _documented_runs(text) for src, text in sources.items()}
    found["cluster/kuberay-rayjob.yaml"].append(_documents("kuberay-rayjob.yaml")[0]["spec"]["entrypoint"])
    return found


def _override(overrides: list[str], key: str) -> str | None:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith(key + "=")), None)


def test_documented_commands_parse_with_the_real_cli_and_config():
    parser = build_parser()
    found = _commands_by_source()
    for name in REAL_LAUNCHERS + KUBE_CLUSTERS:
        assert any("--resume" not in c for c in found[f"cluster/{name}"]), f"{name} documents no run"
    assert found["cluster/README.md"] and found["docs/cluster.md"]
    checked = 0
    for source, commands in found.items():
        for command in commands:
            argv = shlex.split(command.replace("$PWD", "/home/me/cll-ray"))[1:]
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{source}: `{command}` does not parse with cll_ray.cli")
            if args.resume:
                assert args.resume.startswith(SHARED) or args.resume == "RUN_DIR", (source, command)
                continue
            run_configs(args)  # every method's config: unknown keys/types and contradicting names raise
            output_dir = _override(args.overrides, "run.output_dir")
            assert output_dir and output_dir.startswith("/"), f"{source}: relative run dir in {command!r}"
            if source in (f"cluster/{n}" for n in REAL_LAUNCHERS + KUBE_CLUSTERS):
                assert output_dir.startswith(SHARED + "/"), (source, command)
            storage = _override(args.overrides, "run.storage_path")
            assert storage is None or re.match(r"^(s3|gs)://|^/", storage), (source, command)
            checked += 1
    assert checked >= 8


def test_submit_commands_use_the_tunnel_token_and_working_dir():
    for name in REAL_LAUNCHERS:
        text = re.sub(r"\\\n#\s*", " ", _text(name))
        assert re.search(
            r"RAY_AUTH_MODE=token (uv run )?ray job submit --address http://127\.0\.0\.1:8265 --working-dir \. --", text
        ), name


def test_docs_list_every_config():
    readme = _text("README.md")
    section = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")
    assert section.startswith("## Running on a cluster")
    for path in CLUSTER.iterdir():
        if path.name != "README.md":
            assert f"`{path.name}`" in readme, path.name
    for name in LAUNCHERS + KUBE_CLUSTERS + [KUBE_STORAGE]:
        assert f"cluster/{name}" in section, name


# ---------------------------------------------------------------- a first `ray up` that works, safely

CLOUD_SDK = {"aws-gpu.yaml": "boto3", "gcp-gpu.yaml": "google-api-python-client"}
DOCS = ["cluster/README.md", "docs/cluster.md"]


def _doc(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", list(CLOUD_SDK))
def test_launcher_sdk_comes_with_uv_not_pip(name):
    """The venv has no pip: the client-side cloud SDK is added by `uv run --with`, in the file and the docs."""
    sdk = CLOUD_SDK[name]
    for source in [f"cluster/{name}", *DOCS]:
        text = _doc(source)
        assert f"pip install {sdk}" not in text and f'pip install "{sdk}' not in text, source
        for verb in ("up", "down"):
            assert f"uv run --with {sdk} ray {verb} cluster/{name}" in text, (source, verb)


@pytest.mark.parametrize("name", REAL_LAUNCHERS)
def test_token_is_private_everywhere(name, monkeypatch):
    """Ray writes ~/.ray/auth_token with the default umask (world-readable) and rsync copies it as is."""
    cfg = _prepared(name, monkeypatch)
    assert "chmod 600 ~/.ray/auth_token" in cfg["initialization_commands"]
    for source in [f"cluster/{name}", *DOCS]:
        for line in _doc(source).splitlines():
            if "get-auth-token --generate" in line:
                assert "umask 077" in line, (source, line)
    for source in DOCS:
        assert "runs anyone's code" in _doc(source), source


def test_aws_nodes_use_the_precreated_security_group(monkeypatch):
    cfg = _prepared("aws-gpu.yaml", monkeypatch)
    groups = {json.dumps(t["node_config"].get("SecurityGroupIds")) for t in cfg["available_node_types"].values()}
    assert groups == {json.dumps(["sg-YOUR-GROUP"])}, groups  # every node type: Ray creates no group of its own
    assert "mount -t nfs4" in "\n".join(cfg["initialization_commands"])
    for source in DOCS:  # how to create the group: SSH from your range, NFS (all traffic) inside it
        assert "sg-YOUR-GROUP" in _doc(source) and "--source-group sg-YOUR-GROUP" in _doc(source), source


def test_gcp_workers_have_no_public_ip_their_own_account_and_a_ready_driver(monkeypatch):
    cfg = _prepared("gcp-gpu.yaml", monkeypatch)
    types = cfg["available_node_types"]
    # every node type names its interfaces, else Ray's bootstrap gives all of them a public IP
    assert all("networkInterfaces" in t["node_config"] for t in types.values())
    for name, node_type in types.items():
        (nic,) = node_type["node_config"]["networkInterfaces"]
        assert nic["subnetwork"].endswith("/subnetworks/default")
        if name == cfg["head_node_type"]:
            assert nic["accessConfigs"], "the head needs its address for `ray up` and the tunnel"
            assert "serviceAccounts" not in node_type["node_config"]  # ray up gives it the autoscaler's
        else:
            assert not nic.get("accessConfigs"), name
            (account,) = node_type["node_config"]["serviceAccounts"]
            assert account["email"].startswith("cll-ray-worker@"), name
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all({"key": "install-nvidia-driver", "value": "True"} in t["node_config"]["metadata"]["items"]
                       for t in gpu)
    waits = [c for c in cfg["worker_setup_commands"] if "nvidia-smi" in c]
    assert waits and "install-nvidia-driver" in waits[0]  # only where the driver is installed
    assert not [c for c in cfg["head_setup_commands"] if "nvidia-smi" in c]


def test_trial_drivers_ask_for_what_the_heads_offer(monkeypatch):
    """Tune trial drivers sit on the head where it offers TRAIN_DRIVER (never on a spot worker), and on a
    sliver of a CPU on a local Ray, which has no such resource."""
    from cll_ray.distributed.tuner import TRIAL_DRIVER, trial_resources

    for name in REAL_LAUNCHERS:
        head = _head_resources(_prepared(name, monkeypatch))
        ask = trial_resources(head)
        assert set(ask) == {TRIAL_DRIVER} and 0 < ask[TRIAL_DRIVER] <= head[TRIAL_DRIVER], name
        assert f'{{"{TRIAL_DRIVER}": {ask[TRIAL_DRIVER]}}}' in _text(name)  # what the comments say
    for name in KUBE_CLUSTERS:
        head = json.loads(json.loads(_cluster_spec(name)["headGroupSpec"]["rayStartParams"]["resources"]))
        assert set(trial_resources(head)) == {TRIAL_DRIVER}
    assert trial_resources({"CPU": 2.0}) == {"CPU": 0.01}


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_what_a_run_asks_the_autoscaler_for_fits_the_gpu_node_type(name, monkeypatch):
    """The bundles a run requests (``--workers`` x methods, the config's worker shape) are each launchable on
    the GPU worker type, and the type's max_workers lets the documented run have them all at once."""
    from cll_ray.config import ExperimentConfig
    from cll_ray.distributed.driver import trainer_bundles

    cfg = ExperimentConfig.from_dict({"run": {"num_workers": 2, "use_gpu": True}})
    bundles = trainer_bundles(cfg, 2)  # the documented run: --workers 2, two methods
    assert len(bundles) == 4 and all(b == {"CPU": cfg.run.cpus_per_worker, "GPU": 1} for b in bundles)
    gpu = [t for t in _prepared(name, monkeypatch)["available_node_types"].values() if t["resources"].get("GPU")]
    (node_type,) = gpu
    assert all(b[k] <= node_type["resources"][k] for b in bundles for k in b)
    per_node = min(int(node_type["resources"][k] // b[k]) for b in bundles[:1] for k in b)
    assert per_node * node_type["max_workers"] >= len(bundles)
    assert trainer_bundles(ExperimentConfig.from_dict({"run": {"num_workers": 0}}), 2) == [{"CPU": 1.0}] * 2


# ---------------------------------------------------------------- KubeRay manifests, key by key


def _flat(obj, prefix: str = "") -> dict[str, str]:
    """Every leaf of a manifest as ``key.path -> JSON value``; list items by their name (``containers[ray-head]``)
    where they have one, else by position."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: "{}"}
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}[{v.get('name') or v.get('groupName') or i}]"))
        return out
    return {prefix: json.dumps(obj)}


def _documented_keys(heading: str) -> dict[str, str]:
    """The ``| `key path` | `value` |`` rows of cluster/README.md's table under ``heading``."""
    text = _text("README.md")
    assert heading in text, heading
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| `(.*)` \|", section, re.MULTILINE)
    assert rows, heading
    return dict(rows)


def test_raycluster_sets_exactly_what_the_docs_say():
    (doc,) = _documents("kuberay-raycluster.yaml")
    assert _flat(doc) == _documented_keys("### Every key of `kuberay-raycluster.yaml`")


def test_rayjob_cluster_is_the_raycluster_but_for_what_the_docs_say():
    (cluster,) = _documents("kuberay-raycluster.yaml")
    (job,) = _documents("kuberay-rayjob.yaml")
    job_spec = {k: v for k, v in job["spec"].items() if k != "rayClusterSpec"}
    expected = _flat(cluster["spec"], "spec.rayClusterSpec")
    expected.update(_documented_keys("### What `kuberay-rayjob.yaml` sets differently"))
    got = _flat({"apiVersion": job["apiVersion"], "kind": job["kind"], "metadata": job["metadata"],
                 "spec": {**job_spec, "rayClusterSpec": job["spec"]["rayClusterSpec"]}})
    assert got == {k: v for k, v in expected.items() if v != "(absent)"}


# GPU nodes the docs name: 8 vCPU, 32 GiB (EKS g5.2xlarge, GKE g2-standard-8). What a pod can request there is
# the node less the kubelet's reservations (GKE's are the larger: CPU 6 % of the first core, 1 % of the next,
# 0.5 % of the next two, 0.25 % above; memory 25 % of the first 4 GiB, 20 % of the next 4, 10 % of the next 8,
# 6 % of the next 112, plus 100 MiB for eviction) and what the node's daemon sets take (device plugin, logging,
# kube-proxy; 0.5 CPU and 1.5 GiB leave room for them).
GPU_NODE = {"cpu": 8.0, "memory_gi": 32.0}
DAEMON_SETS = {"cpu": 0.5, "memory_gi": 1.5}


def _allocatable(node: dict) -> dict:
    cpu_reserved = 0.06 + 0.01 + 2 * 0.005 + max(0.0, node["cpu"] - 4) * 0.0025
    m = node["memory_gi"]
    mem_reserved = (0.25 * min(m, 4) + 0.2 * min(max(m - 4, 0), 4) + 0.1 * min(max(m - 8, 0), 8)
                    + 0.06 * min(max(m - 16, 0), 112) + 100 / 1024)
    return {"cpu": node["cpu"] - cpu_reserved - DAEMON_SETS["cpu"],
            "memory_gi": node["memory_gi"] - mem_reserved - DAEMON_SETS["memory_gi"]}


def _quantity(value) -> float:
    text = str(value)
    units = {"m": 1e-3, "Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def _fits(resources: dict, node: dict) -> bool:
    free = _allocatable(node)
    return (_quantity(resources["cpu"]) <= free["cpu"] and _quantity(resources["memory"]) <= free["memory_gi"])


@pytest.mark.parametrize("name", KUBE_CLUSTERS)
def test_kuberay_gpu_pods_fit_the_documented_node(name):
    spec = _cluster_spec(name)
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        res = container["resources"]
        if res["limits"].get("nvidia.com/gpu"):
            assert res["requests"] == res["limits"]  # Ray advertises the limits: no more than was scheduled
            assert _fits(res["requests"], GPU_NODE), res["requests"]
    assert not _fits({"cpu": "8", "memory": "32Gi"}, GPU_NODE)  # the whole node never does
    for text in (_text(name), _text("README.md")):
        assert "8-vCPU / 32-GiB" in text and "580" in text


@pytest.mark.parametrize("name", KUBE_CLUSTERS)
def test_kuberay_pods_can_write_the_shared_volume_and_auth_is_on(name):
    spec = _cluster_spec(name)
    assert spec["authOptions"]["mode"] == "token"
    for pod in _pods(spec):
        assert pod["securityContext"]["fsGroup"] == 100  # the Ray images' "users" group
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert "port-forward" in _text(name)
