"""Two language tasks in-process through the engine on a tiny SynthXM, and checkpoints of the learner."""

import numpy as np
import pytest
import torch

from cll_ray.checkpoint import load_checkpoint, save_checkpoint
from cll_ray.config import load_config
from cll_ray.continual import ContinualLearner

OVERRIDES = ["train.batch_size=32", "train.epochs=3", "train.lr=5e-3", "model.language_vocab_size=600"]


@pytest.fixture(scope="module")
def two_tasks(tiny_synthxm, shipped_base, tiny_features):
    cfg = load_config(method="cll_clip_teir", overrides=OVERRIDES)
    learner = ContinualLearner(shipped_base, tiny_features, tiny_synthxm, cfg)
    zero_shot = {lang: learner.evaluate(lang) for lang in ("en", "ru")}
    base_size = learner.tokenizer.size
    en_record = learner.learn("en", progress=False)
    freq_after_en = learner.student.token_embedding.token_frequencies.clone()
    ru_task = learner.begin_task("ru")
    ru_outcome = learner.train_task(ru_task, progress=False)
    learner.end_task(ru_task, ru_outcome)
    return dict(learner=learner, zero_shot=zero_shot, base_size=base_size, en=en_record, ru_task=ru_task,
                freq_after_en=freq_after_en, final={lang: learner.evaluate(lang) for lang in ("en", "ru")})


def test_new_language_rises_well_above_zero_shot_and_english_survives(two_tasks):
    zs, final = two_tasks["zero_shot"], two_tasks["final"]
    chance = 100 / 60  # tiny test split: 60 images
    assert final["ru"]["t2i_r1"] > zs["ru"]["t2i_r1"] + 20, (zs["ru"], final["ru"])
    assert final["ru"]["t2i_r1"] > 10 * chance
    assert final["en"]["t2i_r1"] > 10 * chance  # English still retrievable after learning Russian
    assert final["en"]["t2i_r1"] > 0.5 * zs["en"]["t2i_r1"]


def test_vocabulary_grew_and_frequencies_counted_per_task(two_tasks):
    learner, base_size = two_tasks["learner"], two_tasks["base_size"]
    ru = two_tasks["ru_task"]
    assert ru.growth.num_unique > 0 and learner.tokenizer.size == learner.student.token_embedding.num_embeddings
    freqs_en = two_tasks["freq_after_en"]
    en_growth = two_tasks["en"]["growth"]
    # after task 1: base rows 2 (+1 where English used them), rows added by English 1 (+1 where used)
    assert set(freqs_en[:base_size].unique().tolist()) <= {2.0, 3.0}
    assert set(freqs_en[base_size : en_growth["new_size"]].unique().tolist()) <= {1.0, 2.0}
    # r_i for the Russian task: 1/f over its tokens, zero for BOS/EOS and for tokens it does not use
    r = ru.row_scale
    tokens = torch.from_numpy(ru.task_tokens)
    assert r[learner.tokenizer.special_ids].sum() == 0
    unused = torch.ones(len(r), dtype=torch.bool)
    unused[tokens] = False
    assert r[unused].sum() == 0
    new_rows = tokens[tokens >= en_growth["new_size"]]
    assert len(new_rows) > 0 and torch.all(r[new_rows] == 1.0)  # unseen before: f = 1


def test_teir_left_unused_rows_untouched(two_tasks, shipped_base):
    learner, base_size = two_tasks["learner"], two_tasks["base_size"]
    used = set()
    for lang in ("en", "ru"):
        from cll_ray import dataset as ds

        used.update(learner.tokenizer.token_set(ds.read_captions(learner.dataset_dir, lang).captions).tolist())
    untouched = [i for i in range(base_size) if i not in used]
    base_weight = shipped_base.clip.token_embedding.weight.detach()
    torch.testing.assert_close(learner.student.token_embedding.weight[untouched].detach(), base_weight[untouched])


def test_checkpoint_round_trip(two_tasks, tmp_path, shipped_base, tiny_features, tiny_synthxm):
    learner = two_tasks["learner"]
    path = save_checkpoint(tmp_path / "ckpt.pt", learner.cfg, learner.state_dict(), shipped_base.fingerprint)
    loaded = load_checkpoint(path)
    assert loaded["config"] == learner.cfg and loaded["base_fingerprint"] == shipped_base.fingerprint
    fresh = ContinualLearner(shipped_base, tiny_features, tiny_synthxm, loaded["config"])
    fresh.load_state_dict(loaded["learner"])
    assert fresh.tokenizer.vocab == learner.tokenizer.vocab
    assert [t["lang"] for t in fresh.tasks] == ["en", "ru"]
    for lang in ("en", "ru"):
        assert fresh.evaluate(lang) == pytest.approx(two_tasks["final"][lang])
    assert not list(tmp_path.glob(".*tmp"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_matrix_statistics_feed_teir_init(two_tasks):
    w = two_tasks["learner"].student.token_embedding.weight.detach().numpy()
    mu, sigma = two_tasks["learner"].student.token_embedding.matrix_statistics()
    assert mu == pytest.approx(float(w.mean()), abs=1e-6) and sigma == pytest.approx(float(w.std(ddof=1)), rel=1e-4)
    assert np.isfinite(w).all()
