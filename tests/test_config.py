"""Config merge order, strictness, presets and round trips."""

import dataclasses
import re

import pytest
import yaml

from cll_ray.config import (
    ConfigError,
    ExperimentConfig,
    load_config,
    method_list,
    method_presets,
    parse_override,
    save_config,
)


def test_presets_resolve_inherit_from():
    presets = method_presets()
    teir = presets["cll_clip_teir"]
    assert teir["init"] == "teir" and teir["grad_scale"] and teir["decay_scale"]
    assert presets["oewc_teir"]["kind"] == "oewc" and presets["oewc_teir"]["init"] == "teir"  # both parents
    resolved = load_config(method="cll_clip_teir").method
    assert resolved.cross_modal_weight == 0.01 and resolved.init_std == 0.02  # MethodConfig's, under the preset
    assert not load_config(method="cll_clip").method.grad_scale
    assert "_teir" not in presets  # fragments are not runnable methods


def test_overrides_win_and_are_typed():
    cfg = load_config(method="cll_clip_teir", overrides=["train.lr=3e-5", "run.languages=en,fr", "method.freq_power=2"])
    assert cfg.train.lr == 3e-5 and cfg.run.languages == ("en", "fr")
    assert cfg.method.freq_power == 2.0 and cfg.method.name == "cll_clip_teir"
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


@pytest.mark.parametrize(
    "override, message",
    [("train.lrr=1", "unknown config key 'train.lrr'"), ("train.epochs=1.5", "expected an integer"),
     ("method.grad_scale=maybe", "expected true/false"), ("nokey", "not of the form")],
)
def test_bad_overrides_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_norwegian_is_a_language_not_a_boolean(tmp_path):
    cfg = load_config(overrides=["run.languages=[en, no, sv]"])
    assert cfg.run.languages == ("en", "no", "sv")
    save_config(cfg, tmp_path / "c.yaml")
    from cll_ray.driver import load_run_configs

    (tmp_path / "m").mkdir()
    (tmp_path / "c.yaml").rename(tmp_path / "m" / "config.yaml")
    assert load_run_configs(tmp_path)["cll_clip"].run.languages == ("en", "no", "sv")
    assert load_config(overrides=["method.grad_scale=true"]).method.grad_scale is True


def test_unknown_method_is_an_error():
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        load_config(method="nope")


