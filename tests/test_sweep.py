"""Search spaces, task orders and the cross-order objective (cll_ray.sweep): no Ray is started here."""

import math
from pathlib import Path

import pytest
import ray

from cll_ray.config import ConfigError
from cll_ray.sweep import (
    apply_point,
    combine_orders,
    list_spaces,
    load_space,
    order_score,
    sweep_metrics,
    task_orders,
)

SPACES = Path(__file__).resolve().parents[1] / "tune_spaces"


@pytest.mark.parametrize("path", list_spaces(SPACES), ids=lambda p: p.name)
def test_every_shipped_space_loads_and_converts_without_starting_ray(path):
    from ray.tune.search.sample import Domain

    space = load_space(path)
    from cll_ray.distributed.tuner import param_space

    tune_space = param_space(space)
    assert set(tune_space) == {p.key for p in space.params} and tune_space
    for p in space.params:
        value = tune_space[p.key]
        assert isinstance(value, Domain) or (p.kind == "grid" and value == {"grid_search": list(p.args)})
    base = space.base_config()
    if space.evaluate_preset:  # the preset (the paper's values) lies inside the space and is reproduced exactly
        point = space.preset_point(base)
        assert apply_point(base, point) == base
    # a sampled point converts to a valid config
    from ray.tune.search.variant_generator import generate_variants

    _, resolved = next(generate_variants({k: v for k, v in tune_space.items()}))
    trial_cfg = apply_point(base, resolved)
    assert trial_cfg.method.name == space.method
    assert not ray.is_initialized()


def test_teir_space_holds_the_paper_values():
    space = load_space(SPACES / "teir.yaml")
    point = space.preset_point(space.base_config())
    assert point["method.teir_sigma_scale"] == 1.0 and point["method.teir_mu_shift"] == 0.0
    assert point["method.freq_power"] == 1.0 and point["train.weight_decay"] == 0.05
    assert point["method.grad_scale"] is True and point["method.decay_scale"] is True
    assert point["method.cross_lingual_weight"] == 1.0 and point["method.cross_modal_weight"] == 0.01


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("method: cll_clip\nspace: {train.lr: {gaussian: [0, 1]}}", "unknown domain 'gaussian'"),
    ("method: cll_clip\nspace: {train.nope: {uniform: [0, 1]}}", "unknown config key 'train.nope'"),
    ("method: cll_clip\nspace: {model.arch: {choice: [a, b]}}", "only method.*, train.* keys"),
    ("method: cll_clip\nspace: {train.lr: {uniform: [1, 0]}}", "low must be below high"),
    ("method: cll_clip\nspace: {train.lr: {loguniform: [0, 1]}}", "positive low bound"),
    ("method: cll_clip\nspace: {train.epochs: {choice: [1, two]}}", "expected an integer"),
    ("method: cll_clip\nspace: {train.lr: {uniform: [0.1, 0.2]}}", "preset's value 0.002 is outside"),
    ("method: cll_clip\nspace: {method.grad_scale: {grid: [true, false]}}", "grid dimensions need"),
    ("method: nope\nspace: {train.lr: {uniform: [0, 1]}}", "unknown method 'nope'"),
    ("method: cll_clip\nobjective: best\nspace: {train.lr: {uniform: [0.001, 1]}}", "objective: expected one of"),
    ("method: cll_clip\nspaces: {}", "unknown key(s) spaces"),
])
def test_bad_spaces_name_the_file_and_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_task_orders_are_seeded_distinct_and_english_first():
    langs = ["en", "fr", "de", "ru", "zh"]
    orders = task_orders(langs, 3, seed=0)
    assert orders[0] == langs  # order 0 is the run's own
    assert len({tuple(o) for o in orders}) == 3
    assert all(o[0] == "en" and sorted(o) == sorted(langs) for o in orders)
    assert task_orders(langs, 3, seed=0) == orders  # deterministic
    with pytest.raises(ConfigError, match="distinct task orders"):
        task_orders(["en", "fr"], 3)


def test_objectives_across_orders():
    cl = [{"t2i_r1": {"AA": 40.0, "F": 10.0, "Fen": 2.0}}, {"t2i_r1": {"AA": 30.0, "F": 4.0, "Fen": 1.0}}]
    assert sweep_metrics(cl, "final_aa", "t2i_r1")["objective"] == pytest.approx(35.0)
    assert sweep_metrics(cl, "aa_minus_f", "t2i_r1")["objective"] == pytest.approx(((40 - 10) + (30 - 4)) / 2)
    assert sweep_metrics(cl, "worst_aa", "t2i_r1")["objective"] == pytest.approx(30.0)
    metrics = sweep_metrics([cl[0], None], "final_aa", "t2i_r1")  # order 1 not started yet
    assert metrics["objective"] == 40.0 and "o1_AA" not in metrics and metrics["o0_F"] == 10.0
    # after the first task F is undefined: it does not count against the configuration
    assert order_score({"AA": 50.0, "F": math.nan}, "aa_minus_f") == 50.0
    with pytest.raises(ValueError):
        combine_orders([], "final_aa")


def test_trials_fit_the_cluster():
    from cll_ray.config import load_config
    from cll_ray.distributed.driver import trainers_that_fit as trials_that_fit
    from cll_ray.distributed.tuner import check_sweepable

    two_workers = load_config(overrides=["run.num_workers=2", "run.cpus_per_worker=1"])
    assert trials_that_fit(two_workers, {"CPU": 8.0}) == 4
    assert trials_that_fit(two_workers, {"CPU": 1.0}) == 1  # never zero: the trial waits for resources
    gpus = load_config(overrides=["run.num_workers=2", "run.use_gpu=true"])
    assert trials_that_fit(gpus, {"CPU": 32.0, "GPU": 4.0}) == 2
    half = load_config(overrides=["run.num_workers=1", "run.cpus_per_worker=0.5"])
    assert trials_that_fit(half, {"CPU": 2.0}) == 4
    with pytest.raises(ConfigError, match="at least 1"):
        check_sweepable(load_config(overrides=["run.num_workers=0"]))
    assert not ray.is_initialized()
