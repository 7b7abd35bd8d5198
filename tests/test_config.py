"""Config merge order, strictness, presets and round trips."""

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
    assert teir["cross_modal_weight"] == 0.01  # inherited from cll_clip
    assert presets["cll_clip"]["init_std"] == 0.02 and not presets["cll_clip"].get("grad_scale", False)
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
