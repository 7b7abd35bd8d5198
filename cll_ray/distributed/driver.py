"""The driver: prepares a run once, fits one Ray Train ``TorchTrainer`` per method, writes the outputs.

Structure (chosen for the time budget, README "How a run is structured"): the tokenizer after each task is a
pure function of the data and the order, so the driver tokenizes every language up front with Ray Data and
hands all of them to a single Trainer per method, whose workers learn the whole sequence and report a
checkpoint after each task. One Trainer start-up (about 20 s here) per method instead of per task, and still
task-granular recovery: a restarted worker group, or ``cll-ray run --resume``, continues after the last
checkpointed task. Methods run side by side as independent Trainers on the same cluster.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

from cll_ray import dataset as ds
from cll_ray.base_model import BaseModel
from cll_ray.checkpoint import load_checkpoint, load_run_configs  # noqa: F401 - load_run_configs: its home was here
from cll_ray.config import ExperimentConfig, save_config
from cll_ray.console import ProgressConsole
from cll_ray.continual import ContinualLearner
from cll_ray.distributed.cluster import ensure_ray
from cll_ray.distributed.events import EventPump
from cll_ray.distributed.feature_job import compute_features
from cll_ray.distributed.train_data import build_train_datasets
from cll_ray.distributed.worker import checkpoint_file, single_sequence, train_loop_per_worker
from cll_ray.features import FeatureStore, load_or_compute_features
from cll_ray.io import atomic_write_text
from cll_ray.methods import build_method
from cll_ray.monitor import RunMonitor
from cll_ray.report import ORDERS_DIR
from cll_ray.sequence import cll_ray_home, resolve_base, resolve_dataset, results_rows, write_jsonl
from cll_ray.tokenization import GrowthStats
from cll_ray.wordpiece import tokenizer_from_json


def trainers_that_fit(cfg: ExperimentConfig, resources: dict) -> int:
    """How many of these Trainers (a run's methods, a sweep's trials) the cluster holds at once: its CPUs (and
    GPUs) over what one Trainer's workers take. Never zero: one always starts and waits for resources."""
    cpus = cfg.run.cpus_per_worker * max(1, cfg.run.num_workers)  # local mode trains in one process
    fit = int(float(resources.get("CPU", 1)) // cpus)
    if cfg.run.use_gpu:
        fit = min(fit, int(float(resources.get("GPU", 0)) // max(1, cfg.run.num_workers)))
    return max(1, fit)


def trainer_bundles(cfg: ExperimentConfig, trainers: int) -> list[dict]:
    """What ``trainers`` Trainers of ``cfg`` take side by side, one bundle per Ray Train worker: the shape of
    the config's workers, so that the autoscaler launches the node type that fits them."""
    worker = {"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if cfg.run.use_gpu else {})}
    return [dict(worker) for _ in range(max(1, cfg.run.num_workers) * trainers)]


def autoscaling() -> bool:
    """Whether an autoscaler that launches nodes watches this cluster: v2 sets its flag in the GCS; v1 writes its
    status there on every update. Every head runs a v1 monitor, but one started without an autoscaling config
    (a local Ray, `ray start` by hand) is read-only, and names each node's type after the node (``node_<id>``)
    instead of a node type of the config. Where it launches nodes, what is up now says nothing of what a run
    will get."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2():
        return True
    status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {} if status else {}
    return any(node_type != f"node_{node}" for node, node_type in mapping.items())


def trainers_at_once(cfg: ExperimentConfig, trainers: int) -> int:
    """How many of ``trainers`` Trainers start side by side: all of them where an autoscaler brings up what
    ``requested`` asks (Ray Train retries a worker group that waits for nodes), else what the cluster holds."""
    if autoscaling():
        return trainers
    return min(trainers, trainers_that_fit(cfg, ray.cluster_resources()))


@contextmanager
def requested(bundles: list[dict]):
    """Ask the autoscaler for ``bundles`` at once (clusters scale from zero workers: waiting for demand to
    appear task by task would start one node at a time), and withdraw the request when done, also on error,
    so that idle nodes go. Without an autoscaler the request is a key in the GCS that nothing reads."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)
    try:
        yield
    finally:
        if ray.is_initialized():
            request_resources(bundles=[])


def _check_compatible(cfgs: dict[str, ExperimentConfig]) -> ExperimentConfig:
    first = next(iter(cfgs.values()))
    for name, cfg in cfgs.items():
        for section in ("data", "model"):
            if getattr(cfg, section) != getattr(first, section):
                raise ValueError(f"method {name}: {section}.* differs from the other methods of this run")
        if (cfg.run.languages, cfg.run.orders) != (first.run.languages, first.run.orders):
            raise ValueError(f"method {name}: run.languages or run.orders differs from the other methods of this run")
    return first


def prepare_inputs(cfg: ExperimentConfig, run_dir: Path, progress: bool = True, num_cpus: int | None = None,
                   trainers: int = 1, log_to_driver: bool = True) -> dict:
    """Dataset, base model and features, validated and copied into the run directory (workers read them there).

    Features missing from the cache are computed by a Ray Data batch-inference job (``cll_ray.distributed.feature_job``),
    with ``run.use_gpu`` on the GPUs the run's ``trainers`` will train on, asked of the autoscaler first.
    """
    dataset = resolve_dataset(cfg, progress=progress)
    for lang in cfg.run.languages:  # validated before anything is written or Ray starts
        ds.read_captions(dataset, lang, splits=("train", "val", "test"), require_english=False)
        ds.read_captions(dataset, lang, splits=("train",), require_english=lang != "en")
    base_dir, features_dir = run_dir / "base", run_dir / "features"
    if not (base_dir / "base.json").exists():
        base = resolve_base(cfg, dataset, progress=progress)
        base.save(base_dir)
    base = BaseModel.load(base_dir)
    if not (features_dir / "keys.json").exists():
        ensure_ray(num_cpus, log_to_driver=log_to_driver)
        gpus = [b for b in trainer_bundles(cfg, trainers) if b.get("GPU")] if autoscaling() else []
        with requested([{"GPU": 1} for _ in gpus]):
            load_or_compute_features(dataset, base, cll_ray_home(cfg), progress=progress,
                                     compute=lambda: compute_features(dataset, base_dir, gpus=len(gpus))
                                     ).save(features_dir)
    return {"dataset_dir": str(dataset), "base_dir": str(base_dir), "features_dir": str(features_dir), "base": base}


PLAN_FILE = "tokenizer_plan.json"  # in the run (or sweep) directory: every task order's tokenizer plan
PLAN_VERSION = 1


def plan_tokenizers(cfg: ExperimentConfig, inputs: dict, order: list[str], plan: dict | None = None
                    ) -> tuple[dict, dict]:
    """The growth plan of ``order`` (the final tokenizer and each task's growth, for the workers) and the
    tokenizer each of its tasks will have. A stored ``plan`` is used as it is, never retrained."""
    features = FeatureStore.load(Path(inputs["features_dir"]))
    learner = ContinualLearner(inputs["base"], features, inputs["dataset_dir"], cfg)
    if plan is None:
        final, stats = learner.plan_growth(list(order))
        plan = {"tokenizer": final.to_json(), "growth": [asdict(g) for g in stats]}
    learner.use_plan(tokenizer_from_json(plan["tokenizer"]), [GrowthStats(**g) for g in plan["growth"]])
    return plan, {lang: learner.task_tokenizer(lang) for lang in order}


def plan_file(cfg: ExperimentConfig) -> str:
    """The plan file of ``cfg``'s tokenizer family: ``tokenizer_plan.json`` for CLIP's BPE (every CLL-CLIP-style
    method), ``tokenizer_plan.<family>.json`` for another (MLA's WordPiece)."""
    family = build_method(cfg.method).tokenizer_family
    return PLAN_FILE if family == "clip_bpe" else PLAN_FILE.replace(".json", f".{family}.json")


def stored_plans(cfg: ExperimentConfig, inputs: dict, orders: list[list[str]], run_dir: Path) -> list[dict]:
    """Every order's tokenizer plan for ``cfg``'s tokenizer family: read from ``run_dir/tokenizer_plan.json`` (or
    the family's file), or made and written there the first time, so a resumed run (and ``report``/``export``,
    which read its checkpoints) uses the tokenizers the run started with, even if training a BPE again would
    break a tie differently."""
    path = Path(run_dir) / plan_file(cfg)
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            plans = stored["orders"]
            found = [list(p["languages"]) for p in plans]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a tokenizer plan ({e})") from e
        if found != [list(o) for o in orders]:
            raise ValueError(f"{path}: planned for the task orders {found}, but this run has {orders}")
        return [{"tokenizer": p["tokenizer"], "growth": p["growth"]} for p in plans]
    plans = [plan_tokenizers(cfg, inputs, order)[0] for order in orders]
    from cll_ray.io import atomic_write_text

    atomic_write_text(path, json.dumps({"version": PLAN_VERSION, "orders": [
        {"languages": list(order), **plan} for order, plan in zip(orders, plans, strict=True)]}, ensure_ascii=False))
    return plans


def build_datasets(cfg: ExperimentConfig, inputs: dict, plan: dict | None = None) -> dict[str, ray.data.Dataset]:
    """``train_<lang>`` for every language, tokenized with the tokenizer that task will have.

    The plan of growth (``plan``, or made here) is stored in ``inputs`` for the workers.
    """
    inputs["plan"], tokenizers = plan_tokenizers(cfg, inputs, list(cfg.run.languages), plan)
    return build_train_datasets(inputs["dataset_dir"], {"train_": tokenizers}, inputs["base"].context_length,
                                inputs["features_dir"])


def run_orders(cfg: ExperimentConfig) -> list[list[str]]:
    """The task orders of a run: ``run.languages``, then ``run.orders - 1`` seeded ones (English first)."""
    from cll_ray.sweep import task_orders

    return task_orders(cfg.run.languages, cfg.run.orders)


def order_sequences(cfg: ExperimentConfig, inputs: dict, orders: list[list[str]], plans: list[dict] | None = None
                    ) -> tuple[list[dict], dict]:
    """One worker sequence per task order (key ``o<k>``) and their datasets, tokenized in one Ray Data pass:
    ``o<k>_train_<lang>`` with the tokenizer that language has at its place in order k."""
    tokenizers, sequences = {}, []
    for k, order in enumerate(orders):
        plan, tokenizers[f"o{k}_train_"] = plan_tokenizers(cfg, inputs, order, plans[k] if plans else None)
        sequences.append({"key": f"o{k}", "languages": order, "plan": plan, "datasets": f"o{k}_train_"})
    datasets = build_train_datasets(inputs["dataset_dir"], tokenizers, inputs["base"].context_length,
                                    inputs["features_dir"])
    return sequences, datasets


def order_run_dir(run_dir: Path, key: str) -> Path:
    """Where a run with several task orders writes order ``key``'s results: an ordinary run directory."""
    return Path(run_dir) / ORDERS_DIR / key


def build_trainer(cfg: ExperimentConfig, inputs: dict, datasets: dict, run_dir: Path, *, name: str | None = None,
                  sequences: list[dict] | None = None, checkpoint_dir: Path | None = None, storage: str | None = None,
                  objective: dict | None = None, callbacks: list | None = None,
                  keep_checkpoints: int | None = None, events=None) -> TorchTrainer:
    """The method's Trainer. A run passes only the first four; a sweep trial names its own Train run, passes
    its task orders as ``sequences``, the objective to report and Tune's report callback."""
    run = cfg.run
    loop_config = {
        "experiment": cfg.to_dict(),
        "base_dir": inputs["base_dir"],
        "features_dir": inputs["features_dir"],
        "dataset_dir": inputs["dataset_dir"],
        "sequences": sequences or single_sequence(cfg, inputs["plan"]),
        "checkpoint_dir": str(checkpoint_dir or run_dir / cfg.method.name / "checkpoints"),
        "threads_per_worker": max(1, int(run.cpus_per_worker)),
        "objective": objective,
        "keep_checkpoints": keep_checkpoints,
        "events": events,  # the run's EventSink (None: a sweep trial sends none)
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.num_workers, use_gpu=run.use_gpu,
            resources_per_worker=None if run.num_workers == 0 else {"CPU": run.cpus_per_worker},
        ),
        datasets=datasets,
        # every worker reads each language whole (small rows: ids and feature indices) and trains on its slice
        # of every global batch, so that W workers draw exactly one worker's batches
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
        run_config=ray.train.RunConfig(
            name=name or f"{run_dir.name}-{cfg.method.name}",  # stable: a re-fit with the same name resumes
            storage_path=storage or run.storage_path or str(run_dir / "train"),
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


def write_outputs(cfg: ExperimentConfig, result: ray.train.Result, run_dir: Path,
                  sequences: list[dict] | None = None, monitor: RunMonitor | None = None) -> list[dict]:
    """results.jsonl of one method, from its last task checkpoint (which holds every sequence), and the end of
    its TensorBoard: tasks whose events were lost, HParams. Several task orders: order k's go to
    ``orders/o<k>/`` and TensorBoard ``<method>/o<k>``."""
    rows: list[dict] = []
    monitor = monitor or RunMonitor(run_dir, {cfg.method.name: cfg.to_dict()})
    with result.checkpoint.as_directory() as d:
        for seq in sequences or [{"key": ""}]:
            state = load_checkpoint(Path(d) / checkpoint_file(seq["key"]))
            out = order_run_dir(run_dir, seq["key"]) if seq["key"] else run_dir
            sequence_rows = results_rows(state["learner"]["tasks"])
            write_jsonl(out / cfg.method.name / "results.jsonl", sequence_rows)
            monitor.finish(cfg.method.name, seq["key"], sequence_rows)
            rows += sequence_rows
    return rows


def send_ray_logs_to(path: Path) -> None:
    """Ray's own log lines of this process (``ray`` and its child loggers, e.g. Ray Data's executor) go to
    ``path`` instead of the console; warnings and errors included, as they are Ray's, not the run's."""
    import logging

    class RunLogHandler(logging.FileHandler):
        """Opened at the first line, not before: bad input stops a run before anything is written."""

        def _open(self):
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            return super()._open()

    handler = next((h for h in logging.getLogger("ray").handlers if getattr(h, "cll_ray_file", None) == str(path)),
                   None)
    if handler is None:
        handler = RunLogHandler(path, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.cll_ray_file = str(path)
    names = ["ray", *(n for n in logging.root.manager.loggerDict if n.startswith("ray."))]
    for name in names:
        logger = logging.getLogger(name)
        streams = [h for h in logger.handlers if type(h) is not logging.FileHandler
                   and isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout)]
        for h in streams:
            logger.removeHandler(h)
        if (streams or name == "ray") and handler not in logger.handlers:
            logger.addHandler(handler)


def run_experiment(
    cfgs: dict[str, ExperimentConfig], run_dir: Path, progress: bool = True, num_cpus: int | None = None,
    console: ProgressConsole | None = None, ray_log: Path | None = None,
) -> dict[str, dict]:
    """Run every method's sequence on Ray; returns {method: {"rows", "return_value", "seconds"}}.

    The workers' events reach ``console`` (default: result lines only) and each method's TensorBoard as they
    happen. ``ray_log``: Ray's own log lines go to this file and the workers' output stays in Ray's session
    logs (errors still reach the caller: a failed Trainer raises with its worker's traceback).
    """
    run_dir = Path(run_dir).resolve()
    cfg = _check_compatible(cfgs)
    quiet = ray_log is not None
    if quiet:
        send_ray_logs_to(ray_log)
    # 1. inputs once, on the driver; bad input fails here, before anything is written
    inputs = prepare_inputs(cfg, run_dir, progress=progress, num_cpus=num_cpus, trainers=len(cfgs),
                            log_to_driver=not quiet)
    # 2. the resolved configs, so that a crashed run can be resumed from its directory
    for method_cfg in cfgs.values():
        save_config(method_cfg, run_dir / method_cfg.method.name / "config.yaml")
    ensure_ray(num_cpus, log_to_driver=not quiet)
    if quiet:
        send_ray_logs_to(ray_log)  # loggers that Ray made while starting
    orders = run_orders(cfg) if cfg.run.orders > 1 else [list(cfg.run.languages)]
    # one plan and one set of tokenized datasets per tokenizer family (CLIP's BPE; MLA's WordPiece)
    families: dict[str, tuple[dict, list[dict] | None, dict]] = {}
    for method_cfg in cfgs.values():
        family = plan_file(method_cfg)
        if family not in families:
            family_inputs = dict(inputs)  # build_datasets stores the family's plan in it
            plans = stored_plans(method_cfg, family_inputs, orders, run_dir)
            if cfg.run.orders > 1:
                families[family] = (family_inputs, *order_sequences(method_cfg, family_inputs, orders, plans))
            else:
                families[family] = (family_inputs, None, build_datasets(method_cfg, family_inputs, plans[0]))
    # 3. one Trainer per method, all side by side where an autoscaler brings up their workers (asked for below),
    # else as many as the cluster holds; the others wait their turn here, not in Ray (a Trainer waiting for its
    # worker group restarts it every RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S)
    outcomes: dict[str, dict] = {}
    errors: dict[str, BaseException] = {}
    at_once = trainers_at_once(cfg, len(cfgs))
    if len(cfgs) > at_once:
        print(f"{len(cfgs)} methods, {at_once} at a time (the cluster's resources)", flush=True)
    slots = threading.Semaphore(at_once)
    # keyed by method name, as everything the workers send is (the caller's keys may differ)
    monitor = RunMonitor(run_dir, {c.method.name: c.to_dict() for c in cfgs.values()}, console)
    pump = EventPump(monitor.handle).start()

    def fit(method_cfg: ExperimentConfig) -> None:
        try:
            with slots:
                started = time.time()
                monitor.start(method_cfg.method.name)
                family_inputs, sequences, datasets = families[plan_file(method_cfg)]
                result = build_trainer(method_cfg, family_inputs, datasets, run_dir, sequences=sequences,
                                       events=pump.sink).fit()
                pump.flush()  # the method's last events, before its outputs
                rows = write_outputs(method_cfg, result, run_dir, sequences, monitor)
                outcomes[method_cfg.method.name] = {"rows": rows, "return_value": result.return_value,
                                                    "seconds": round(time.time() - started, 1)}
        except BaseException as e:  # reported after every method has finished
            errors[method_cfg.method.name] = e

    threads = [threading.Thread(target=fit, args=(c,), name=c.method.name) for c in cfgs.values()]
    try:
        with requested(trainer_bundles(cfg, at_once)):
            print(f"trainers: {at_once} side by side, {cfg.run.num_workers} worker(s) each", flush=True)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        try:
            pump.stop()
        except Exception as e:  # after the methods' own errors, never instead of them
            errors.setdefault("(the run's events)", e)
        finally:
            monitor.close()
    if errors:
        name, error = next(iter(errors.items()))
        raise RuntimeError(f"method {name} failed: {error}") from error
    summary = {m: {"seconds": o["seconds"], "tasks": o["return_value"]["tasks"],
                   "embedding_checksums": o["return_value"]["embedding_checksums"]} for m, o in outcomes.items()}
    atomic_write_text(run_dir / "run.json", json.dumps(summary, indent=2))
    return outcomes
