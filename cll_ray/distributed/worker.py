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
from cll_ray.distributed.events import EventSender
from cll_ray.distributed.train_data import collect_train_set
from cll_ray.features import FeatureStore
from cll_ray.sequence import results_rows, run_tasks, zero_shot_scores
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
    """One method's sequences on this rank: a short sequence of named steps (``SequenceWorker``)."""
    worker = SequenceWorker(config)  # 1. the config and inputs (plain dicts and absolute paths cross into Ray)
    worker.restore()  # 2. every sequence's learner, after its last checkpointed task (a restart, `--resume`)
    worker.report_restored()  # 3. a resumed worker group reports its last task again
    for k in range(len(worker.sequences)):  # 4. learn what is left of every sequence
        worker.learn(k)
    return worker.summary()  # 5. what the driver checks: embedding checksums, the rows each rank read


class SequenceWorker:
    """The state of one rank: its learners (one per sequence), what they restored, the events it sends."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.cfg = cfg = ExperimentConfig.from_dict(config["experiment"])
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
        self.base = BaseModel.load(config["base_dir"])
        self.features = FeatureStore.load(Path(config["features_dir"]))
        self.sequences = config.get("sequences") or single_sequence(cfg, config["plan"])
        self.device = ray.train.torch.get_device()
        self.objective = config.get("objective")  # a sweep's {"objective", "metric"}: reported with every task
        self.keep = config.get("keep_checkpoints")  # None: every task's checkpoint stays in checkpoint_dir
        self.events = EventSender(config.get("events"), cfg.method.name, self.rank)
        self.per_rank_batch = max(1, cfg.train.batch_size // self.world)
        self.shard_digests: dict[str, list[int]] = {}
        self.learners: list[ContinualLearner] = []
        self.zero_shots: list[dict | None] = []
        self.offsets: list[int] = []  # tasks of the sequences before each one
        self.counts: list[int] = []  # tasks of each sequence (one per language, or one joint task)
        self.restored = False

    # ---- 2. restore ------------------------------------------------------------------------------------------
    def restore(self) -> None:
        states: dict[str, dict] = {}
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                for seq in self.sequences:
                    path = Path(d) / checkpoint_file(seq["key"])
                    if path.exists():
                        states[seq["key"]] = load_checkpoint(path)
        self.restored = bool(states)
        for seq in self.sequences:
            learner = ContinualLearner(self.base, self.features, self.config["dataset_dir"], self.cfg)
            # the driver already grew the tokenizer through the order (the same pure function): reuse its plan
            plan = seq["plan"]
            learner.use_plan(tokenizer_from_json(plan["tokenizer"]), [GrowthStats(**g) for g in plan["growth"]])
            zero_shot = None
            if seq["key"] in states:
                learner.load_state_dict(states[seq["key"]]["learner"])
                zero_shot = states[seq["key"]]["extra"].get("zero_shot")
                # the driver's TensorBoard: the tasks done, in case their events were lost
                self.events.send({"kind": "resumed", "rows": results_rows(learner.tasks)}, seq["key"])
            learner.student.to(self.device)
            self.offsets.append(sum(self.counts))
            self.counts.append(len(learner.method.tasks(list(seq["languages"]))))
            self.learners.append(learner)
            self.zero_shots.append(zero_shot)

    # ---- 3. report the restored task -------------------------------------------------------------------------
    def report_restored(self) -> None:
        """The last checkpointed task's report may never have reached the caller (a sweep trial interrupted
        right after its last task would otherwise end without its result)."""
        done = [k for k, lr in enumerate(self.learners) if lr.tasks]
        if self.restored and done:
            ray.train.report(self.task_metrics(done[-1], self.learners[done[-1]].tasks[-1]), checkpoint=None)

    def task_metrics(self, k: int, record: dict) -> dict:
        metrics = {"sequence": self.sequences[k]["key"], "task": record["index"], "lang": record["lang"],
                   "step": self.offsets[k] + record["index"] + 1, "best_epoch": record["best_epoch"]}
        if self.rank != 0:
            return metrics
        result = record["result"]
        for metric in REPORTED_METRICS:
            metrics.update({f"{metric}_AA": result["cl"][metric]["AA"], f"{metric}_F": result["cl"][metric]["F"]})
        if self.objective is not None:
            from cll_ray.sweep import sweep_metrics

            latest = [lr.tasks[-1]["result"]["cl"] if lr.tasks else None for lr in self.learners]
            metrics.update(sweep_metrics(latest, self.objective["objective"], self.objective["metric"]))
        return metrics

    # ---- 4. learn a sequence ---------------------------------------------------------------------------------
    def wrap(self, module):
        # prepare_model wraps in DDP when world > 1; the engine calls the wrapper's forward (gradient sync)
        return ray.train.torch.prepare_model(module) if self.world > 1 else module.to(self.device)

    def learn(self, k: int) -> None:
        seq, learner = self.sequences[k], self.learners[k]
        order = list(seq["languages"])
        if len(learner.tasks) >= self.counts[k]:
            return
        if self.zero_shots[k] is None and self.rank == 0:
            self.zero_shots[k] = zero_shot_scores(learner, order)

        def train_set_for(lang: str):
            # every rank reads the language whole and takes its slice of every global batch: W workers train on
            # exactly one worker's batches (and agree on the step count by construction)
            train_set = collect_train_set(ray.train.get_dataset_shard(f"{seq['datasets']}{lang}"), self.features)
            self.shard_digests[f"{seq['key']}:{lang}" if seq["key"] else lang] = train_set.keys.tolist()
            return train_set.shard(self.rank, self.world)

        run_tasks(learner, order, self.zero_shots[k], train_set_for=train_set_for, batch_size=self.per_rank_batch,
                  wrap=self.wrap, device=self.device, evaluate_now=self.rank == 0,
                  progress=False, on_task=lambda learner, record: self.task_done(k, record),
                  on_event=self.events.for_sequence(seq["key"]), log_every=self.cfg.run.log_every)

    def task_done(self, k: int, record: dict) -> None:
        """After each task: rank 0 sends its results, checkpoints every sequence; every rank reports (report
        is a barrier)."""
        metrics = self.task_metrics(k, record)
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        seq = self.sequences[k]
        self.events.send({"kind": "task", "row": record["result"], "tasks": self.counts[k]}, seq["key"])
        # the run directory keeps every task's checkpoint; Ray Train also persists it to run.storage_path
        name = f"{seq['key'] + '-' if seq['key'] else ''}{task_checkpoint_name(record['index'], record['lang'])}"
        folder = Path(self.config["checkpoint_dir"]) / name
        for other, other_seq, other_zero in zip(self.learners, self.sequences, self.zero_shots):
            if other is self.learners[k] or other.tasks:  # every sequence so far: a checkpoint is self-contained
                save_checkpoint(folder / checkpoint_file(other_seq["key"]), self.cfg, other.state_dict(),
                                self.base.fingerprint, extra={"zero_shot": other_zero, "world_size": self.world,
                                                              "languages": other_seq["languages"]})
        self.events.wait()
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_dir_name=name)
        if self.keep is not None:  # a sweep keeps only its newest task checkpoints (a run keeps every task's)
            older = sorted((f for f in folder.parent.iterdir() if f.is_dir() and f != folder),
                           key=lambda f: f.stat().st_mtime)
            for stale in older[: max(0, len(older) - (self.keep - 1))]:
                shutil.rmtree(stale, ignore_errors=True)

    # ---- 5. summary ------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Per rank: the final embedding checksum of each sequence (the ranks must agree: gradient sync) and
        the row keys each rank read since this worker group started."""
        self.events.wait()
        mine = {"checksum": [float(lr.student.token_embedding.weight.detach().double().sum()) for lr in self.learners],
                "shard_keys": self.shard_digests}
        ranks = [mine]
        if self.world > 1 and dist.is_initialized():
            ranks = [None] * self.world
            dist.all_gather_object(ranks, mine)
        checksums = [r["checksum"] for r in ranks]
        return {"tasks": sum(len(lr.tasks) for lr in self.learners),
                "embedding_checksums": [c[0] for c in checksums] if len(self.sequences) == 1 else checksums,
                "shard_keys": [r["shard_keys"] for r in ranks]}
