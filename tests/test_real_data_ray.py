"""On real Ray: the Ray Data feature job equals the in-process path, and import -> run -> export end to end."""

import numpy as np
import pytest
import torch
from realdata import reload_embeddings, write_coco36

from cll_ray.base_model import BaseModel
from cll_ray.checkpoint import load_checkpoint
from cll_ray.config import load_config
from cll_ray.continual import ContinualLearner
from cll_ray.distributed.driver import run_experiment
from cll_ray.distributed.feature_job import compute_features
from cll_ray.export import export_model
from cll_ray.features import FeatureStore, load_or_compute_features
from cll_ray.importers import import_coco36

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
PROBES = ["a blue circle", "синий круг", "un cercle bleu"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    src, images = write_coco36(root, langs=["en", "fr", "ru"])
    import_coco36(src, images, root / "data", progress=False)
    return root / "data"


def test_ray_data_features_equal_in_process(ray_local, coco, tmp_path, shipped_base):
    base_dir = shipped_base.save(tmp_path / "base")
    local = load_or_compute_features(coco, shipped_base, tmp_path / "cache", progress=False)
    remote = compute_features(coco, base_dir)
    assert remote.image_ids == local.image_ids and remote.texts == local.texts
    assert len(remote.texts) == 24  # the distinct English sources of the train split
    np.testing.assert_allclose(remote.image_features, local.image_features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(remote.text_features, local.text_features, rtol=1e-4, atol=1e-5)
    # the cache is keyed by dataset + base model: a second call reuses it whichever engine asks
    cached = load_or_compute_features(coco, shipped_base, tmp_path / "cache", compute=lambda: compute_features(coco, base_dir))
    np.testing.assert_array_equal(cached.image_features, local.image_features)


def test_import_run_export_reload(ray_local, coco, tmp_path, monkeypatch):
    monkeypatch.setenv("CLL_RAY_HOME", str(tmp_path / "home"))
    cfg = load_config(method="cll_clip_teir", overrides=[
        f"data.dataset={coco}", "run.languages=[en,ru]", "train.batch_size=8", "train.epochs=1", "train.lr=5e-3",
        "model.language_vocab_size=400", "model.bpe_batch_lines=8", "run.num_workers=0"])
    run_dir = tmp_path / "run"
    rows = run_experiment({"cll_clip_teir": cfg}, run_dir, progress=False)["cll_clip_teir"]["rows"]
    assert [r["lang"] for r in rows] == ["en", "ru"]
    assert list((tmp_path / "home" / "features").iterdir())  # computed by the Ray Data job, cached
    out = tmp_path / "model"
    info = export_model(run_dir, out)  # the last task by default
    assert info["task"] == 2 and info["scores"]["t2i_r1"] == rows[-1]["scores"]["t2i_r1"]
    # the run's own embeddings, from its last checkpoint
    state = load_checkpoint(next((run_dir / "cll_clip_teir" / "checkpoints").glob("task02-ru/learner.pt")))
    learner = ContinualLearner(BaseModel.load(run_dir / "base"), FeatureStore.load(run_dir / "features"), coco, cfg)
    learner.load_state_dict(state["learner"])
    with torch.no_grad():
        expected = learner.student(torch.from_numpy(learner.tokenizer.encode(PROBES, learner.context_length))).numpy()
    np.testing.assert_allclose(reload_embeddings(out, PROBES, tmp_path), expected, rtol=1e-4, atol=1e-5)
