"""Typed, strict experiment configuration: frozen dataclasses, YAML files as data, dotted overrides.

Merge order: dataclass defaults < ``configs/default.yaml`` < experiment YAML < method preset (``methods.yaml``,
``inherit_from`` resolved) < dotted overrides (``train.lr=3e-5``). Unknown keys and wrong types are errors.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value that does not fit the schema."""


class _Loader(yaml.SafeLoader):
    """YAML with only true/false as booleans (YAML 1.2): "no" is Norwegian, not False."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthxm"  # "synthxm" or a path to a dataset in the canonical layout
    synthxm_size: str = "default"  # SynthXM preset: tiny | small | default | large
    seed: int = 0  # SynthXM generator seed
    root: str = ""  # where generated data and caches live; "" = $CLL_RAY_HOME or ~/.cache/cll_ray


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "cll-synthclip-4L-128"  # an open_clip model config name
    base: str = "shipped"  # "shipped", "pretrain" (train/cached), or a directory written by `cll-ray pretrain`
    pretrained: str = ""  # local open_clip weights file for real architectures (never downloaded)
    language_vocab_size: int = 2000  # BPE size trained per language (10,000 for real models, §1.4)


@dataclass(frozen=True)
class MethodConfig:
    name: str = "cll_clip"
    # new-row initialisation (§1.5, §2.1): "normal" draws N(init_mean, init_std²); "teir" draws
    # N(mu + teir_mu_shift, (teir_sigma_scale * sigma)²) from the current matrix's statistics.
    init: str = "normal"
    init_mean: float = 0.0
    init_std: float = 0.02
    teir_sigma_scale: float = 1.0
    teir_mu_shift: float = 0.0
    # TEIR regularization (§2.2): r_i = c_i / f_i^freq_power; specials get 0.
    grad_scale: bool = False
    decay_scale: bool = False
    freq_power: float = 1.0
    # losses (§3)
    cross_lingual_weight: float = 1.0
    cross_modal_weight: float = 0.01
    temperature: float = 0.07
    # which method class the preset configures (cll_ray/methods METHODS): presets only set its knobs
    kind: str = "cll_clip"
    # finetune_all: the whole text tower is trainable (Ablation_trainAll)
    # oewc (§7): L + λ Σ F (θ − θ*)², F ← γ·F + mean over batches of squared batch gradients
    ewc_lambda: float = 1000.0
    ewc_gamma: float = 1.0
    # er / der (§7): reservoir memory, memory batch = current batch size from task 2, replay MSE weight
    memory_size: int = 8000
    replay_weight: float = 1.0
    # lwf: MSE to the frozen previous-task student's embedding of the current captions
    lwf_weight: float = 1.0
    # lora (§7): rank and alpha on attention q and v of every layer, one set per language
    lora_rank: int = 8
    lora_alpha: float = 8.0
    # mla_adapter / mla: bottleneck width of the per-language adapters/acquirers; 0 = width / 2 (§7, mla.md)
    adapter_width: int = 0
    # mla (mla.md §1.3): Native Language Transfer epochs (MSE to the English teacher, text only), then
    # Language Exposure epochs (image-text InfoNCE at a fixed temperature, scale 100 in the original)
    mla_nlt_epochs: int = 3
    mla_le_epochs: int = 3
    mla_le_temperature: float = 0.01
    # mla's separate multilingual token table (mla.md §1.2): its width d_emb (768 = M-BERT's), then a linear
    # d_emb -> text width. mbert: a local M-BERT directory (vocab.txt + a BertModel saved with save_pretrained)
    # whose vocabulary and word embeddings start the table; "" = a WordPiece per language, random new rows
    mla_embedding_dim: int = 768
    mbert: str = ""
    # joint: one BPE over all languages' training captions; 0 = language_vocab_size × number of languages
    joint_vocab_size: int = 0


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 5e-5
    weight_decay: float = 0.05
    adam_eps: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 3
    batch_size: int = 128
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 42
    eval_batch_size: int = 1024
    precision: str = "auto"  # forward-pass autocast: auto (bf16 where the hardware has it, else fp32) | bf16 | fp16 (GPU) | fp32


@dataclass(frozen=True)
class RunConfig:
    languages: tuple[str, ...] = ("en", "fr", "de", "ru", "ar", "hi", "zh", "ja")  # the task order
    orders: int = 1  # K task orders per method: this one, then K-1 seeded ones (English first; cll-ray run --orders)
    output_dir: str = "runs"  # run directories go here (use shared storage on a multi-node cluster)
    name: str = ""  # "" = a timestamp
    storage_path: str = ""  # Ray Train checkpoints: a local/NFS path or a cloud URI; "" = <run dir>/train
    num_workers: int = 1  # Ray Train workers per method (0 = local mode, in the driver process)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # also the worker's torch threads; fractional values leave CPUs to Ray Data
    max_failures: int = 2  # worker-group restarts from the last task checkpoint


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.train.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"train.precision must be auto, bf16, fp16 or fp32, got '{self.train.precision}'")
        if self.run.orders < 1:
            raise ConfigError(f"run.orders (--orders) must be at least 1, got {self.run.orders}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        return merge(cls(), values)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so the dict is YAML/JSON friendly."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation; ints widen to floats, lists become tuples."""
    hint = typing.get_origin(annotation)
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {annotation}")
    raise ConfigError(f"{where}: unsupported annotation {annotation}")


