"""Typed, strict experiment configuration: frozen dataclasses, YAML files as data, dotted overrides.

Merge order: dataclass defaults < ``configs/default.yaml`` < method preset (``methods.yaml``, ``inherit_from``
resolved) < experiment YAML < dotted overrides (``train.lr=3e-5``), key by key. Each default lives in one place:
the dataclass field; YAML layers only set what they change. Unknown keys and wrong types are errors.
"""

from __future__ import annotations

import math
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


def load_yaml(text: str, source: str = "YAML", lines: bool = False):
    """Parse YAML text; a syntax error is a ConfigError naming ``source`` and the line (not a parser traceback)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if lines and mark is not None else source
        problem = " ".join(str(p) for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p) or str(e)
        raise ConfigError(f"{where}: not valid YAML ({problem})") from e


def load_yaml_file(path: str | Path):
    """A YAML file's contents; unreadable or malformed files are a ConfigError naming the file (and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e})") from e
    except IsADirectoryError as e:
        raise ConfigError(f"{path}: is a folder; expected a YAML file") from e
    return load_yaml(text, str(path), lines=True)


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
    # the BPE trainer is fed whole batches of this many training lines, the last partial batch dropped (the
    # reference's batch_iterator); smaller only for data sets of a few dozen captions
    bpe_batch_lines: int = 64


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
    # Language Exposure epochs (image-text InfoNCE at a fixed temperature, scale 100 in the original);
    # 2 + 1 = the 3 epochs (train.epochs) every other method gives a language
    mla_nlt_epochs: int = 2
    mla_le_epochs: int = 1
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
    # 0: batches as the reference draws them (a plain shuffle). k > 0: each pool of k shuffled batches is sorted by
    # caption length before it is cut, and the batches are shuffled again: less padding, other batches
    length_buckets: int = 0
    # True: under a row-group optimizer (TEIR) with one worker, the token embedding's gradient holds only the
    # batch's rows, so its memory and clipping stay flat in the vocabulary. The step is the dense one's except that
    # the clipping norm sums the used rows in another order (float rounding); off by default, so the default run
    # keeps the dense arithmetic. Worth it from some 100k rows on (cll-ray bench shows both)
    sparse_embedding_grad: bool = False


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
    log_every: int = 10  # training scalars (loss terms, lr, temperature) read and sent every this many steps


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        validate(self)

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
    return dotted(key.strip(), load_yaml(raw, f"override '{text}'") if raw != "" else "")


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
    """Resolve a config: dataclass defaults < ``default.yaml`` < the method preset < the experiment YAML < dotted
    overrides, each later layer winning key by key.

    The preset is ``method``, else the ``method.name`` an override or the experiment YAML gives, else
    ``default.yaml``'s. A ``method.name`` in a later layer that names another preset is an error: the run would
    train one method's settings and file them under another's name.
    """
    values = _package_yaml("default.yaml")
    experiment_values = load_experiment_yaml(experiment) if experiment else {}
    layers = _named_layers(experiment, experiment_values, overrides)
    named = _method_names(layers)
    method = method or (named[-1][1] if named else values.get("method", {}).get("name", MethodConfig.name))
    presets = method_presets()
    if method not in presets:
        raise ConfigError(f"unknown method '{method}' (known: {', '.join(sorted(presets))})")
    for where, name in named:
        if name != method:
            raise ConfigError(f"{where} sets method.name={name}, but the method being run is '{method}': "
                              f"run --methods {name}, or drop method.name (a preset's name is its own)")
    _deep_update(values, {"method": presets[method]})
    for _, layer in layers:
        _deep_update(values, layer)
    return ExperimentConfig.from_dict(values)


def _named_layers(experiment, experiment_values: dict, overrides) -> list[tuple[str, dict]]:
    """The layers above the preset, in order, each with where it came from (for error messages)."""
    return [(f"the experiment file {experiment}", experiment_values)] + [
        (f"the override '{text}'", parse_override(text)) for text in overrides]


def _method_names(layers: list[tuple[str, dict]]) -> list[tuple[str, Any]]:
    return [(where, layer["method"]["name"]) for where, layer in layers
            if isinstance(layer.get("method"), dict) and "name" in layer["method"]]


def named_method(experiment: str | Path | None, overrides: list[str] = ()) -> str | None:
    """The ``method.name`` the experiment YAML or an override gives (the last one), or None."""
    named = _method_names(_named_layers(experiment, load_experiment_yaml(experiment) if experiment else {},
                                        overrides))
    return named[-1][1] if named else None


