"""Methods under real data parallelism without Ray: two gloo processes, DDP-wrapped task modules, disjoint shards.

What Ray Train's workers do (worker.py), reduced to torch.distributed: every rank must end each task with the
same weights and the same method state (ER's memory, oEWC's Fisher), and DDP must find every trainable
parameter used in the forward (it raises at the next step otherwise, hence two steps per stage).
"""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.timeout(600)

METHODS = ["er_teir", "oewc", "mla", "lora"]
OVERRIDES = ["train.batch_size=32", "train.epochs=1", "train.lr=5e-3", "model.language_vocab_size=600",
             "train.precision=fp32", "method.memory_size=48", "method.mla_nlt_epochs=1", "method.mla_le_epochs=1"]


def _rank_main(rank: int, world: int, paths: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{paths['rendezvous']}", rank=rank, world_size=world)
    from cll_ray import dataset as ds
    from cll_ray.base_model import BaseModel, shipped_base_dir
    from cll_ray.config import load_config
    from cll_ray.continual import ContinualLearner
    from cll_ray.features import FeatureStore
    from cll_ray.sequence import run_tasks

    base = BaseModel.load(shipped_base_dir())
    features = FeatureStore.load(paths["features"])
    out = {}
    for name in METHODS:
        cfg = load_config(method=name, overrides=OVERRIDES)
        learner = ContinualLearner(base, features, paths["data"], cfg)

        def shard(lang, learner=learner):
            caps = ds.read_captions(learner.dataset_dir, lang, require_english=lang != "en")
            return learner._train_set(lang, caps).shard(rank, world)  # a disjoint shard, as Ray Data gives

        def steps_for(rows):
            steps = torch.tensor(min(2, rows // (32 // world)))
            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
            return int(steps)

        ddp = lambda module: torch.nn.parallel.DistributedDataParallel(module)  # noqa: E731
        run_tasks(learner, ["en", "fr"], None, train_set_for=shard, batch_size=32 // world, steps_for=steps_for,
                  wrap=ddp, evaluate_now=False, progress=False)
        state = learner.method.state_dict()
        out[name] = {
            "embedding": float(learner.student.token_embedding.weight.double().sum()),
            "trainable": float(sum(p.double().sum() for n, p in learner.student.named_parameters() if "banks" in n)),
            "memory": float(state["memory"]["rows"]["ids"].double().sum()) if "memory" in state else None,
            "memory_seen": state["memory"]["seen"] if "memory" in state else None,
            "fisher": float(sum(f.double().sum() for f in state["fisher"].values())) if "fisher" in state else None,
        }
    with open(paths[f"out{rank}"], "w") as f:
        json.dump(out, f)
    dist.barrier()  # both ranks done before either tears gloo down (a rank leaving early aborts the other)
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown, where gloo's threads can abort a finished rank (SIGABRT)


def test_two_ranks_end_every_task_identical(tiny_synthxm, tiny_features, tmp_path):
    tiny_features.save(tmp_path / "features")
    paths = {"rendezvous": str(tmp_path / "pg"), "features": tmp_path / "features", "data": str(tiny_synthxm),
             "out0": str(tmp_path / "r0.json"), "out1": str(tmp_path / "r1.json")}
    mp.spawn(_rank_main, args=(2, paths), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1  # same weights, memory and Fisher on both ranks
    assert r0["er_teir"]["memory_seen"] == 2 * 2 * 32  # every rank inserted all ranks' rows: 2 tasks x 2 steps
    assert r0["oewc"]["fisher"] > 0 and r0["mla"]["trainable"] != 0 and r0["lora"]["trainable"] != 0
