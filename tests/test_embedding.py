"""Embedding growth, TEIR init statistics, token frequencies and r_i (method.md §1.5, §2.1, §2.2)."""

import numpy as np
import pytest
import torch

from cll_ray.config import MethodConfig
from cll_ray.embedding import ExpandableTokenEmbedding, teir_row_scale
from cll_ray.methods import build_method


def test_grow_copies_old_rows_exactly_and_draws_new_rows():
    old = torch.randn(5, 16)
    emb = ExpandableTokenEmbedding(old)
    emb.grow(3005, mean=0.3, std=0.02, generator=torch.Generator().manual_seed(0))
    assert torch.equal(emb.weight[:5], old)
    new = emb.weight[5:].detach()
    assert new.mean().item() == pytest.approx(0.3, abs=1e-3)
    assert new.std().item() == pytest.approx(0.02, rel=0.02)
    assert emb.weight.requires_grad


def test_grow_refuses_to_shrink():
    emb = ExpandableTokenEmbedding(torch.zeros(4, 2))
    with pytest.raises(ValueError):
        emb.grow(3, 0.0, 0.02)


def test_teir_init_uses_scalar_stats_of_whole_current_matrix():
    w = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 10.0]])
    emb = ExpandableTokenEmbedding(w)
    flat = w.flatten().numpy()
    expected = (flat.mean(), flat.std(ddof=1))  # unbiased, over all elements (not per row/dim)
    teir = build_method(MethodConfig(name="cll_clip_teir", init="teir"))
    assert teir.new_row_distribution(emb) == pytest.approx(expected)
    shifted = build_method(MethodConfig(name="cll_clip_teir", init="teir", teir_sigma_scale=2.0, teir_mu_shift=0.5))
    assert shifted.new_row_distribution(emb) == pytest.approx((expected[0] + 0.5, 2 * expected[1]))
    baseline = build_method(MethodConfig(name="cll_clip"))
    assert baseline.new_row_distribution(emb) == (0.0, 0.02)


def test_frequencies_count_tasks_not_occurrences():
    emb = ExpandableTokenEmbedding(torch.zeros(4, 2))  # base vocabulary of 4
    assert emb.token_frequencies.tolist() == [1, 1, 1, 1]
    emb.grow(6, 0, 0.02)  # task 1 adds 2 rows; base rows counted once
    assert emb.token_frequencies.tolist() == [2, 2, 2, 2, 1, 1]
    emb.commit_task_tokens(torch.tensor([2, 4, 5]))  # task 1 used tokens 2, 4, 5 (each once, however often)
    emb.grow(7, 0, 0.02)  # task 2 adds 1 row; base not counted again
    assert emb.token_frequencies.tolist() == [2, 2, 3, 2, 2, 2, 1]
    emb.commit_task_tokens(torch.tensor([2, 6]), counts=torch.tensor([2.0, 1.0]))  # e.g. replay: 2 languages
    assert emb.token_frequencies.tolist() == [2, 2, 5, 2, 2, 2, 2]


def test_row_scale_is_current_reciprocal_with_specials_zero():
    freqs = torch.tensor([2.0, 2.0, 3.0, 2.0, 1.0, 4.0])
    r = teir_row_scale(6, torch.tensor([0, 2, 4, 5]), freqs, special_ids=[0, 1])
    assert r.tolist() == pytest.approx([0.0, 0.0, 1 / 3, 0.0, 1.0, 0.25])
    r2 = teir_row_scale(6, torch.tensor([2, 5]), freqs, special_ids=[0, 1], power=2.0)
    np.testing.assert_allclose(r2.numpy(), [0, 0, 1 / 9, 0, 0, 1 / 16], rtol=1e-6)


def test_state_dict_round_trip_resizes():
    a = ExpandableTokenEmbedding(torch.randn(4, 3))
    a.grow(7, 0.0, 0.02)
    b = ExpandableTokenEmbedding(torch.randn(4, 3))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.weight, b.weight) and torch.equal(a.token_frequencies, b.token_frequencies)
    assert bool(b.base_counted)
