"""Ray Tune adapter: sweep a search space (``cll_ray.sweep``) across K task orders with HyperOpt and ASHA.

The Train V2 pattern: each trial is a small driver (``sweep_trial``) that builds its own ``TorchTrainer``, whose
workers learn every task order of the sweep one after another and report after every task; Ray's
``TuneReportCallback`` forwards those reports to Tune. The inputs (dataset, base model, features) and one
tokenized, materialized dataset per (order, language) are prepared once by the sweep driver and shared with
every trial. ASHA compares trials at the same task position (``step``); HyperOpt (behind a
``ConcurrencyLimiter``) proposes configurations. Layout of a sweep directory::

    <sweep>/sweep.json, space.yaml     what was asked (for --resume and the report)
    <sweep>/base, features              the shared inputs
    <sweep>/trials/<trial_id>/          config.yaml and the newest task checkpoint of each trial
    <storage>/tune, <storage>/train     Tune's experiment and the trials' Train runs (storage = run.storage_path,
                                        else <sweep>/storage)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import ray
from ray import tune

from cll_ray.config import ConfigError, ExperimentConfig, save_config
from cll_ray.distributed.cluster import ensure_ray
from cll_ray.distributed.driver import (
    autoscaling,
    build_trainer,
    order_sequences,
    prepare_inputs,
    requested,
    stored_plans,
    trainer_bundles,
    trainers_that_fit,
)
from cll_ray.io import atomic_write_text
from cll_ray.sweep import SearchSpace, apply_point, load_space, task_orders

SWEEP_FILE = "sweep.json"
SPACE_COPY = "space.yaml"
TUNE_NAME = "tune"


def param_space(space: SearchSpace) -> dict:
    """Tune's ``param_space``: dotted key -> Tune domain (search-space objects only: no Ray started)."""
    def domain(p):
        if p.kind == "grid":
            return tune.grid_search(list(p.args))
        if p.kind == "choice":
            return tune.choice(list(p.args))
        return getattr(tune, p.kind)(*p.args)

    return {p.key: domain(p) for p in space.params}


def storage_root(cfg: ExperimentConfig, sweep_dir: Path) -> str:
    return cfg.run.storage_path.rstrip("/") if cfg.run.storage_path else str(sweep_dir / "storage")


def experiment_path(sweep_dir: Path) -> str:
    """Where Tune keeps the sweep's experiment (read by ``cll-ray report`` and ``--resume``)."""
    info = json.loads((Path(sweep_dir) / SWEEP_FILE).read_text(encoding="utf-8"))
    return info["experiment_path"]


def sweep_trial(point: dict, shared: dict) -> None:
    """One trial: the sampled configuration learned on every task order, reporting after every task."""
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = apply_point(ExperimentConfig.from_dict(shared["experiment"]), point)
    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(shared["sweep_dir"]) / "trials" / trial_id
    save_config(cfg, trial_dir / "config.yaml")
    trainer = build_trainer(
        cfg, shared["inputs"], shared["datasets"], trial_dir, name=trial_id, sequences=shared["sequences"],
        checkpoint_dir=trial_dir / "checkpoints", storage=f"{shared['storage']}/train",
        objective=shared["objective"], callbacks=[TuneReportCallback()], keep_checkpoints=1,
    )
    trainer.fit()


def check_sweepable(cfg: ExperimentConfig) -> None:
    if cfg.run.num_workers < 1:
        raise ConfigError("a sweep trains in Ray Train workers: run.num_workers (--workers) must be at least 1 "
                          "(Ray Train's local mode is not available inside a Tune trial)")


def _prepare(space: SearchSpace, cfg: ExperimentConfig, orders: list[list[str]], sweep_dir: Path,
             progress: bool) -> dict:
    """Inputs once, and one tokenized dataset per (order, language), named ``o<k>_train_<lang>``."""
    inputs = prepare_inputs(cfg, sweep_dir, progress=progress)
    sequences, datasets = order_sequences(cfg, inputs, orders, stored_plans(cfg, inputs, orders, sweep_dir))
    return {
        "experiment": cfg.to_dict(),
        "sweep_dir": str(sweep_dir),
        "inputs": {k: inputs[k] for k in ("dataset_dir", "base_dir", "features_dir")},
        "datasets": datasets,
        "sequences": sequences,
        "storage": storage_root(cfg, sweep_dir),
        "objective": {"objective": space.objective, "metric": space.metric},
    }


TRIAL_DRIVER = "TRAIN_DRIVER"  # the custom resource of the cluster configs' head (cluster/README.md)


