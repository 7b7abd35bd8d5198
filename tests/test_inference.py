"""The Ray Data feature-extraction job on an imported dataset equals the in-process path."""

import numpy as np
import pytest
import ray
from realdata import write_coco36

from cll_ray.features import load_or_compute_features
from cll_ray.importers import import_coco36
from cll_ray.inference import compute_features

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2)
    yield
    ray.shutdown()


def test_ray_data_features_equal_in_process(ray_local, tmp_path, shipped_base):
    src, images = write_coco36(tmp_path, langs=["en", "fr", "ru"])
    data = tmp_path / "coco"
    import_coco36(src, images, data, progress=False)
    base_dir = shipped_base.save(tmp_path / "base")
    local = load_or_compute_features(data, shipped_base, tmp_path / "cache-local", progress=False)
    remote = compute_features(data, base_dir, progress=False)
    assert remote.image_ids == local.image_ids and remote.texts == local.texts
    assert len(remote.texts) == 24  # the distinct English sources of the train split
    np.testing.assert_allclose(remote.image_features, local.image_features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(remote.text_features, local.text_features, rtol=1e-4, atol=1e-5)
    # the cache is keyed by dataset + base model: a second call reuses it whatever engine asks
    cached = load_or_compute_features(data, shipped_base, tmp_path / "cache-local", base_dir=base_dir)
    np.testing.assert_array_equal(cached.image_features, local.image_features)
