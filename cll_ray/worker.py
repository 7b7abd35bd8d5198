"""Ray Train worker: one method's whole language sequence, data-parallel, checkpointed after every task.

Every rank runs the same deterministic per-task steps (tokenizer growth, seeded new rows, T_t, r_i) so their
learners stay identical; gradients are averaged by DDP through the wrapped module's ``forward``. Rank 0
evaluates every seen language after each task and reports a checkpoint of the learner; a restarted worker
group (``FailureConfig``) or a resumed run continues after the last checkpointed task.
"""

from __future__ import annotations

from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from cll_ray.base_model import BaseModel
from cll_ray.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint, task_checkpoint_name
from cll_ray.config import ExperimentConfig
from cll_ray.continual import ContinualLearner
from cll_ray.data import collect_train_set
from cll_ray.features import FeatureStore
from cll_ray.sequence import run_tasks, zero_shot_scores
from cll_ray.tokenization import ClipBPE, GrowthStats


def train_loop_per_worker(config: dict) -> dict:
    # 1. rebuild the config and inputs (plain dicts and absolute paths cross into Ray)
    cfg = ExperimentConfig.from_dict(config["experiment"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    base = BaseModel.load(config["base_dir"])
    learner = ContinualLearner(base, FeatureStore.load(Path(config["features_dir"])), config["dataset_dir"], cfg)
    # the driver already grew the tokenizer through the order (the same pure function): reuse its plan
    learner.use_plan(ClipBPE.from_json(config["plan"]["tokenizer"]), [GrowthStats(**g) for g in config["plan"]["growth"]])
    order = list(cfg.run.languages)
    device = ray.train.torch.get_device()
    learner.student.to(device)

    # 2. resume after the last completed task (a restarted worker group, or `cll-ray run --resume`)
    zero_shot = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(Path(d) / CHECKPOINT_FILE)
        learner.load_state_dict(state["learner"])
        learner.student.to(device)
        zero_shot = state["extra"].get("zero_shot")
        if rank == 0:
            print(f"[{cfg.method.name}] resuming after task {len(learner.tasks)} ({learner.tasks[-1]['lang']})", flush=True)
    if zero_shot is None and rank == 0:
        zero_shot = zero_shot_scores(learner, order)

    # 3. this rank's shard of each language, and a step count every rank agrees on
    shard_digests: dict[str, list[int]] = {}

    def train_set_for(lang: str):
        train_set = collect_train_set(ray.train.get_dataset_shard(f"train_{lang}"))
        shard_digests[lang] = train_set.keys.tolist()
        return train_set

    per_rank_batch = max(1, cfg.train.batch_size // world)

    def steps_for(rows: int) -> int:
        steps = torch.tensor(rows // per_rank_batch)
        if world > 1 and dist.is_initialized():
            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
        return int(steps)

    def wrap(module):
        # prepare_model wraps in DDP when world > 1; the engine calls the wrapper's forward (gradient sync)
        return ray.train.torch.prepare_model(module) if world > 1 else module.to(device)

    # 4. after each task: rank 0 evaluates and checkpoints; every rank reports (report is a barrier)
    def on_task(learner: ContinualLearner, record: dict) -> None:
        metrics = {"task": record["index"], "lang": record["lang"], "best_epoch": record["best_epoch"]}
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        result = record["result"]
        metrics.update({"t2i_r1_AA": result["cl"]["t2i_r1"]["AA"], "i2t_r1_AA": result["cl"]["i2t_r1"]["AA"]})
        print(f"[{cfg.method.name}] task {record['index'] + 1}/{len(order)} {record['lang']}: t2i R@1 "
              f"{' '.join(f'{v:.1f}' for v in result['scores']['t2i_r1'])} | AA {metrics['t2i_r1_AA']:.1f} "
              f"({result['seconds']:.0f}s)", flush=True)
        # the run directory keeps every task's checkpoint; Ray Train also persists it to run.storage_path
        name = task_checkpoint_name(record["index"], record["lang"])
        folder = Path(config["checkpoint_dir"]) / name
        save_checkpoint(folder / CHECKPOINT_FILE, cfg, learner.state_dict(), base.fingerprint,
                        extra={"zero_shot": zero_shot, "world_size": world})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_dir_name=name)

    run_tasks(learner, order, zero_shot, train_set_for=train_set_for, batch_size=per_rank_batch, steps_for=steps_for,
              wrap=wrap, device=device, evaluate_now=rank == 0, progress=False, on_task=on_task)

    # 5. what the driver reads back, per rank: the final embedding checksum (the ranks must agree: gradient
    #    sync) and the row keys each rank trained on since this worker group started (disjoint shards)
    mine = {"checksum": float(learner.student.token_embedding.weight.detach().double().sum()),
            "shard_keys": shard_digests}
    ranks = [mine]
    if world > 1 and dist.is_initialized():
        ranks = [None] * world
        dist.all_gather_object(ranks, mine)
    return {"tasks": len(learner.tasks), "embedding_checksums": [r["checksum"] for r in ranks],
            "shard_keys": [r["shard_keys"] for r in ranks]}