def test_methods_option():
    assert method_list("cll_clip_teir, mla") == ["cll_clip_teir", "mla"]
    everything = method_list("all")
    assert everything == list(method_presets()) and everything[:2] == ["cll_clip", "cll_clip_teir"]
    assert "joint" in everything and not [m for m in everything if m.startswith("_")]  # no private parents
    with pytest.raises(ConfigError, match="unknown method.*nope"):
        method_list("cll_clip,nope")
    with pytest.raises(ConfigError, match="twice"):
        method_list("mla,mla")
    with pytest.raises(ConfigError, match="none given"):
        method_list(" , ")


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(method="cll_clip_teir", overrides=["train.seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = ExperimentConfig.from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves nothing behind


def test_run_options_become_overrides():
    from cll_ray.cli import build_parser, run_overrides

    args = build_parser().parse_args(["run", "--methods", "all", "--orders", "3", "--workers", "2",
                                      "--langs", "en,ru", "train.lr=1e-3"])
    overrides = run_overrides(args)
    assert overrides == ["train.lr=1e-3", "run.languages=[en,ru]", "run.num_workers=2", "run.orders=3"]
    cfg = load_config(method="cll_clip", overrides=overrides)
    assert (cfg.run.orders, cfg.run.num_workers, cfg.run.languages) == (3, 2, ("en", "ru"))
    with pytest.raises(ConfigError, match="at least 1"):
        load_config(overrides=["run.orders=0"])


def _run_args(*argv):
    from cll_ray.cli import build_parser

    return build_parser().parse_args(["run", *argv])


def test_experiment_yaml_method_keys_reach_the_workers_config(tmp_path):
    """default.yaml < preset < experiment YAML < overrides, key by key: the YAML's method keys are not dropped."""
    from cll_ray.cli import run_configs

    (tmp_path / "exp.yaml").write_text("method:\n  freq_power: 2\ntrain:\n  epochs: 5\n")
    configs = run_configs(_run_args("--config", str(tmp_path / "exp.yaml"), "--methods", "cll_clip_teir,cll_clip",
                                    "train.epochs=4"))
    assert list(configs) == ["cll_clip_teir", "cll_clip"]
    for name, cfg in configs.items():
        worker = ExperimentConfig.from_dict(cfg.to_dict())  # what a Ray Train worker is given
        assert worker.method.name == name and worker.method.freq_power == 2.0 and worker.train.epochs == 4
    assert configs["cll_clip_teir"].method.grad_scale and not configs["cll_clip"].method.grad_scale
    assert configs["cll_clip"].train.lr == 2e-3  # default.yaml's, under the preset


def test_a_method_name_is_taken_from_the_config_when_methods_is_not_given(tmp_path):
    from cll_ray.cli import run_configs

    assert list(run_configs(_run_args())) == ["cll_clip", "cll_clip_teir"]
    assert list(run_configs(_run_args("method.name=oewc_teir"))) == ["oewc_teir"]
    (tmp_path / "exp.yaml").write_text("method:\n  name: er\n")
    cfg = run_configs(_run_args("--config", str(tmp_path / "exp.yaml")))["er"]
    assert cfg.method.kind == "er" and cfg.method.name == "er"


@pytest.mark.parametrize("experiment, overrides, where", [
    (None, ["method.name=cll_clip_teir"], "the override 'method.name=cll_clip_teir'"),
    ("method:\n  name: cll_clip_teir\n", [], "exp.yaml"),
])
def test_a_method_name_that_contradicts_the_preset_is_refused(tmp_path, experiment, overrides, where):
    path = None
    if experiment:
        path = tmp_path / "exp.yaml"
        path.write_text(experiment)
    with pytest.raises(ConfigError, match=f"{re.escape(where)}.*method.name=cll_clip_teir.*'cll_clip'"):
        load_config(path, method="cll_clip", overrides=overrides)
    assert load_config(path, method="cll_clip_teir", overrides=overrides).method.grad_scale  # agreeing: fine


def test_a_yaml_error_names_the_file_and_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  lr: 1e-3\n  epochs: [3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line \d+: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_config(tmp_path / "list.yaml")


def _fields(dataclass_instance) -> dict:
    return dataclasses.asdict(dataclass_instance)


def test_each_default_lives_in_one_place():
    """The package YAMLs set only what they change: default.yaml against the dataclass fields, each preset's own
    keys against what its parents (over the defaults) give, each experiment against default.yaml."""
    from importlib import resources

    from cll_ray.config import MethodConfig, load_yaml

    configs = resources.files("cll_ray").joinpath("configs")
    defaults = ExperimentConfig().to_dict()
    default_yaml = load_yaml(configs.joinpath("default.yaml").read_text())
    below = {section: dict(defaults[section]) for section in defaults}
    for section, values in default_yaml.items():
        for key, value in values.items():
            assert below[section][key] != value, f"default.yaml sets {section}.{key} to its dataclass default"
            below[section][key] = value
    for experiment in configs.joinpath("experiments").iterdir():
        for section, values in load_yaml(experiment.read_text()).items():
            for key, value in values.items():
                assert below[section][key] != value, f"{experiment.name} sets {section}.{key} to its default"

    raw = load_yaml(configs.joinpath("methods.yaml").read_text())
    presets = {**method_presets(), **{name: None for name in raw if name.startswith("_")}}
    method_defaults = _fields(MethodConfig())
    for name, entry in raw.items():
        entry = entry or {}
        parents = entry.get("inherit_from", [])
        inherited = dict(method_defaults)
        for parent in [parents] if isinstance(parents, str) else parents:
            inherited.update({k: v for k, v in _resolved(raw, parent).items()})
        for key, value in entry.items():
            if key != "inherit_from":
                assert inherited[key] != value, f"methods.yaml: {name}.{key} repeats the value it inherits"
    assert presets


def _resolved(raw: dict, name: str) -> dict:
    entry = dict(raw[name] or {})
    parents = entry.pop("inherit_from", [])
    out: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        out.update(_resolved(raw, parent))
    return {**out, **entry}
