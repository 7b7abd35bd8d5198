"""Resolve a run's inputs (dataset, base model) and the task loop shared by Ray workers and in-process runs.

``run_tasks`` learns the remaining languages of an order one task at a time; after each task it evaluates every
seen language on its test split (where asked to) and records the accuracy-matrix row and the CL metrics in the
task's record, so a checkpoint of the learner carries the whole results history.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cll_ray.base_model import BaseModel, shipped_base_dir
from cll_ray.config import ExperimentConfig
from cll_ray.continual import ContinualLearner
from cll_ray.methods.base import TaskSpec
from cll_ray.metrics import RETRIEVAL_KEYS, cl_metrics, joint_metrics
from cll_ray.parallel import data_parallel_rank


def cll_ray_home(cfg: ExperimentConfig | None = None) -> Path:
    """Where generated data and caches live: ``data.root``, else $CLL_RAY_HOME, else ~/.cache/cll_ray."""
    from cll_ray.layout import data_home

    return data_home(cfg.data.root if cfg else "")


def synthxm_dir(root: Path, size: str, seed: int) -> Path:
    return root / "synthxm" / f"{size}-seed{seed}"


def resolve_dataset(cfg: ExperimentConfig, progress: bool = True) -> Path:
    """The dataset folder; SynthXM is generated on first use (deterministic, cached)."""
    if cfg.data.dataset != "synthxm":
        path = Path(cfg.data.dataset).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"data.dataset: {path} is not a dataset folder (see `cll-ray data`)")
        return path
    from cll_ray.synthxm import generate_synthxm

    out = synthxm_dir(cll_ray_home(cfg), cfg.data.synthxm_size, cfg.data.seed)
    generate_synthxm(out, size=cfg.data.synthxm_size, seed=cfg.data.seed, progress=progress)
    return out


def resolve_base(cfg: ExperimentConfig, dataset_dir: Path, progress: bool = True) -> BaseModel:
    """The English base model named by ``model.base``: shipped, pretrain (cached), pretrained, or a folder."""
    base = cfg.model.base
    if base == "shipped":
        return BaseModel.load(shipped_base_dir())
    if base == "pretrain":
        from cll_ray.pretrain import PretrainConfig, load_or_pretrain

        model, _, _ = load_or_pretrain(dataset_dir, cll_ray_home(cfg), PretrainConfig(arch=cfg.model.arch), progress)
        return model
    if base == "pretrained":
        return BaseModel.from_open_clip(cfg.model.arch, cfg.model.pretrained)
    return BaseModel.load(Path(base).expanduser())


def zero_shot_scores(learner: ContinualLearner, languages: list[str]) -> dict[str, list[float]]:
    """The base model's scores on every language of the order before any task (the b_j of FWT)."""
    scores = [learner.evaluate(lang) for lang in languages]
    return {k: [s[k] for s in scores] for k in RETRIEVAL_KEYS}


def accuracy_matrix(records: list[dict], metric: str) -> np.ndarray:
    """(T, J) matrix of ``metric`` from task records' results, J = languages seen; NaN where not evaluated.

    One language per task gives the (T, T) lower-triangular matrix; joint training gives one row over all.
    """
    width = max(len(r["result"]["scores"][metric]) for r in records)
    matrix = np.full((len(records), max(width, len(records))), np.nan)
    for t, record in enumerate(records):
        values = record["result"]["scores"][metric]
        matrix[t, : len(values)] = values
    return matrix


def seen_languages(tasks: list[TaskSpec]) -> list[str]:
    """The languages trained on by ``tasks``, in order, each once."""
    return list(dict.fromkeys(lang for task in tasks for lang in task.languages))


