"""Interrupted work: a task checkpoint or an output folder killed mid-write leaves the previous complete version,
and `cll-ray run --resume` reads the checkpoints it would start from before Ray starts."""

import os

import pytest
import torch

from cll_ray import checkpoint as ckpt
from cll_ray.checkpoint import check_resumable, load_checkpoint, load_run_configs, save_checkpoint
from cll_ray.config import load_config, save_config
from cll_ray.io import atomic_dir

TINY = ["data.synthxm_size=tiny", "run.languages=[en,fr,ru]", "model.language_vocab_size=600"]


def state(*langs):
    return {"tasks": [{"lang": lang, "index": i} for i, lang in enumerate(langs)], "weights": torch.arange(6.0)}


def test_a_checkpoint_killed_mid_write_leaves_the_previous_one(tmp_path, monkeypatch):
    cfg = load_config(overrides=TINY)
    path = tmp_path / "task00-en" / ckpt.CHECKPOINT_FILE
    save_checkpoint(path, cfg, state("en"), "base")
    before = path.read_bytes()
    real = torch.save

    def half_then_killed(obj, f, *args, **kwargs):  # a serializer that dies after writing part of the file
        real(obj, f, *args, **kwargs)
        with open(f, "r+b") as out:
            out.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", half_then_killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, cfg, state("en", "fr"), "base")
    assert path.read_bytes() == before and [t["lang"] for t in load_checkpoint(path)["learner"]["tasks"]] == ["en"]
    assert sorted(p.name for p in path.parent.iterdir()) == [ckpt.CHECKPOINT_FILE]  # no temporary file left


def test_a_folder_killed_between_its_two_renames_is_restored_by_the_next_writer(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "v").write_text("1")
    os.replace(out, tmp_path / ".model.old")  # killed after the first rename of a replacement
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "v").write_text("2")
        raise KeyboardInterrupt
    assert (out / "v").read_text() == "1" and not list(tmp_path.glob(".model*"))


def fake_run(tmp_path, method="cll_clip"):
    """A run directory as the driver leaves it after two tasks: config, the run's and Ray Train's checkpoints."""
    run_dir = tmp_path / "run"
    cfg = load_config(method=method, overrides=TINY)
    save_config(cfg, run_dir / method / "config.yaml")
    ours = run_dir / method / "checkpoints"
    ray_copy = run_dir / "train" / f"run-{method}"
    for folder in (ours, ray_copy):
        save_checkpoint(folder / "task00-en" / ckpt.CHECKPOINT_FILE, cfg, state("en"), "base")
        save_checkpoint(folder / "task01-fr" / ckpt.CHECKPOINT_FILE, cfg, state("en", "fr"), "base")
    return run_dir, ours / "task01-fr" / ckpt.CHECKPOINT_FILE, ray_copy / "task01-fr" / ckpt.CHECKPOINT_FILE


def test_resume_reports_a_truncated_checkpoint_before_ray_starts(tmp_path, capsys):
    import sys

    from cll_ray.cli import main

    run_dir, ours, theirs = fake_run(tmp_path)
    found = check_resumable(run_dir, load_run_configs(run_dir))
    assert found == {"cll_clip": f"after task 2 (fr), from {theirs}"}
    for damaged in (theirs, ours):
        good = damaged.read_bytes()
        damaged.write_bytes(good[: len(good) // 3])
        files = sorted((p, p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
        assert main(["run", "--resume", str(run_dir), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{damaged}: not a readable cll-ray checkpoint" in err and "--resume" in err
        assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # before Ray, not in a worker
        assert sorted((p, p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == files  # nothing written
        damaged.write_bytes(good)
