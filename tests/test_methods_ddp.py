"""Methods under real data parallelism without Ray: two gloo processes, DDP-wrapped task modules, each rank
training on its half of every global batch.

What Ray Train's workers do (distributed/worker.py), reduced to torch.distributed: every rank must end each task
with the same weights and the same method state (ER's memory, oEWC's Fisher), DDP must find every trainable
parameter used in the forward (it raises at the next step otherwise, hence two steps per stage), and two ranks
must learn what one process learns from the same global batches.
"""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.timeout(600)

METHODS = ["cll_clip_teir", "er_teir", "oewc", "mla", "lora"]
GLOBAL_BATCH = 32
OVERRIDES = [f"train.batch_size={GLOBAL_BATCH}", "train.epochs=1", "train.lr=5e-3", "model.language_vocab_size=600",
             "train.precision=fp32", "method.memory_size=48", "method.mla_nlt_epochs=1", "method.mla_le_epochs=1"]


def _learn(name: str, rank: int, world: int, paths: dict, global_batch: int = GLOBAL_BATCH):
    """``name`` learned on en then fr, two steps per stage, as rank ``rank`` of ``world`` (1: one process)."""
    from cll_ray import dataset as ds
    from cll_ray.base_model import BaseModel, shipped_base_dir
    from cll_ray.config import load_config
    from cll_ray.continual import ContinualLearner
    from cll_ray.features import FeatureStore
    from cll_ray.sequence import run_tasks

    base = BaseModel.load(shipped_base_dir())
    learner = ContinualLearner(base, FeatureStore.load(paths["features"]), paths["data"],
                               load_config(method=name, overrides=OVERRIDES))

    def part(lang):
        caps = ds.read_captions(learner.dataset_dir, lang, require_english=lang != "en")
        return learner._train_set(lang, caps).shard(rank, world)  # this rank's slice of every global batch

    ddp = (lambda module: torch.nn.parallel.DistributedDataParallel(module)) if world > 1 else None
    run_tasks(learner, ["en", "fr"], None, train_set_for=part, batch_size=global_batch // world,
              steps_for=lambda rows: 2, wrap=ddp, evaluate_now=False, progress=False)
    return learner


def _rank_main(rank: int, world: int, paths: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{paths['rendezvous']}", rank=rank, world_size=world)
    out = {}
    for name in METHODS:
        learner = _learn(name, rank, world, paths)
        if name == "cll_clip_teir":
            torch.save(learner.student.token_embedding.weight.detach(), paths[f"embedding{rank}"])
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
             **{f"{kind}{r}": str(tmp_path / f"{kind}{r}") for kind in ("out", "embedding") for r in (0, 1)}}
    mp.spawn(_rank_main, args=(2, paths), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"out{r}").read_text()) for r in (0, 1))
    assert r0 == r1  # same weights, memory and Fisher on both ranks
    assert r0["er_teir"]["memory_seen"] == 2 * 2 * 32  # every rank inserted all ranks' rows: 2 tasks x 2 steps
    assert r0["oewc"]["fisher"] > 0 and r0["mla"]["trainable"] != 0 and r0["lora"]["trainable"] != 0
    # the same global batches in one process: the same embedding, up to the order of float reductions; the
    # batches matter far beyond that tolerance (one rank's half-batches alone learn something else)
    one = _learn("cll_clip_teir", 0, 1, paths).student.token_embedding.weight.detach()
    two = torch.load(paths["embedding0"])
    torch.testing.assert_close(two, one, rtol=0, atol=5e-5)  # Adam divides by √v: a near-zero gradient
    # coordinate turns a 1e-7 reduction difference into up to ~1e-5; one step moves a row by about lr = 5e-3
    halves = _learn("cll_clip_teir", 0, 1, paths, global_batch=GLOBAL_BATCH // 2).student.token_embedding.weight
    assert (halves.detach() - one).abs().max() > 1e-3