def evaluate_task(learner: ContinualLearner, record: dict, order: list[str], zero_shot: dict, seconds: float) -> dict:
    """Evaluate every seen language after the task of ``record`` and build its results row.

    For a joint task (all languages at once) the row covers every language and the CL metrics are those of a
    single final model (``metrics.joint_metrics``): AA and plasticity = the mean over languages, FWT = the mean
    gain over zero-shot, F/Fen/BWT undefined (NaN), as no earlier model exists.
    """
    t = record["index"]
    specs = learner.method.tasks(list(order))
    seen = seen_languages(specs[: t + 1])
    scores = [learner.evaluate(lang) for lang in seen]
    record["result"] = {"scores": {k: [s[k] for s in scores] for k in RETRIEVAL_KEYS}}
    records = learner.tasks[: t + 1]
    joint = any(len(spec.languages) > 1 for spec in specs[: t + 1])
    if joint:
        cl = {k: joint_metrics(record["result"]["scores"][k], zero_shot[k][: len(seen)]) for k in RETRIEVAL_KEYS}
    else:
        cl = {k: cl_metrics(accuracy_matrix(records, k), zero_shot[k][: t + 1]) for k in RETRIEVAL_KEYS}
    record["result"].update({
        "task": t, "lang": record["lang"], "method": learner.cfg.method.name, "seconds": round(seconds, 1),
        "joint": joint, "languages": seen, "order": list(order), "growth": record["growth"],
        "best_epoch": record["best_epoch"],
        "best_val_r_mean": record["best_val"]["r_mean"], "train_loss": record["history"][-1]["train_loss"] if record["history"] else None,
        "cl": cl, "zero_shot": zero_shot,
    })
    return record["result"]


def run_tasks(
    learner: ContinualLearner,
    order: list[str],
    zero_shot: dict | None,
    *,
    train_set_for: Callable | None = None,
    batch_size: int | None = None,
    steps_for: Callable[[int], int] | None = None,
    wrap=None,
    device=None,
    evaluate_now: bool = True,
    progress: bool = True,
    on_task: Callable[[ContinualLearner, dict], None] | None = None,
    on_event: Callable[[dict], None] | None = None,
    log_every: int = 10,
) -> ContinualLearner:
    """Learn the languages of ``order`` not yet learned (resuming after ``len(learner.tasks)``).

    In-process by default; a data-parallel worker supplies its shard (``train_set_for(lang)``), its share of the
    batch, the agreed step count, a model wrapper and device, and evaluates on rank 0 only. ``on_event`` gets
    the progress as it happens (``task_start``, ``step`` every ``log_every`` steps, ``epoch``), tasks numbered
    from 1 and steps counted across the whole sequence; ``on_task`` gets each finished task.
    """
    specs = learner.method.tasks(list(order))
    emit = on_event or (lambda event: None)
    for t in range(len(learner.tasks), len(specs)):
        started = time.time()
        task = learner.begin_task(specs[t], build_train=train_set_for is None)
        if train_set_for is None or not learner.trains(task):
            train_set = task.train  # None where nothing trains (MLA's English): no shard is read
        elif task.train is not None:  # a joint task reads its data in-process: each rank takes its slice
            train_set = task.train.shard(*data_parallel_rank())
        else:
            train_set = train_set_for(task.lang)
        steps = steps_for(len(train_set)) if steps_for is not None and train_set is not None else None
        offset = sum(int(r["steps"]) for r in learner.tasks)  # the global step before this task
        here = {"task": t + 1, "tasks": len(specs), "lang": task.lang}
        emit({"kind": "task_start", **here, "step": offset, "epochs": learner.task_epochs(task),
              "steps": learner.task_steps(task, train_set, batch_size, steps)})
        outcome = learner.train_task(
            task, train_set, batch_size=batch_size, wrap=wrap, device=device, progress=progress,
            steps_per_epoch=steps, log_every=log_every,
            on_step=lambda step, s, here=here, offset=offset: emit(
                {"kind": "step", **here, "step": offset + step, "task_step": step, "scalars": s}),
            on_epoch=lambda h, here=here, offset=offset: emit(
                {"kind": "epoch", **here, **h, "epoch": h["epoch"] + 1, "task_step": h["steps"],
                 "step": offset + h["steps"]}),
        )
        record = learner.end_task(task, outcome)
        record["result"] = None
        if evaluate_now:
            evaluate_task(learner, record, order, zero_shot, time.time() - started)
        if on_task is not None:
            on_task(learner, record)
    return learner


def results_rows(records: list[dict]) -> list[dict]:
    return [r["result"] for r in records if r.get("result")]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from cll_ray.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
