"""Self-describing task checkpoints, written atomically and loaded without unpickling arbitrary objects.

A checkpoint is one ``torch.save`` file of tensors, strings, numbers, lists and dicts only (``weights_only=True``
loads it): the resolved config, the grown tokenizer (`tokenizers` JSON), the embedding matrix with its
token frequencies, the method's state, the completed-task records and the base model's fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cll_ray.config import ExperimentConfig, load_yaml_file
from cll_ray.io import atomic_path

FORMAT = "cll-ray-checkpoint/1"
CHECKPOINT_FILE = "learner.pt"  # in each task's checkpoint folder


def task_checkpoint_name(index: int, lang: str) -> str:
    """The folder of task ``index`` (0-based) in ``<run>/<method>/checkpoints/``, numbered from 1 as the console,
    TensorBoard and ``cll-ray export --task`` number tasks: the second task, French, is ``task02-fr``."""
    return f"task{index + 1:02d}-{lang}"


def save_checkpoint(path: str | Path, cfg: ExperimentConfig, learner_state: dict, base_fingerprint: str,
                    extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": json.dumps(cfg.to_dict()),
        "base_fingerprint": base_fingerprint,
        "learner": {**learner_state, "tasks": json.dumps(learner_state["tasks"])},
        "extra": json.dumps(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Returns {"config": ExperimentConfig, "learner": state for ContinualLearner.load_state_dict, ...}."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable cll-ray checkpoint ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cll-ray checkpoint (expected format {FORMAT})")
    learner = dict(payload["learner"])
    learner["tasks"] = json.loads(learner["tasks"])
    return {
        "config": ExperimentConfig.from_dict(json.loads(payload["config"])),
        "base_fingerprint": payload["base_fingerprint"],
        "learner": learner,
        "extra": json.loads(payload["extra"]),
    }


def newest_task_checkpoints(folder: Path) -> list[Path]:
    """The learner files of the newest task checkpoint folder under ``folder`` (by write time), or []."""
    if not folder.is_dir():
        return []
    groups: dict[Path, list[Path]] = {}
    for path in folder.glob("*/learner*.pt"):
        groups.setdefault(path.parent, []).append(path)
    if not groups:
        return []
    newest = max(groups, key=lambda d: max(p.stat().st_mtime for p in groups[d]))
    return sorted(groups[newest])


def check_resumable(run_dir: Path, configs: dict[str, ExperimentConfig]) -> dict[str, str]:
    """Read every checkpoint a resumed run would start from (Ray Train's copy and the run directory's newest),
    before Ray starts; a truncated or foreign file is a ValueError naming it. Returns, per method, what was found.
    """
    found = {}
    for method, cfg in configs.items():
        storage = cfg.run.storage_path or str(run_dir / "train")
        places = [run_dir / method / "checkpoints"]
        if "://" not in storage:  # a cloud URI is read by Ray itself
            places.insert(0, Path(storage).expanduser() / f"{run_dir.name}-{method}")  # driver.build_trainer's name
        latest = None
        for place in places:
            for path in newest_task_checkpoints(place):
                try:
                    state = load_checkpoint(path)
                except ValueError as e:
                    raise ValueError(f"{e}; `--resume` would start from this file: restore it, or start the run "
                                     "again without --resume") from e
                tasks = state["learner"]["tasks"]
                if latest is None and tasks:
                    latest = f"after task {len(tasks)} ({tasks[-1]['lang']}), from {path}"
        found[method] = latest or "from task 1 (no task checkpoint yet)"
    return found


def load_run_configs(run_dir: Path) -> dict[str, ExperimentConfig]:
    """The per-method resolved configs of an existing run directory (for --resume)."""
    configs = {}
    for path in sorted(Path(run_dir).glob("*/config.yaml")):
        cfg = ExperimentConfig.from_dict(load_yaml_file(path))
        configs[cfg.method.name] = cfg
    if not configs:
        raise FileNotFoundError(f"{run_dir}: no <method>/config.yaml found; not a cll-ray run directory")
    return configs
