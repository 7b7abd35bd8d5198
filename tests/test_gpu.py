"""On a CUDA device: one task in bf16 and in fp16 (with the GradScaler), the NCCL path with one GPU worker, and
the bench. Skipped where no CUDA device is visible (CI); run them with `uv run pytest -m gpu` on a GPU machine."""

from __future__ import annotations

import json

import pytest
import torch

from cll_ray.config import load_config
from cll_ray.continual import ContinualLearner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

OVERRIDES = ["train.batch_size=32", "train.epochs=2", "train.lr=5e-3", "model.language_vocab_size=600"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_one_task_on_the_gpu(precision, tiny_synthxm, shipped_base, tiny_features):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = load_config(method="cll_clip_teir", overrides=[*OVERRIDES, f"train.precision={precision}"])
    learner = ContinualLearner(shipped_base, tiny_features, tiny_synthxm, cfg)
    cuda = torch.device("cuda")
    learner.student.to(cuda)
    zero_shot = learner.evaluate("fr")["r_mean"]
    task = learner.begin_task("fr")
    outcome = learner.train_task(task, wrap=lambda m: m.to(cuda), device=cuda, progress=False)
    learner.end_task(task, outcome)
    assert learner.student.token_embedding.weight.is_cuda
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in outcome.history)
    assert learner.evaluate("fr")["r_mean"] > zero_shot + 5  # it learned the language on the GPU


def test_fp16_steps_through_a_grad_scaler():
    from dataclasses import replace

    from cll_ray.bench.measure import QUICK, Bench

    bench = Bench(replace(QUICK, arch="cll-synthclip-4L-128", batch_size=8), torch.device("cuda"), "fp16")
    step, _, _, training_step = bench.cll_ray_step(bench.student, "fp16")
    assert training_step.scaler is not None and bench.student.token_embedding.sparse_grad
    step()
    assert torch.isfinite(bench.student.token_embedding.weight).all()


def test_nccl_path_with_one_gpu_worker(ray_local, cli_home, tmp_path, monkeypatch):
    from cll_ray.distributed.driver import run_experiment

    monkeypatch.setenv("CLL_RAY_HOME", str(cli_home))
    cfg = load_config(method="cll_clip_teir", overrides=[
        "data.synthxm_size=tiny", "run.languages=[en,fr]", *OVERRIDES, "run.num_workers=1", "run.use_gpu=true"])
    rows = run_experiment({"cll_clip_teir": cfg}, tmp_path / "run", progress=False)["cll_clip_teir"]["rows"]
    assert [r["lang"] for r in rows] == ["en", "fr"]


def test_bench_on_the_gpu(tmp_path):
    from cll_ray.cli import main

    out = tmp_path / "gpu.json"
    assert main(["bench", "--quick", "--device", "cuda", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["device"] == torch.cuda.get_device_name(0) and record["loss_check"]["relative_difference"] < 1e-4
