"""Hyper-parameter sweeps as data: search spaces, task orders and the cross-order objective (no Ray here).

A search space is a YAML file (``tune_spaces/*.yaml``)::

    method: cll_clip_teir          # the preset every trial starts from
    overrides: [run.languages=[en,fr,de]]   # fixed dotted overrides (optional)
    objective: aa_minus_f          # final_aa | aa_minus_f | worst_aa
    metric: t2i_r1                 # the retrieval metric the objective reads
    orders: 3                      # K seeded task orders (English first); each trial runs every one
    search: {algorithm: hyperopt, initial_points: 6, seed: 0, evaluate_preset: true}
    scheduler: {asha: true, grace_period: 8, reduction_factor: 3}
    space:                         # dotted config paths, as on the command line
      train.lr: {loguniform: [5.0e-4, 1.0e-2]}
      method.grad_scale: {choice: [true, false]}

Why every trial runs every order: the question a sweep answers is which setting is robust to the order in which
languages arrive, so the objective of one configuration is computed across orders (mean, or the worst order).
Orders as a searched dimension would score each configuration on one order only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cll_ray.config import ConfigError, ExperimentConfig, dotted, load_yaml_file, merge
from cll_ray.metrics import RETRIEVAL_KEYS
from cll_ray.orders import seeded_order

DOMAINS = ("uniform", "loguniform", "choice", "randint", "grid")
OBJECTIVES = {
    "final_aa": "mean over orders of the final AA",
    "aa_minus_f": "mean over orders of the final AA − F",
    "worst_aa": "the worst order's final AA",
}
SEARCHABLE_SECTIONS = ("method", "train")  # data.*, model.*, run.* are shared by every trial (one dataset/plan)
TOP_KEYS = {"method", "overrides", "objective", "metric", "orders", "order_seed", "search", "scheduler", "space",
            "description"}


@dataclass(frozen=True)
class Param:
    """One searched dimension: a dotted config path and its domain."""

    key: str
    kind: str  # one of DOMAINS
    args: tuple

    def contains(self, value: Any) -> bool:
        if self.kind in ("choice", "grid"):
            return value in self.args
        lo, hi = self.args
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (
            lo <= value < hi if self.kind == "randint" else lo <= value <= hi)


@dataclass(frozen=True)
class SearchSpace:
    path: str
    method: str
    params: tuple[Param, ...]
    overrides: tuple[str, ...] = ()
    objective: str = "aa_minus_f"
    metric: str = "t2i_r1"
    orders: int = 3
    order_seed: int = 0
    algorithm: str = "hyperopt"  # hyperopt | random (random is required for grid dimensions)
    initial_points: int = 6  # hyperopt's random start-up trials before TPE takes over
    search_seed: int = 0
    evaluate_preset: bool = True  # the preset's own values are the first trial (the paper's defaults)
    asha: bool = True
    grace_period: int = 0  # in tasks; 0 = the length of one order
    reduction_factor: int = 3
    description: str = ""
    raw: Mapping = field(default_factory=dict, compare=False)

    def base_config(self, extra_overrides: Sequence[str] = ()) -> ExperimentConfig:
        from cll_ray.config import load_config

        return load_config(method=self.method, overrides=[*self.overrides, *extra_overrides])

    def preset_point(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """The base config's own value of every searched key (for ``points_to_evaluate``)."""
        point = {}
        for p in self.params:
            value = config_value(cfg, p.key)
            if not p.contains(value):
                raise ConfigError(f"{self.path}: space.{p.key}: the preset's value {value!r} is outside {p.kind} "
                                  f"{list(p.args)}; widen the range or set search.evaluate_preset: false")
            point[p.key] = value
        return point