def load_experiment_yaml(path: str | Path) -> dict:
    """An experiment YAML (``--config``) as a mapping; a missing file or a YAML error names the file and line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"experiment file not found: {path}")
    values = load_yaml_file(path) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections (data, model, method, train, run), "
                          f"got {type(values).__name__}")
    return values


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from cll_ray.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ------------------------------------------------------------------------------------ value validation
# Every config is checked when it is built (ExperimentConfig.__post_init__), so a value that would fail late,
# or run wrongly, stops before anything is written or Ray starts. Types are checked by `merge`; ranges here.

_FINITE = (-math.inf, math.inf)
# key -> (low, high, low inclusive, high inclusive); every bound is also a finite number (no nan, no inf)
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "model.language_vocab_size": (1, math.inf, True, False),
    "model.bpe_batch_lines": (1, math.inf, True, False),
    "method.init_mean": (*_FINITE, False, False),
    "method.init_std": (0, math.inf, True, False),
    "method.teir_sigma_scale": (0, math.inf, True, False),
    "method.teir_mu_shift": (*_FINITE, False, False),
    "method.freq_power": (0, math.inf, True, False),
    "method.cross_lingual_weight": (0, math.inf, True, False),
    "method.cross_modal_weight": (0, math.inf, True, False),
    "method.temperature": (0, math.inf, False, False),
    "method.ewc_lambda": (0, math.inf, True, False),
    "method.ewc_gamma": (0, math.inf, True, False),
    "method.memory_size": (1, math.inf, True, False),
    "method.replay_weight": (0, math.inf, True, False),
    "method.lwf_weight": (0, math.inf, True, False),
    "method.lora_rank": (1, math.inf, True, False),
    "method.lora_alpha": (0, math.inf, False, False),
    "method.adapter_width": (0, math.inf, True, False),
    "method.mla_nlt_epochs": (0, math.inf, True, False),
    "method.mla_le_epochs": (0, math.inf, True, False),
    "method.mla_le_temperature": (0, math.inf, False, False),
    "method.joint_vocab_size": (0, math.inf, True, False),
    "train.lr": (0, math.inf, False, False),
    "train.weight_decay": (0, math.inf, True, False),
    "train.adam_eps": (0, math.inf, False, False),
    "train.betas[0]": (0, 1, True, False),
    "train.betas[1]": (0, 1, True, False),
    "train.epochs": (1, math.inf, True, False),
    "train.batch_size": (1, math.inf, True, False),
    "train.warmup_ratio": (0, 1, True, False),
    "train.grad_clip": (0, math.inf, False, False),
    "train.eval_batch_size": (1, math.inf, True, False),
    "train.length_buckets": (0, math.inf, True, False),
    "run.orders": (1, math.inf, True, False),
    "run.num_workers": (0, math.inf, True, False),
    "run.cpus_per_worker": (0, math.inf, False, False),
    "run.max_failures": (-1, math.inf, True, False),  # -1: retry forever (Ray's convention)
    "run.log_every": (1, math.inf, True, False),
}
_CHOICES = {
    "train.precision": ("auto", "bf16", "fp16", "fp32"),
    "method.init": ("normal", "teir"),
    "data.synthxm_size": ("tiny", "small", "default", "large"),
}

_OPTIONS = {"run.orders": "--orders", "run.num_workers": "--workers", "run.languages": "--langs"}  # cll-ray run's


def _key(key: str) -> str:
    option = _OPTIONS.get(key.partition("[")[0])
    return f"{key} ({option})" if option else key


def _allowed(value, low: float, high: float, low_in: bool, high_in: bool) -> str:
    parts = [f"{'>=' if low_in else '>'} {low:g}" if low > -math.inf else "",
             f"{'<=' if high_in else '<'} {high:g}" if high < math.inf else ""]
    kind = "an integer" if isinstance(value, int) else "a finite number"
    return kind + (" " + " and ".join(p for p in parts if p) if any(parts) else "")


def config_problems(cfg: ExperimentConfig) -> list[str]:
    """Every out-of-range value of ``cfg`` as 'key = value: expected ...' (empty when the config is valid)."""
    problems = []

    def value(key: str):
        section, name = key.split(".")
        name, _, index = name.partition("[")
        v = getattr(getattr(cfg, section), name)
        return v[int(index[:-1])] if index else v

    for key, (low, high, low_in, high_in) in _RANGES.items():
        v = value(key)
        ok = math.isfinite(v) and (low <= v if low_in else low < v) and (v <= high if high_in else v < high)
        if not ok:
            problems.append(f"{_key(key)} = {v!r}: expected {_allowed(v, low, high, low_in, high_in)}")
    for key, choices in _CHOICES.items():
        if value(key) not in choices:
            problems.append(f"{_key(key)} = {value(key)!r}: expected one of {', '.join(choices)}")
    problems += language_problems(cfg.run.languages, _key("run.languages"))
    return problems


def language_problems(languages, key: str) -> list[str]:
    """A task order must be distinct language codes, English first (the base model's task 1, method.md §6)."""
    from cll_ray.dataset import DataError, check_language_code

    shown = f"{key} = [{', '.join(repr(code) for code in languages)}]"
    if not languages:
        return [f"{shown}: expected at least one language, English first (e.g. en,fr,de)"]
    problems = []
    for code in languages:
        try:
            check_language_code(code, key)
        except DataError as e:
            problems.append(f"{e} (no spaces: e.g. en,fr,de)")
    repeated = sorted({code for code in languages if languages.count(code) > 1})
    if repeated:
        problems.append(f"{shown}: {', '.join(repeated)} given more than once; each language is one task")
    if languages[0] != "en":
        problems.append(f"{shown}: expected English (en) first, the base model's task 1")
    return problems


def validate(cfg: ExperimentConfig) -> None:
    """Raise a ConfigError listing every out-of-range value of ``cfg`` (key, value and what is allowed)."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("invalid config value(s):\n  " + "\n  ".join(problems))

# -------------------------------------------------------------------------------- end of value validation


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
    "named_method",
    "parse_override",
    "save_config",
    "validate",
]
