"""Ray Train worker: one method's language sequences, data-parallel, checkpointed after every task.

A run has one sequence (its task order); a sweep trial has one per task order, learned one after another by
independent learners in the same worker group, so a trial pays one Trainer start-up for all its orders.
Every rank runs the same deterministic per-task steps (tokenizer growth, seeded new rows, T_t, r_i) so their
learners stay identical; gradients are averaged by DDP through the wrapped module's ``forward``, and the
contrastive term gathers every rank's rows, so the objective is the global batch's whatever the worker count. Rank 0
evaluates every seen language after each task and reports a checkpoint holding every sequence's learner; a
restarted worker group (``FailureConfig``) or a resumed run continues after the last checkpointed task.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from cll_ray.base_model import BaseModel
from cll_ray.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint, task_checkpoint_name
from cll_ray.config import ExperimentConfig
from cll_ray.continual import ContinualLearner
from cll_ray.distributed.train_data import collect_train_set
from cll_ray.features import FeatureStore
from cll_ray.sequence import run_tasks, zero_shot_scores
from cll_ray.tokenization import GrowthStats
from cll_ray.wordpiece import tokenizer_from_json

REPORTED_METRICS = ("t2i_r1", "i2t_r1")  # AA and F of these go into every report


def checkpoint_file(key: str) -> str:
    """The learner file of sequence ``key`` inside a task checkpoint (a run's single sequence: learner.pt)."""
    return f"learner-{key}.pt" if key else CHECKPOINT_FILE


def single_sequence(cfg: ExperimentConfig, plan: dict) -> list[dict]:
    """A run's one sequence: its task order, the driver's growth plan, datasets named ``train_<lang>``."""
    return [{"key": "", "languages": list(cfg.run.languages), "plan": plan, "datasets": "train_"}]


def train_loop_per_worker(config: dict) -> dict:
    # 1. rebuild the config and inputs (plain dicts and absolute paths cross into Ray)
    cfg = ExperimentConfig.from_dict(config["experiment"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    base = BaseModel.load(config["base_dir"])
    features = FeatureStore.load(Path(config["features_dir"]))
    sequences = config.get("sequences") or single_sequence(cfg, config["plan"])
    device = ray.train.torch.get_device()
    objective = config.get("objective")  # a sweep's {"objective", "metric"}: reported with every task
    keep = config.get("keep_checkpoints")  # None: every task's checkpoint stays in checkpoint_dir

    # 2. resume after the last completed task (a restarted worker group, or `cll-ray run --resume`)
    restored: dict[str, dict] = {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            for seq in sequences:
                path = Path(d) / checkpoint_file(seq["key"])
                if path.exists():
                    restored[seq["key"]] = load_checkpoint(path)

    # 3. every rank reads each language whole and takes its slice of every global batch: W workers train on
    #    exactly one worker's batches (and agree on the step count by construction)
    shard_digests: dict[str, list[int]] = {}
    per_rank_batch = max(1, cfg.train.batch_size // world)

    def wrap(module):
        # prepare_model wraps in DDP when world > 1; the engine calls the wrapper's forward (gradient sync)
        return ray.train.torch.prepare_model(module) if world > 1 else module.to(device)

    # 4. every sequence's learner, restored where a checkpoint holds it
    learners: list[ContinualLearner] = []
    zero_shots: list[dict | None] = []
    offsets: list[int] = []  # tasks of the sequences before each one
    counts: list[int] = []  # tasks of each sequence (one per language, or one joint task)
    for seq in sequences:
        learner = ContinualLearner(base, features, config["dataset_dir"], cfg)
        # the driver already grew the tokenizer through the order (the same pure function): reuse its plan
        plan = seq["plan"]
        learner.use_plan(tokenizer_from_json(plan["tokenizer"]), [GrowthStats(**g) for g in plan["growth"]])
        learner.student.to(device)
        zero_shot = None
        if seq["key"] in restored:
            state = restored[seq["key"]]
            learner.load_state_dict(state["learner"])
            learner.student.to(device)
            zero_shot = state["extra"].get("zero_shot")
            if rank == 0 and len(learner.tasks) < len(learner.method.tasks(list(seq["languages"]))):
                print(f"[{cfg.method.name}{_tag(seq)}] resuming after task {len(learner.tasks)} "
                      f"({learner.tasks[-1]['lang']})", flush=True)
        offsets.append(sum(counts))
        counts.append(len(learner.method.tasks(list(seq["languages"]))))
        learners.append(learner)
        zero_shots.append(zero_shot)

    def task_metrics(k: int, record: dict) -> dict:
        metrics = {"sequence": sequences[k]["key"], "task": record["index"], "lang": record["lang"],
                   "step": offsets[k] + record["index"] + 1, "best_epoch": record["best_epoch"]}
        if rank != 0:
            return metrics
        result = record["result"]
        for metric in REPORTED_METRICS:
            metrics.update({f"{metric}_AA": result["cl"][metric]["AA"], f"{metric}_F": result["cl"][metric]["F"]})
        if objective is not None:
            from cll_ray.sweep import sweep_metrics

            latest = [lr.tasks[-1]["result"]["cl"] if lr.tasks else None for lr in learners]
            metrics.update(sweep_metrics(latest, objective["objective"], objective["metric"]))
        return metrics

    # a resumed worker group first reports its last checkpointed task again: that report may never have reached
    # the caller (a sweep trial interrupted right after its last task would otherwise end without its result)
    done = [k for k, lr in enumerate(learners) if lr.tasks]
    if restored and done:
        ray.train.report(task_metrics(done[-1], learners[done[-1]].tasks[-1]), checkpoint=None)

    # 5. learn what is left of every sequence
    for k, (seq, learner) in enumerate(zip(sequences, learners)):
        order = list(seq["languages"])
        if len(learner.tasks) >= counts[k]:
            continue
        zero_shot = zero_shots[k]
        if zero_shot is None and rank == 0:
            zero_shot = zero_shots[k] = zero_shot_scores(learner, order)

        def train_set_for(lang: str, prefix=seq["datasets"], key=seq["key"]):
            train_set = collect_train_set(ray.train.get_dataset_shard(f"{prefix}{lang}"), features)
            shard_digests[f"{key}:{lang}" if key else lang] = train_set.keys.tolist()
            return train_set.shard(rank, world)

        # after each task: rank 0 evaluates and checkpoints; every rank reports (report is a barrier)
        def on_task(learner: ContinualLearner, record: dict, k=k, seq=seq, order=order, zero_shot=zero_shot) -> None:
            metrics = task_metrics(k, record)
            if rank != 0:
                ray.train.report(metrics, checkpoint=None)
                return
            result = record["result"]
            print(f"[{cfg.method.name}{_tag(seq)}] task {record['index'] + 1}/{counts[k]} {record['lang']}: t2i R@1 "
                  f"{' '.join(f'{v:.1f}' for v in result['scores']['t2i_r1'])} | AA {metrics['t2i_r1_AA']:.1f} "
                  f"({result['seconds']:.0f}s)", flush=True)
            # the run directory keeps every task's checkpoint; Ray Train also persists it to run.storage_path
            name = f"{seq['key'] + '-' if seq['key'] else ''}{task_checkpoint_name(record['index'], record['lang'])}"
            folder = Path(config["checkpoint_dir"]) / name
            for other, other_seq, other_zero in zip(learners, sequences, zero_shots):
                if other is learner or other.tasks:  # every sequence so far: a checkpoint is self-contained
                    save_checkpoint(folder / checkpoint_file(other_seq["key"]), cfg, other.state_dict(),
                                    base.fingerprint, extra={"zero_shot": zero_shot if other is learner else other_zero,
                                                             "world_size": world, "languages": other_seq["languages"]})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_dir_name=name)
            if keep is not None:  # a sweep keeps only its newest task checkpoints (a run keeps every task's)
                older = sorted((f for f in folder.parent.iterdir() if f.is_dir() and f != folder),
                               key=lambda f: f.stat().st_mtime)
                for stale in older[: max(0, len(older) - (keep - 1))]:
                    shutil.rmtree(stale, ignore_errors=True)

        run_tasks(learner, order, zero_shot, train_set_for=train_set_for, batch_size=per_rank_batch, wrap=wrap, device=device, evaluate_now=rank == 0, progress=False,
                  on_task=on_task)

    # 6. what the driver reads back, per rank: the final embedding checksum of each sequence (the ranks must
    #    agree: gradient sync) and the row keys each rank read since this worker group started
    mine = {"checksum": [float(lr.student.token_embedding.weight.detach().double().sum()) for lr in learners],
            "shard_keys": shard_digests}
    ranks = [mine]
    if world > 1 and dist.is_initialized():
        ranks = [None] * world
        dist.all_gather_object(ranks, mine)
    checksums = [r["checksum"] for r in ranks]
    return {"tasks": sum(len(lr.tasks) for lr in learners),
            "embedding_checksums": [c[0] for c in checksums] if len(sequences) == 1 else checksums,
            "shard_keys": [r["shard_keys"] for r in ranks]}


def _tag(seq: dict) -> str:
    return f" {seq['key']}" if seq["key"] else ""
