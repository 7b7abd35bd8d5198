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
    emb.grow(7, 0, 0.02)  # task 2 adds 1 row; the vocabulary is no longer base-sized: base not counted again
    assert emb.token_frequencies.tolist() == [2, 2, 3, 2, 2, 2, 1]
    emb.commit_task_tokens(torch.tensor([2, 6]), counts=torch.tensor([2.0, 1.0]))  # e.g. replay: 2 languages
    assert emb.token_frequencies.tolist() == [2, 2, 5, 2, 2, 2, 2]


def test_base_rows_are_counted_again_while_tasks_add_no_token():
    # the reference adds 1 whenever a task starts from a base-sized vocabulary (old_vocab_size == clip_vocab_size)
    emb = ExpandableTokenEmbedding(torch.zeros(4, 2))
    emb.grow(4, 0, 0.02)  # task 1 adds no token
    assert emb.token_frequencies.tolist() == [2, 2, 2, 2]
    emb.commit_task_tokens(torch.tensor([1, 3]))
    emb.grow(4, 0, 0.02)  # task 2 adds none either: counted again
    assert emb.token_frequencies.tolist() == [3, 4, 3, 4]
    emb.grow(6, 0, 0.02)  # task 3 adds 2 rows, still from a base-sized vocabulary: counted a third time
    assert emb.token_frequencies.tolist() == [4, 5, 4, 5, 1, 1]
    emb.grow(6, 0, 0.02)  # task 4 adds none, but the vocabulary has grown: not counted
    assert emb.token_frequencies.tolist() == [4, 5, 4, 5, 1, 1]
    restored = ExpandableTokenEmbedding(torch.zeros(4, 2))
    restored.load_state_dict(emb.state_dict())
    assert int(restored.base_size) == 4 and restored.token_frequencies.tolist() == [4, 5, 4, 5, 1, 1]


def test_checkpoint_without_base_size_loads_with_the_models_base_size():
    # checkpoints written before base_size was stored carry a base_counted flag instead
    old = ExpandableTokenEmbedding(torch.randn(4, 3))
    old.grow(6, 0.0, 0.02)
    state = {k: v for k, v in old.state_dict().items() if k != "base_size"}
    state["base_counted"] = torch.tensor(True)
    fresh = ExpandableTokenEmbedding(torch.randn(4, 3))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weight, old.weight) and int(fresh.base_size) == 4
    nested = torch.nn.ModuleDict({"token_embedding": ExpandableTokenEmbedding(torch.randn(4, 3))})
    nested["token_embedding"].grow(6, 0.0, 0.02)  # a parent's load does not resize (the best-epoch restore)
    nested.load_state_dict({f"token_embedding.{k}": v for k, v in state.items()}, strict=False)
    assert int(nested["token_embedding"].base_size) == 4
    nested["token_embedding"].grow(7, 0.0, 0.02)  # grown already: the base is not counted again
    assert nested["token_embedding"].token_frequencies.tolist() == old.token_frequencies.tolist() + [1]


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
    assert int(b.base_size) == 4
