"""Training rows: features gathered per batch from the memory-mapped store, global batches sliced per rank,
and the optional length buckets."""

import numpy as np
import pytest
import torch

from cll_ray.engine import FeatureRows, TrainSet
from cll_ray.features import FeatureStore


def toy_set(n=96, dim=4, seed=0) -> TrainSet:
    g = np.random.default_rng(seed)
    lengths = g.integers(3, 30, size=n)
    ids = np.zeros((n, 40), dtype=np.int32)
    for i, k in enumerate(lengths):
        ids[i, :k] = g.integers(1, 500, size=k)
    store = FeatureStore(image_ids=[f"i{k}" for k in range(n // 2)],
                         image_features=g.standard_normal((n // 2, dim)).astype(np.float32),
                         texts=[f"t{k}" for k in range(n)],
                         text_features=g.standard_normal((n, dim)).astype(np.float32))
    return TrainSet.from_rows(ids, g.permutation(n), np.arange(n) % (n // 2), store)


def epoch(train_set: TrainSet, batch_size: int, seed=7, **kw) -> list[dict]:
    return list(train_set.batches(batch_size, torch.Generator().manual_seed(seed), **kw))


def test_the_store_is_memory_mapped_and_batches_gather_its_rows(tmp_path):
    train_set = toy_set()
    store = FeatureStore(image_ids=["a", "b"], image_features=np.eye(2, dtype=np.float32), texts=["x"],
                         text_features=np.ones((1, 2), np.float32))
    store.save(tmp_path / "store")
    loaded = FeatureStore.load(tmp_path / "store")
    assert isinstance(loaded.image_features, np.memmap) and not loaded.image_features.flags.writeable
    rows = FeatureRows(loaded.image_features, np.array([1, 0, 1]))
    assert rows[torch.tensor([0, 2])].tolist() == [[0.0, 1.0], [0.0, 1.0]]
    for batch in epoch(train_set, 16):  # each batch's features are the store rows its ids came with
        index = [int(np.nonzero((train_set.ids == row).all(dim=1).numpy())[0][0]) for row in batch["ids"]]
        assert torch.equal(batch["teacher"], train_set.teacher[torch.tensor(index)])
        assert torch.equal(batch["image"], torch.from_numpy(train_set.image.table[train_set.image.rows[index]]))


def test_plain_batches_are_the_seeded_permutation_cut_in_order():
    """length_buckets=0 is the reference's draw: one permutation, cut into full batches, nothing reordered."""
    train_set = toy_set(n=100)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(7))
    expected = [train_set.ids[order[s : s + 16]] for s in range(0, 96, 16)]
    assert all(torch.equal(a["ids"], e) for a, e in zip(epoch(train_set, 16), expected, strict=True))


@pytest.mark.parametrize("buckets", [0, 4])
def test_every_rank_takes_its_slice_of_the_one_worker_batches(buckets):
    train_set = toy_set()
    whole = epoch(train_set, 32, length_buckets=buckets)
    halves = [epoch(train_set.shard(rank, 2), 16, length_buckets=buckets) for rank in (0, 1)]
    assert train_set.shard(1, 2).num_batches(16) == train_set.num_batches(32) == len(whole) == 3
    for k, batch in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][k]["ids"], halves[1][k]["ids"]]), batch["ids"])


def test_length_buckets_keep_every_row_once_and_cut_the_padding():
    train_set = toy_set(n=512)
    plain, bucketed = epoch(train_set, 16), epoch(train_set, 16, length_buckets=8)
    keys = lambda batches: sorted(tuple(r.tolist()) for b in batches for r in b["ids"])  # noqa: E731
    assert keys(plain) == keys(bucketed) and len(plain) == len(bucketed) == 32
    spread = [int(n.max() - n.min()) for n in ((b["ids"] != 0).sum(dim=1) for b in bucketed)]
    assert max(spread) < 26  # a plain batch spans nearly the whole 3..29 range
    generator = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert train_set.padding_fraction(16, generator(), 8) < train_set.padding_fraction(16, generator()) / 2