def trial_resources(cluster: dict) -> dict:
    """What a trial driver asks for. It only waits on its Trainer, whose workers hold the CPUs (and GPUs): on
    a cluster whose head offers ``TRAIN_DRIVER`` it sits there (never on a spot worker that takes it down),
    elsewhere (a local Ray) on a sliver of a CPU."""
    return {TRIAL_DRIVER: 0.01} if cluster.get(TRIAL_DRIVER) else {"CPU": 0.01}


# Trials side by side on an autoscaling cluster without --concurrent: what is up at start (often no GPU worker)
# says nothing of what the autoscaler will bring up. HyperOpt proposes from finished trials, so many more side by
# side would make it a random search
AUTOSCALING_TRIALS = 8


def default_concurrency(cfg: ExperimentConfig, samples: int) -> int:
    """Trials at once when ``--concurrent`` is not given: on an autoscaling cluster ``AUTOSCALING_TRIALS`` (the
    sweep asks the autoscaler for their workers), otherwise the trials that fit what is up."""
    if autoscaling():
        return max(1, min(samples, AUTOSCALING_TRIALS))
    return trainers_that_fit(cfg, ray.cluster_resources())


def _trainable(shared: dict):
    return tune.with_resources(tune.with_parameters(sweep_trial, shared=shared),
                               trial_resources(ray.cluster_resources()))


def _search_and_schedule(space: SearchSpace, cfg: ExperimentConfig, total_tasks: int, concurrent: int,
                         tasks_per_order: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    points = [space.preset_point(cfg)] if space.evaluate_preset else []
    if space.algorithm == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        searcher = ConcurrencyLimiter(
            HyperOptSearch(points_to_evaluate=points or None, n_initial_points=space.initial_points,
                           random_state_seed=space.search_seed),
            max_concurrent=concurrent)
    else:
        searcher = BasicVariantGenerator(points_to_evaluate=points or None, random_state=space.search_seed,
                                         max_concurrent=concurrent)
    if not space.asha:
        return searcher, FIFOScheduler()
    scheduler = ASHAScheduler(time_attr="step", max_t=total_tasks, grace_period=space.grace_period or tasks_per_order,
                              reduction_factor=space.reduction_factor)
    return searcher, scheduler


def run_sweep(space_file: str | Path, sweep_dir: Path, *, overrides: list[str] = (), samples: int = 20,
              orders: int | None = None, concurrent: int | None = None, resume: bool = False,
              num_cpus: int | None = None, progress: bool = True) -> tune.ResultGrid:
    """Run (or, with ``resume``, continue) a sweep; returns Tune's ResultGrid."""
    sweep_dir = Path(sweep_dir).resolve()
    if resume:
        info = json.loads((sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))
        space = load_space(sweep_dir / SPACE_COPY)
        overrides, samples, order_list = info["overrides"], info["samples"], info["orders"]
        cfg = space.base_config(overrides)
    else:
        if (sweep_dir / SWEEP_FILE).exists():
            raise FileExistsError(f"{sweep_dir}: a sweep is already there; continue it with --resume {sweep_dir}")
        space = load_space(space_file)
        cfg = space.base_config(overrides)
        order_list = task_orders(cfg.run.languages, orders or space.orders, space.order_seed)
    check_sweepable(cfg)
    ensure_ray(num_cpus)
    shared = _prepare(space, cfg, order_list, sweep_dir, progress)
    concurrent = concurrent or default_concurrency(cfg, samples)
    exp_path = f"{shared['storage']}/{TUNE_NAME}"
    if not resume:
        shutil.copyfile(space_file, sweep_dir / SPACE_COPY)
        atomic_write_text(sweep_dir / SWEEP_FILE, json.dumps({
            "space_file": str(Path(space_file).resolve()), "overrides": list(overrides), "samples": samples,
            "orders": order_list, "objective": space.objective, "metric": space.metric,
            "experiment_path": exp_path, "concurrent": concurrent,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2))
    trainable = _trainable(shared)
    if resume and tune.Tuner.can_restore(exp_path):
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        total = sum(len(o) for o in order_list)
        searcher, scheduler = _search_and_schedule(space, cfg, total, concurrent, len(order_list[0]))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(space),
            tune_config=tune.TuneConfig(
                metric="objective", mode="max", search_alg=searcher, scheduler=scheduler, num_samples=samples,
                trial_name_creator=lambda trial: trial.trial_id, trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(name=TUNE_NAME, storage_path=shared["storage"],
                                      failure_config=tune.FailureConfig(max_failures=cfg.run.max_failures),
                                      verbose=1 if progress else 0),
        )
    with requested(trainer_bundles(cfg, concurrent) if autoscaling() else []):
        return tuner.fit()

