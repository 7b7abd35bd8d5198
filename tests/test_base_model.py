"""The English base model: the shipped one loads and retrieves; pretraining is deterministic and cached."""

import torch

from cll_ray.base_model import BaseModel
from cll_ray.pretrain import PretrainConfig, english_retrieval, load_or_pretrain, pretrain


def test_shipped_base_loads_and_retrieves_english(shipped_base, tiny_synthxm):
    from cll_ray.pretrain import _eval_tensors

    assert shipped_base.arch == "cll-synthclip-4L-128"
    assert shipped_base.info["test_en"]["t2i_r1"] >= 30  # its recorded score on the default 1,000-image test split
    scores = english_retrieval(shipped_base, *_eval_tensors(shipped_base, tiny_synthxm, "test"))
    chance = 100 / 60
    assert scores["t2i_r1"] > 15 * chance and scores["i2t_r1"] > 15 * chance, scores


def test_base_model_round_trip(shipped_base, tmp_path):
    shipped_base.save(tmp_path / "base")
    again = BaseModel.load(tmp_path / "base")
    assert again.fingerprint == shipped_base.fingerprint
    ids = torch.from_numpy(again.tokenizer.encode(["a small red circle"], again.context_length))
    torch.testing.assert_close(again.clip.encode_text(ids), shipped_base.clip.encode_text(ids))


TINY = PretrainConfig(arch="cll-tinyclip", vocab_size=300, steps=12, batch_size=32, eval_every=6)


def test_pretraining_is_deterministic_and_cached(tiny_synthxm, tmp_path):
    a = pretrain(tiny_synthxm, TINY, progress=False)
    b = pretrain(tiny_synthxm, TINY, progress=False)
    assert a.fingerprint == b.fingerprint  # same seed, same data -> the same weights, bit for bit
    assert [c["step"] for c in a.info["curve"]] == [6, 12]
    assert set(a.info["test_en"]) >= {"t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"}
    first, folder, cached = load_or_pretrain(tiny_synthxm, tmp_path, TINY, progress=False)
    assert not cached and (folder / "weights.pt").exists()
    second, folder2, cached2 = load_or_pretrain(tiny_synthxm, tmp_path, TINY, progress=False)
    assert cached2 and folder2 == folder and second.fingerprint == first.fingerprint == a.fingerprint
