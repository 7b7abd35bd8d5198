"""Resolve a run's inputs (dataset, base model, features) and run a language sequence in-process.

This is the Ray-free path: the same learner the Ray driver uses, one task after another in this process, with
every seen language evaluated after each task and the accuracy matrix turned into CL metrics.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cll_ray.base_model import BaseModel, shipped_base_dir
from cll_ray.config import ExperimentConfig
from cll_ray.continual import ContinualLearner
from cll_ray.features import FeatureStore
from cll_ray.metrics import RETRIEVAL_KEYS, cl_metrics


def cll_ray_home(cfg: ExperimentConfig | None = None) -> Path:
    """Where generated data and caches live: ``data.root``, else $CLL_RAY_HOME, else ~/.cache/cll_ray."""
    root = (cfg.data.root if cfg else "") or os.environ.get("CLL_RAY_HOME") or "~/.cache/cll_ray"
    return Path(root).expanduser().resolve()


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


@dataclass
class SequenceResult:
    languages: list[str]
    matrices: dict[str, np.ndarray]  # metric -> (T, T) accuracy matrix, NaN above the diagonal
    zero_shot: dict[str, list[float]]  # metric -> base model's score per language
    rows: list[dict] = field(default_factory=list)  # one record per task (the results.jsonl lines)


def zero_shot_scores(learner: ContinualLearner, languages: list[str]) -> dict[str, list[float]]:
    """The base model's scores before any task (the b_j of FWT), with the base tokenizer."""
    scores = [learner.evaluate(lang) for lang in languages]
    return {k: [s[k] for s in scores] for k in RETRIEVAL_KEYS}


def run_sequence(
    cfg: ExperimentConfig,
    base: BaseModel,
    features: FeatureStore,
    dataset_dir: Path,
    progress: bool = True,
    on_task=None,
) -> SequenceResult:
    """Learn ``cfg.run.languages`` in order; after each task evaluate every seen language on its test split."""
    langs = list(cfg.run.languages)
    learner = ContinualLearner(base, features, dataset_dir, cfg)
    zero_shot = zero_shot_scores(learner, langs)
    matrices = {k: np.full((len(langs), len(langs)), np.nan) for k in RETRIEVAL_KEYS}
    result = SequenceResult(langs, matrices, zero_shot)
    for t, lang in enumerate(langs):
        started = time.time()
        record = learner.learn(lang, progress=progress)
        for j, seen in enumerate(langs[: t + 1]):
            scores = learner.evaluate(seen)
            for k in RETRIEVAL_KEYS:
                matrices[k][t, j] = scores[k]
        row = {
            "task": t, "lang": lang, "method": cfg.method.name, "seconds": round(time.time() - started, 1),
            "growth": record["growth"], "best_epoch": record["best_epoch"], "best_val_r_mean": record["best_val"]["r_mean"],
            "scores": {k: matrices[k][t, : t + 1].tolist() for k in RETRIEVAL_KEYS},
            "cl": {k: cl_metrics(matrices[k][: t + 1, : t + 1], zero_shot[k][: t + 1]) for k in RETRIEVAL_KEYS},
        }
        result.rows.append(row)
        if on_task is not None:
            on_task(learner, row)
    return result


def format_cl_table(results: dict[str, SequenceResult], metrics=("t2i_r1", "i2t_r1")) -> str:
    """A comparison table: per method, final AA / F / Fen / plasticity for each metric."""
    head = f"{'method':<16}" + "".join(f"{m + ' ' + k:>16}" for m in metrics for k in ("AA", "F", "Fen", "plast."))
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        cl = res.rows[-1]["cl"]
        cells = []
        for m in metrics:
            for k in ("AA", "F", "Fen", "plasticity"):
                v = cl[m].get(k, float("nan"))
                cells.append(f"{v:>16.1f}" if np.isfinite(v) else f"{'-':>16}")
        lines.append(f"{name:<16}" + "".join(cells))
    return "\n".join(lines)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from cll_ray.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in rows))
