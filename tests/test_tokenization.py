"""Tokenizer construction and growth (method.md §1.4, trap 8)."""

import numpy as np
import pytest

from cll_ray.tokenization import (
    BOS_TOKEN,
    EOS_TOKEN,
    REFERENCE_BATCH,
    ClipBPE,
    grow,
    reference_lines,
    train_bpe,
    train_bpe_cached,
    training_key,
)


def _vocab(tokens):
    return {t: i for i, t in enumerate(tokens)}


@pytest.fixture
def current():
    # ids 0..8; one merge "a b" -> "ab"
    tokens = [BOS_TOKEN, EOS_TOKEN, "a", "b", "c", "a</w>", "b</w>", "c</w>", "ab"]
    return ClipBPE(vocab=_vocab(tokens), merges=[("a", "b")])


@pytest.fixture
def language():
    # the language tokenizer's own id order: c</w>, b, bc</w>, x, ab; its merges list "a b" again (a duplicate)
    tokens = [BOS_TOKEN, EOS_TOKEN, "c</w>", "b", "bc</w>", "x", "ab"]
    return ClipBPE(vocab=_vocab(tokens), merges=[("b", "c</w>"), ("a", "b")])


def test_growth_appends_unseen_tokens_in_language_id_order(current, language):
    grown, stats = grow(current, language, "xx")
    assert grown.vocab["bc</w>"] == 9 and grown.vocab["x"] == 10  # next free ids, language order
    assert {t: grown.vocab[t] for t in current.vocab} == current.vocab  # old ids unchanged
    assert (stats.num_overlap, stats.num_unique, stats.old_size, stats.new_size) == (5, 2, 9, 11)
    assert stats.overlap_ratio == pytest.approx(5 / 7)


def test_growth_appends_merges_after_existing_and_deduplicates(current, language):
    grown, stats = grow(current, language)
    assert grown.merges == [("a", "b"), ("b", "c</w>")]
    assert stats.merges_added == 1


def test_existing_merges_keep_priority(current, language):
    grown, _ = grow(current, language)
    # "abc": the old merge "a b" applies first, so the new "b c</w>" can no longer fire
    assert grown.encode(["abc"], 8)[0, :4].tolist() == [0, grown.vocab["ab"], grown.vocab["c</w>"], 1]
    # "bc" alone uses the new merge
    assert grown.encode(["bc"], 8)[0, :3].tolist() == [0, grown.vocab["bc</w>"], 1]
    # had the new merges come first, "abc" would be a + bc</w>
    flipped = ClipBPE(vocab=grown.vocab, merges=[("b", "c</w>"), ("a", "b")])
    assert flipped.encode(["abc"], 8)[0, :4].tolist() == [0, grown.vocab["a"], grown.vocab["bc</w>"], 1]


def test_clip_vocabulary_matches_open_clip_simple_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    clip = ClipBPE.from_clip_bpe_file()
    assert (clip.size, clip.bos_id, clip.eos_id) == (49408, 49406, 49407)
    texts = ["a photo of a cat.", "Two dogs, running on the BEACH!", "über Straße 3 dogs", "un chat rouge"]
    np.testing.assert_array_equal(clip.encode(texts, 20), SimpleTokenizer()(texts, context_length=20).numpy())


def test_trained_bpe_is_clip_style():
    bpe = train_bpe(["a small red circle", "a large blue star left of a red heart"] * 32, 300)
    assert bpe.vocab[BOS_TOKEN] == 0 and bpe.vocab[EOS_TOKEN] == 1
    assert any(t.endswith("</w>") for t in bpe.vocab)
    np.testing.assert_array_equal(bpe.encode(["A  RED Circle"], 10), bpe.encode(["a red circle"], 10))  # lowercase
    assert ClipBPE.from_json(bpe.to_json()).merges == bpe.merges


def test_truncation_keeps_eos_and_token_set_does_not_truncate():
    bpe = train_bpe(["red blue green"] * 10, 280, base=True)  # every byte: "zebra" is no OOV
    long_text = " ".join(["red", "blue", "green", "zebra"] * 10)
    ids = bpe.encode([long_text], 8)[0]
    assert ids[0] == bpe.bos_id and ids[-1] == bpe.eos_id
    full = bpe.token_set([long_text])
    assert bpe.bos_id not in full and bpe.eos_id not in full
    assert set(full) > set(ids[1:-1])  # tokens past the context length still count in T_t


# ---- the language rule: the reference's train_new_from_iterator on CLIP's tokenizer (method.md §1.4) -------------
@pytest.fixture(scope="module")
def zh_captions(tmp_path_factory):
    """SynthXM's Chinese training captions (Han script: far fewer than 256 distinct bytes), a multiple of 64."""
    from cll_ray import dataset as ds
    from cll_ray.synthxm import generate_synthxm

    out = tmp_path_factory.mktemp("zh") / "synthxm"
    generate_synthxm(out, size="tiny", languages=["en", "zh"], seed=0, progress=False)
    captions = ds.read_captions(out, "zh", splits=("train",)).captions
    assert len(captions) % REFERENCE_BATCH == 0
    return captions


def _symbols_seen(lines):
    """The byte symbols the trainer starts from: every symbol of every word, and each word's last one + "</w>"."""
    probe = train_bpe(["x"], 10)
    words = {w for line in lines for w, _ in probe.tokenizer.pre_tokenizer.pre_tokenize_str(
        probe.tokenizer.normalizer.normalize_str(line))}
    return {c for w in words for c in w}, {w[-1] + "</w>" for w in words}