def merge(base: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Return ``base`` (a config dataclass) updated from a nested dict; unknown keys raise."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(base))
    known = {f.name for f in fields(base)}
    changes = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown config key '{where}' (known: {', '.join(sorted(known))})")
        current = getattr(base, key)
        if is_dataclass(current):
            changes[key] = merge(current, value, prefix=f"{where}.")
        else:
            changes[key] = _coerce(value, hints[key], where)
    return replace(base, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """``train.lr=3e-5`` -> ``{"train": {"lr": 3e-5}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    key, raw = text.split("=", 1)
    return dotted(key.strip(), load_yaml(raw) if raw != "" else "")


def dotted(key: str, value: Any) -> dict[str, Any]:
    """``("train.lr", 3e-5)`` -> ``{"train": {"lr": 3e-5}}``."""
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _deep_update(target: dict, update: dict) -> dict:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            _deep_update(target[k], v)
        else:
            target[k] = v
    return target


def _package_yaml(name: str) -> dict:
    text = resources.files("cll_ray").joinpath("configs", name).read_text(encoding="utf-8")
    return load_yaml(text) or {}


def method_presets() -> dict[str, dict[str, Any]]:
    """Method presets from ``configs/methods.yaml`` with ``inherit_from`` resolved (parents first, in order)."""
    raw = _package_yaml("methods.yaml")

    def resolve(name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
        if name not in raw:
            raise ConfigError(f"unknown method '{name}' (known: {', '.join(sorted(raw))})")
        if name in chain:
            raise ConfigError(f"inherit_from cycle: {' -> '.join(chain + (name,))}")
        entry = dict(raw[name] or {})
        parents = entry.pop("inherit_from", [])
        out: dict[str, Any] = {}
        for parent in [parents] if isinstance(parents, str) else parents:
            _deep_update(out, resolve(parent, chain + (name,)))
        return _deep_update(out, entry)

    return {name: {**resolve(name), "name": name} for name in raw if not name.startswith("_")}


def method_list(text: str) -> list[str]:
    """``--methods``: comma-separated preset names, or ``all`` (every preset, in methods.yaml order)."""
    presets = method_presets()
    names = list(presets) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in presets]
    if unknown or not names:
        raise ConfigError(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'} "
                          f"(known: all, {', '.join(presets)})")
    if len(set(names)) != len(names):
        raise ConfigError(f"--methods: a method is given twice in '{text}'")
    return names


def load_config(
    experiment: str | Path | None = None, method: str | None = None, overrides: list[str] = ()
) -> ExperimentConfig:
    """Resolve a config from defaults, an experiment YAML, a method preset and dotted overrides."""
    values = _package_yaml("default.yaml")
    if experiment:
        path = Path(experiment)
        if not path.exists():
            raise ConfigError(f"experiment file not found: {path}")
        _deep_update(values, load_yaml(path.read_text(encoding="utf-8")) or {})
    parsed = [parse_override(o) for o in overrides]
    method = method or next((o["method"]["name"] for o in parsed if "name" in o.get("method", {})), None)
    method = method or values.get("method", {}).get("name")
    if method:
        values["method"] = method_presets()[method] if method in method_presets() else {"name": method}
        if method not in method_presets():
            raise ConfigError(f"unknown method '{method}' (known: {', '.join(sorted(method_presets()))})")
    for o in parsed:
        _deep_update(values, o)
    return ExperimentConfig.from_dict(values)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from cll_ray.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "ConfigError",
    "dotted",
    "DataConfig",
    "ExperimentConfig",
    "MethodConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "merge",
    "method_presets",
    "parse_override",
    "save_config",
]
