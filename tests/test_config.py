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
    from cll_ray.checkpoint import load_run_configs

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
    with pytest.raises(ConfigError, match=r"run.orders \(--orders\) = 0: expected an integer >= 1"):
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


def test_an_experiment_yaml_that_is_not_a_mapping_is_refused(tmp_path):
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


# ---- bad values are refused when the config is built, naming the key, the value and what is allowed ----------
@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "train.lr = nan: expected a finite number > 0"),
    ("train.lr=.inf", "train.lr = inf: expected a finite number > 0"),
    ("train.lr=-1", "train.lr = -1.0: expected a finite number > 0"),
    ("train.epochs=0", "train.epochs = 0: expected an integer >= 1"),
    ("train.epochs=-1", "train.epochs = -1: expected an integer >= 1"),
    ("train.batch_size=0", "train.batch_size = 0: expected an integer >= 1"),
    ("model.language_vocab_size=0", "model.language_vocab_size = 0: expected an integer >= 1"),
    ("train.warmup_ratio=1", "train.warmup_ratio = 1.0: expected a finite number >= 0 and < 1"),
    ("train.betas=[0.9, 1.0]", "train.betas[1] = 1.0: expected a finite number >= 0 and < 1"),
    ("method.temperature=0", "method.temperature = 0.0: expected a finite number > 0"),
    ("method.cross_modal_weight=-0.5", "method.cross_modal_weight = -0.5: expected a finite number >= 0"),
    ("method.init_std=nan", "method.init_std = nan: expected a finite number >= 0"),
    ("run.cpus_per_worker=0", "run.cpus_per_worker = 0.0: expected a finite number > 0"),
    ("run.num_workers=-1", "run.num_workers (--workers) = -1: expected an integer >= 0"),
    ("method.init=uniform", "method.init = 'uniform': expected one of normal, teir"),
    ("run.languages=[en,fr,fr]", "fr given more than once"),
    ("run.languages=[]", "expected at least one language, English first"),
    ("run.languages=[fr,en]", "expected English (en) first"),
    ("run.languages=en, fr", "' fr' is not a language code"),
])
def test_out_of_range_values_are_refused_with_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


def test_every_bad_value_is_listed_at_once_and_checkpointed_configs_are_checked_too():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.lr=0", "train.epochs=0"])
    assert "train.lr = 0.0" in str(err.value) and "train.epochs = 0" in str(err.value)
    bad = load_config().to_dict()
    bad["train"]["batch_size"] = 0
    with pytest.raises(ConfigError, match="train.batch_size = 0"):  # a resumed run's config.yaml, a checkpoint's
        ExperimentConfig.from_dict(bad)
    for preset in method_presets():  # every shipped preset is valid as it is
        load_config(method=preset)


@pytest.mark.parametrize("langs, message", [
    ("en, fr", "' fr'"), ("en fr", "'en fr'"), ("en,,fr", "''"), ("", "expected comma-separated language codes"),
])
def test_langs_option_with_spaces_or_empty_entries_is_refused(langs, message):
    from cll_ray.cli import build_parser, run_overrides

    args = build_parser().parse_args(["run", "--langs", langs])
    with pytest.raises(ValueError) as err:
        run_overrides(args)
    assert "--langs" in str(err.value) and message in str(err.value)


def test_langs_duplicates_and_english_not_first_are_refused_through_the_cli(capsys, tmp_path):
    from cll_ray.cli import main

    for langs, message in (("en,fr,en", "en given more than once"), ("fr,en", "English (en) first")):
        assert main(["run", "--langs", langs, f"run.output_dir={tmp_path}"]) == 2
        assert "run.languages (--langs)" in (err := capsys.readouterr().err) and message in err
    assert not list(tmp_path.iterdir())  # nothing was written


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  lr: 1e-3\n  epochs: [3\nrun:\n  name: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_config(path)
    from cll_ray.cli import main

    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: not valid YAML" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="override 'train.lr=\\[1': not valid YAML"):
        load_config(overrides=["train.lr=[1"])


def test_cli_bad_values_exit_2_at_once_before_ray(tmp_path):
    """The exit path as a user meets it: a separate process, exit code 2, the key in one line, no traceback,
    and promptly (no Ray start-up, nothing written)."""
    import subprocess
    import sys
    import time

    from helpers import REPO, cli_env

    cases = [(["train.lr=nan"], "train.lr = nan: expected a finite number > 0"),
             (["--methods", ""], "--methods: unknown method(s) (none given)"),
             (["--methods", "cll_clip,cll_clip"], "--methods: a method is given twice")]
    for args, message in cases:
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "cll_ray", "run", *args, f"run.output_dir={tmp_path}"],
                              env=cli_env(tmp_path / "home"), cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert time.time() - started < 30, f"{args} took {time.time() - started:.0f}s to exit"
    assert not list(tmp_path.iterdir())