def test_language_bpe_learns_the_reference_number_of_merges(zh_captions):
    chars, ends = _symbols_seen(zh_captions)
    assert len(chars) < 128  # far from the 256 a forced alphabet would count
    for size in (400, 800):
        bpe = train_bpe(zh_captions, size)
        # the reference's rule: the size is 2 specials + the symbols seen (both forms) + one token per distinct
        # merge result, so merges = size - 2 - symbols seen + the merges whose result was already a token
        results = {"".join(m) for m in bpe.merges}
        repeats = len(bpe.merges) - len(results)
        assert bpe.size == size and len(bpe.merges) == size - 2 - len(chars) - len(ends) + repeats
        assert set(bpe.vocab) == {BOS_TOKEN, EOS_TOKEN} | chars | ends | results
        forced = train_bpe(zh_captions, size, base=True)  # the base's rule: all 256 bytes count
        forced_repeats = len(forced.merges) - len({"".join(m) for m in forced.merges})
        assert len(forced.merges) == size - 2 - 256 - len(ends) + forced_repeats


def test_language_bpe_ids_are_specials_symbols_then_merges(zh_captions):
    bpe = train_bpe(zh_captions, 600)
    ids = sorted(bpe.vocab, key=bpe.vocab.get)
    singles = [t for t in ids[2:] if len(t.removesuffix("</w>")) == 1]
    assert ids[:2] == [BOS_TOKEN, EOS_TOKEN] and ids[2 : 2 + len(singles)] == singles
    bare = [t for t in singles if not t.endswith("</w>")]
    assert bare == sorted(bare)  # code-point order, the trainer's own alphabet order
    assert ids[2 + len(singles):] == ["".join(m) for m in bpe.merges]  # then merge order
    # grown into the shipped base (which holds every byte symbol), exactly the merged tokens are appended
    from cll_ray.base_model import BaseModel, shipped_base_dir

    base = BaseModel.load(shipped_base_dir()).tokenizer
    grown, stats = grow(base, bpe, "zh")
    appended = sorted((t for t in grown.vocab if grown.vocab[t] >= base.size), key=grown.vocab.get)
    assert appended == [t for t in ids if t not in base.vocab] and all(len(t.removesuffix("</w>")) > 1 for t in appended)
    assert (stats.language_vocab, stats.num_unique) == (600, len(appended))


def test_language_bpe_drops_the_last_partial_batch_of_64(zh_captions):
    tail = ["qqqq zzzz"] * 40  # a word seen only in the final partial batch (1..63 lines are dropped)
    bpe = train_bpe(zh_captions + tail, 2000)
    assert not any("q" in t or "z" in t for t in bpe.vocab)
    whole = train_bpe(zh_captions + tail + ["x"] * 24, 2000)  # now the tail completes a batch: it is learned
    assert "qqqq</w>" in whole.vocab and "zzzz</w>" in whole.vocab
    assert "qqqq</w>" in train_bpe(zh_captions + tail, 2000, base=True).vocab  # the base's rule uses every line
    assert reference_lines(range(130)) == list(range(128))
    small = train_bpe(tail, 2000, batch_lines=8)  # a smaller batch for a data set of a few dozen captions
    assert "qqqq</w>" in small.vocab and training_key(tail, 2000, 8) != training_key(tail, 2000)


def test_a_task_with_fewer_captions_than_one_batch_warns(shipped_base, tiny_features, tiny_synthxm):
    from cll_ray.config import load_config
    from cll_ray.continual import ContinualLearner

    cfg = load_config(method="cll_clip", overrides=["model.language_vocab_size=600"])
    learner = ContinualLearner(shipped_base, tiny_features, tiny_synthxm, cfg)
    with pytest.warns(UserWarning, match="40 training captions: fewer than one batch of model.bpe_batch_lines=64"):
        _, growth = learner.grown_tokenizer("fr", ["un petit cercle rouge"] * 40)
    assert growth.merges_added == 0


def test_base_rule_keeps_every_byte_in_both_forms():
    bpe = train_bpe(["a small red circle"] * 5, 600, base=True)
    assert all(t in bpe.vocab for t in ("Ā", "Ā</w>", "z</w>"))
    language = train_bpe(["a small red circle"] * 64, 600)
    assert "Ā" not in language.vocab and "z</w>" not in language.vocab  # only what the lines hold


def test_cached_training_is_reused_byte_for_byte(zh_captions, tmp_path):
    cache = tmp_path / "tokenizers"
    first = train_bpe_cached(zh_captions, 500, cache)
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and files[0].stem == training_key(zh_captions, 500)
    assert files[0].read_text(encoding="utf-8") == first.to_json()
    stored = files[0].read_text(encoding="utf-8")
    files[0].write_text(stored.replace('"merges":[', '"merges":[["x","y"],', 1), encoding="utf-8")
    assert train_bpe_cached(zh_captions, 500, cache).merges[0] == ("x", "y")  # read back, not retrained
    files[0].write_text(stored, encoding="utf-8")
    assert train_bpe_cached(zh_captions, 500, cache).to_json() == first.to_json()
    train_bpe_cached(zh_captions, 501, cache)
    train_bpe_cached(zh_captions[:-64], 500, cache)
    assert len(list(cache.glob("*.json"))) == 3  # size and captions are in the key
    assert not list(cache.glob(".*"))  # no temporary file left behind
    files[0].write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=files[0].name):
        train_bpe_cached(zh_captions, 500, cache)
