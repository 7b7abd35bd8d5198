"""A run is a function of its config and data: the same config twice, in fresh processes, gives byte-identical
tokenizers and the same accuracy matrix (issue 13). Each run has its own data home, so its own tokenizer cache:
the second run trains every BPE again (with another hash seed) and must still agree."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import cli, cli_env, kill_tree

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1200)]  # two CLI runs: CI's slow step

TINY = ["--methods", "cll_clip_teir", "--langs", "en,zh", "--workers", "0", "--quiet", "data.synthxm_size=tiny",
        "train.epochs=1", "train.batch_size=32", "model.language_vocab_size=600"]


def _run(home: Path, out: Path) -> Path:
    proc = cli(["run", *TINY, f"run.output_dir={out}", "run.name=r"], cli_env(home), start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        kill_tree(proc)  # and its local Ray
        raise
    assert proc.returncode == 0, output[-4000:]
    return out / "r"


def _matrix(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "cll_clip_teir" / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_same_config_twice_in_fresh_processes_gives_identical_runs(cli_home, tmp_path):
    # a second data home with the same (generated, deterministic) dataset and teacher features (the session's,
    # to keep this short), but its own tokenizer cache: every BPE is trained again there
    other = tmp_path / "home"
    (other / "synthxm").mkdir(parents=True)
    shutil.copytree(cli_home / "synthxm" / "tiny-seed0", other / "synthxm" / "tiny-seed0")
    (cli_home / "features").mkdir(exist_ok=True)
    (other / "features").symlink_to(cli_home / "features", target_is_directory=True)
    first, second = _run(cli_home, tmp_path / "a"), _run(other, tmp_path / "b")

    plan = (first / "tokenizer_plan.json").read_bytes()
    assert plan == (second / "tokenizer_plan.json").read_bytes()
    assert [g["lang"] for g in json.loads(plan)["orders"][0]["growth"]] == ["en", "zh"]
    trained = sorted((other / "tokenizers").glob("*.json"))
    assert len(trained) == 2  # en and zh, each trained once in the second home
    for path in trained:
        assert path.read_bytes() == (cli_home / "tokenizers" / path.name).read_bytes()
    assert _matrix(first) == _matrix(second)  # every score, CL metric, growth figure and loss
    first_ckpt = sorted((first / "cll_clip_teir" / "checkpoints").glob("*/learner.pt"))
    assert [p.parent.name for p in first_ckpt] == ["task01-en", "task02-zh"]

    # the cache is hit: planning again in this process (another hash seed) trains nothing and changes nothing
    from cll_ray.base_model import BaseModel
    from cll_ray.config import load_config
    from cll_ray.distributed.driver import plan_tokenizers

    stamps = {p: p.stat().st_mtime_ns for p in trained}
    cfg = load_config(method="cll_clip_teir", overrides=[*TINY[7:], f"data.root={other}", "run.languages=[en,zh]"])
    inputs = {"base": BaseModel.load(second / "base"), "features_dir": str(second / "features"),
              "dataset_dir": str(other / "synthxm" / "tiny-seed0")}
    again, _ = plan_tokenizers(cfg, inputs, ["en", "zh"])
    assert json.dumps({"languages": ["en", "zh"], **again}, ensure_ascii=False) == \
        json.dumps(json.loads(plan)["orders"][0], ensure_ascii=False)
    assert sorted((other / "tokenizers").glob("*.json")) == trained
    assert {p: p.stat().st_mtime_ns for p in trained} == stamps

    # a resumed run reads the stored plan as it is, and refuses a plan made for other task orders
    from cll_ray.distributed.driver import PLAN_FILE, stored_plans

    stored = json.loads(plan)
    stored["orders"][0]["growth"][1]["num_overlap"] = -1  # marks the file's plan: retraining would not give it
    (first / PLAN_FILE).write_text(json.dumps(stored))
    assert stored_plans(cfg, inputs, [["en", "zh"]], first)[0]["growth"][1]["num_overlap"] == -1
    with pytest.raises(ValueError, match=r"tokenizer_plan.json: planned for the task orders \[\['en', 'zh'\]\]"):
        stored_plans(cfg, inputs, [["en", "fr"]], first)