def _error(path: str, where: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {message}")


def _parse_param(path: str, key: str, spec: Any, base: ExperimentConfig) -> Param:
    where = f"space.{key}"
    if key.split(".")[0] not in SEARCHABLE_SECTIONS:
        raise _error(path, where, f"only {', '.join(s + '.*' for s in SEARCHABLE_SECTIONS)} keys can be searched "
                                  "(data, model and run settings are shared by every trial)")
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise _error(path, where, f"expected one of {{{', '.join(DOMAINS)}: ...}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind not in DOMAINS:
        raise _error(path, where, f"unknown domain '{kind}' (known: {', '.join(DOMAINS)})")
    if not isinstance(args, list) or not args:
        raise _error(path, where, f"{kind} takes a non-empty list, got {args!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise _error(path, where, f"{kind} takes [low, high] numbers, got {args!r}")
        if not args[0] < args[1]:
            raise _error(path, where, f"{kind}: low must be below high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise _error(path, where, f"loguniform needs a positive low bound, got {args[0]!r}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise _error(path, where, f"randint takes integer bounds, got {args!r}")
    for value in args:  # every value the domain can produce must fit the config schema
        try:
            merge(base, dotted(key, value))
        except ConfigError as e:
            raise _error(path, where, str(e)) from None
    return Param(key, kind, tuple(float(a) if kind in ("uniform", "loguniform") else a for a in args))


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML; errors name the file and the key."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"search space not found: {path}")
    raw = load_yaml_file(path)
    name = str(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a mapping at the top level")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(TOP_KEYS))})")
    if "method" not in raw or "space" not in raw:
        raise ConfigError(f"{name}: 'method' (a preset) and 'space' (the searched keys) are required")
    overrides = tuple(str(o) for o in raw.get("overrides") or ())
    from cll_ray.config import load_config

    try:
        base = load_config(method=raw["method"], overrides=list(overrides))
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
    space = raw["space"]
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{name}: 'space' must map dotted config keys to domains")
    params = tuple(_parse_param(name, str(k), v, base) for k, v in space.items())
    objective = raw.get("objective", "aa_minus_f")
    if objective not in OBJECTIVES:
        raise ConfigError(f"{name}: objective: expected one of {', '.join(OBJECTIVES)}, got {objective!r}")
    metric = raw.get("metric", "t2i_r1")
    if metric not in RETRIEVAL_KEYS:
        raise ConfigError(f"{name}: metric: expected one of {', '.join(RETRIEVAL_KEYS)}, got {metric!r}")
    search = dict(raw.get("search") or {})
    scheduler = dict(raw.get("scheduler") or {})
    for section, values, known in (("search", search, {"algorithm", "initial_points", "seed", "evaluate_preset"}),
                                   ("scheduler", scheduler, {"asha", "grace_period", "reduction_factor"})):
        extra = set(values) - known
        if extra:
            raise ConfigError(f"{name}: {section}: unknown key(s) {', '.join(sorted(extra))} (known: {', '.join(sorted(known))})")
    algorithm = search.get("algorithm", "hyperopt")
    if algorithm not in ("hyperopt", "random"):
        raise ConfigError(f"{name}: search.algorithm: expected hyperopt or random, got {algorithm!r}")
    if algorithm == "hyperopt" and any(p.kind == "grid" for p in params):
        raise ConfigError(f"{name}: grid dimensions need search.algorithm: random (HyperOpt does not sample grids)")
    result = SearchSpace(
        path=name, method=str(raw["method"]), params=params, overrides=overrides, objective=objective,
        metric=metric, orders=_positive(name, "orders", raw.get("orders", 3)),
        order_seed=int(raw.get("order_seed", 0)), algorithm=algorithm,
        initial_points=_positive(name, "search.initial_points", search.get("initial_points", 6)),
        search_seed=int(search.get("seed", 0)), evaluate_preset=bool(search.get("evaluate_preset", True)),
        asha=bool(scheduler.get("asha", True)), grace_period=int(scheduler.get("grace_period", 0)),
        reduction_factor=_positive(name, "scheduler.reduction_factor", scheduler.get("reduction_factor", 3)),
        description=str(raw.get("description", "")), raw=dict(raw),
    )
    if result.evaluate_preset:
        result.preset_point(base)  # fail now, not after the sweep started
    return result


def _positive(name: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: {key}: expected a positive integer, got {value!r}")
    return value


def config_value(cfg: ExperimentConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, tuple) else node


def apply_point(cfg: ExperimentConfig, point: Mapping[str, Any]) -> ExperimentConfig:
    """The config of one trial: ``cfg`` with each sampled dotted key set (numpy scalars become Python ones)."""
    for key, value in point.items():
        value = value.item() if hasattr(value, "item") else value
        cfg = merge(cfg, dotted(key, value))
    return cfg


def task_orders(languages: Sequence[str], count: int, seed: int = 0) -> list[list[str]]:
    """``count`` distinct seeded orders of ``languages``, English first (as the reference does).

    Order 0 is ``languages`` as given (the run's own order); order k is ``seeded_order(languages, seed + k)``.
    Fewer distinct orders than ``count`` exist only for tiny language sets: that is an error.
    """
    languages = list(languages)
    orders: list[list[str]] = [languages]
    candidate = seed
    limit = seed + 1000 * count
    while len(orders) < count and candidate < limit:
        order = seeded_order(languages, candidate)
        if order not in orders:
            orders.append(order)
        candidate += 1
    if len(orders) < count:
        raise ConfigError(f"only {len(orders)} distinct task orders of {languages} with English first; asked for {count}")
    return orders


def order_score(cl: Mapping[str, float], objective: str) -> float:
    """One order's score from its CL metrics (F is undefined after one task: it counts as 0 then)."""
    aa = float(cl["AA"])
    if objective == "aa_minus_f":
        f = float(cl.get("F", math.nan))
        return aa - (f if math.isfinite(f) else 0.0)
    return aa


def combine_orders(scores: Sequence[float], objective: str) -> float:
    """The objective across orders: the worst order for ``worst_aa``, else the mean."""
    if not scores:
        raise ValueError("no order has a result yet")
    return min(scores) if objective == "worst_aa" else sum(scores) / len(scores)


def sweep_metrics(orders_cl: Sequence[Mapping[str, Mapping[str, float]] | None], objective: str, metric: str) -> dict:
    """What a trial reports after a task: the objective over the orders with a result so far, and each order's
    AA/F/Fen of ``metric`` (``o<k>_AA``…). ``orders_cl[k]`` is order k's latest CL metrics (all retrieval
    metrics), None when it has not started. Trials are compared at the same task position (ASHA), so the
    partial objective of one position is comparable across trials."""
    out: dict[str, float] = {}
    scores = []
    for k, cl in enumerate(orders_cl):
        if cl is None:
            continue
        m = cl[metric]
        for key in ("AA", "F", "Fen"):
            out[f"o{k}_{key}"] = float(m.get(key, math.nan))
        scores.append(order_score(m, objective))
    out["objective"] = combine_orders(scores, objective)
    return out


def list_spaces(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob("*.yaml"))
