"""Tokenizer construction and growth (method.md §1.4, trap 8)."""

import numpy as np
import pytest

from cll_ray.tokenization import BOS_TOKEN, EOS_TOKEN, ClipBPE, grow, train_bpe


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
    bpe = train_bpe(["a small red circle", "a large blue star left of a red heart"] * 20, 300)
    assert bpe.vocab[BOS_TOKEN] == 0 and bpe.vocab[EOS_TOKEN] == 1
    assert any(t.endswith("</w>") for t in bpe.vocab)
    np.testing.assert_array_equal(bpe.encode(["A  RED Circle"], 10), bpe.encode(["a red circle"], 10))  # lowercase
    assert ClipBPE.from_json(bpe.to_json()).merges == bpe.merges


def test_truncation_keeps_eos_and_token_set_does_not_truncate():
    bpe = train_bpe(["red blue green"] * 10, 280)
    long_text = " ".join(["red", "blue", "green", "zebra"] * 10)
    ids = bpe.encode([long_text], 8)[0]
    assert ids[0] == bpe.bos_id and ids[-1] == bpe.eos_id
    full = bpe.token_set([long_text])
    assert bpe.bos_id not in full and bpe.eos_id not in full
    assert set(full) > set(ids[1:-1])  # tokens past the context length still count in T_t
