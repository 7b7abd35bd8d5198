"""One language task through the real model path: a randomly initialised ViT-B/32 CLIP with CLIP's own BPE."""

import numpy as np
import pytest
import torch
from realdata import write_coco36

from cll_ray.base_model import BaseModel
from cll_ray.config import load_config
from cll_ray.continual import ContinualLearner
from cll_ray.features import load_or_compute_features
from cll_ray.importers import import_coco36

pytestmark = pytest.mark.timeout(600)


def test_vit_b32_one_task_end_to_end(tmp_path):
    src, images = write_coco36(tmp_path, langs=["en", "ru"])
    data = tmp_path / "coco"
    import_coco36(src, images, data, progress=False)
    base = BaseModel.from_open_clip("ViT-B-32", None)  # no weights: nothing to download, architecture only
    assert base.tokenizer.size == 49408 and base.tokenizer.eos_id == 49407 and base.image_size == 224
    features = load_or_compute_features(data, base, tmp_path / "cache", progress=False)
    assert features.image_features.shape == (16, 512) and features.text_features.shape == (24, 512)
    cfg = load_config(method="cll_clip_teir", overrides=[
        f"data.dataset={data}", "model.arch=ViT-B-32", "train.batch_size=8", "train.epochs=1",
        "train.eval_batch_size=16", "model.language_vocab_size=300",
        "model.bpe_batch_lines=8"])  # the fixture has 12 Russian training captions
    learner = ContinualLearner(base, features, data, cfg)
    before = {k: v.clone() for k, v in learner.student.backbone_state_dict().items()}
    record = learner.learn("ru", progress=False)
    grown = learner.tokenizer
    assert record["growth"]["num_unique"] > 0 and grown.size == learner.student.token_embedding.num_embeddings
    # new ids sit above EOS, so open_clip's argmax pooling would pool at a word, not at EOS (method.md §1.3)
    ids = torch.from_numpy(grown.encode(["красный квадрат"], learner.context_length))
    assert int(ids.max()) > grown.eos_id
    scores = learner.evaluate("ru")
    assert all(np.isfinite(v) for v in scores.values()) and 0 <= scores["t2i_r1"] <= 100
    # only the token embedding learned: the transformer is the base model's, bit for bit
    for name, tensor in learner.student.backbone_state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, msg=name)


def test_base_model_from_a_local_open_clip_weights_file(tmp_path):
    from safetensors.torch import save_file

    from cll_ray.model import build_clip

    reference = build_clip("cll-tinyclip", 49408, 49407)  # CLIP's vocabulary on a tiny architecture
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    for name in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
        base = BaseModel.from_open_clip("cll-tinyclip", str(tmp_path / name))
        for key, tensor in base.clip.state_dict().items():
            torch.testing.assert_close(tensor, state[key], rtol=0, atol=0, msg=key)
        assert base.info["source"].endswith(name) and base.tokenizer.size == 49408
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        BaseModel.from_open_clip("ViT-B-32", str(tmp_path / "missing.pt"))
