"""Oracle tests for cll_ray.metrics: hand-worked accuracy matrices and a naive retrieval reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cll_ray.metrics import (
    CL_KEYS,
    RETRIEVAL_KEYS,
    average_accuracy,
    backward_transfer,
    cl_metrics,
    cl_metrics_per_task,
    forgetting,
    forgetting_first,
    forward_transfer,
    plasticity,
    retrieval_metrics,
    retrieval_ranks,
)

NAN = math.nan

# Rows = model after task t, columns = language j (0-indexed); entries j > t are never read.
A3 = np.array(
    [
        [80.0, NAN, NAN],
        [70.0, 60.0, NAN],
        [65.0, 50.0, 55.0],
    ]
)
B3 = np.array([10.0, 20.0, 30.0])  # zero-shot scores per language

# Language 0 recovers after task 1 (40 -> 45), so its max is not the diagonal, and F != -BWT.
A4 = np.array(
    [
        [50.0, NAN, NAN, NAN],
        [40.0, 30.0, NAN, NAN],
        [45.0, 35.0, 20.0, NAN],
        [30.0, 25.0, 15.0, 10.0],
    ]
)
B4 = np.array([0.0, 5.0, 5.0, 5.0])


def test_cl_metrics_3x3_by_hand():
    # t = 2 (task 3): AA = (65 + 50 + 55) / 3 = 56.67
    assert average_accuracy(A3) == pytest.approx(170 / 3)
    # F = mean([max(80, 70) - 65, max(60) - 50]) = mean(15, 10) = 12.5
    assert forgetting(A3) == pytest.approx(12.5)
    # Fen = max(80, 70) - 65 = 15
    assert forgetting_first(A3) == pytest.approx(15.0)
    # BWT = mean(65 - 80, 50 - 60) = -12.5
    assert backward_transfer(A3) == pytest.approx(-12.5)
    # FWT = mean(a11 - b1, a22 - b2) = mean(60 - 20, 55 - 30) = 32.5 (task 0 has no transfer term)
    assert forward_transfer(A3, B3) == pytest.approx(32.5)
    # plasticity = mean(80, 60, 55) = 65
    assert plasticity(A3) == pytest.approx(65.0)
    # t = 1: AA = (70 + 60) / 2, F = Fen = 80 - 70, BWT = 70 - 80, FWT = 60 - 20, plasticity = (80 + 60) / 2
    assert cl_metrics(A3, B3, t=1) == pytest.approx(
        {"AA": 65.0, "F": 10.0, "Fen": 10.0, "BWT": -10.0, "FWT": 40.0, "plasticity": 70.0}
    )


def test_cl_metrics_4x4_by_hand():
    # AA = (30 + 25 + 15 + 10) / 4 = 20
    # F = mean([max(50, 40, 45) - 30, max(30, 35) - 25, max(20) - 15]) = mean(20, 10, 5) = 35 / 3
    # Fen = max(50, 40, 45) - 30 = 20
    # BWT = mean(30 - 50, 25 - 30, 15 - 20) = -30 / 3 = -10
    # FWT = mean(30 - 5, 20 - 5, 10 - 5) = 15
    # plasticity = mean(50, 30, 20, 10) = 27.5
    expected = {"AA": 20.0, "F": 35 / 3, "Fen": 20.0, "BWT": -10.0, "FWT": 15.0, "plasticity": 27.5}
    assert cl_metrics(A4, B4) == pytest.approx(expected)
    assert list(cl_metrics(A4, B4)) == list(CL_KEYS)
    # t = 2: AA = (45 + 35 + 20) / 3; F = mean(50 - 45, 30 - 35) = 0; Fen = 50 - 45; BWT = mean(45-50, 35-30) = 0
    assert cl_metrics(A4, B4, t=2) == pytest.approx(
        {"AA": 100 / 3, "F": 0.0, "Fen": 5.0, "BWT": 0.0, "FWT": 20.0, "plasticity": 100 / 3}
    )


def test_upper_triangle_is_never_read():
    garbage = A4.copy()
    garbage[np.triu_indices(4, k=1)] = 999.0
    zeros = np.nan_to_num(A4)
    for t in range(4):
        assert cl_metrics(garbage, B4, t) == pytest.approx(cl_metrics(zeros, B4, t), nan_ok=True)


def test_forgetting_matches_zero_padded_reference_formula():
    # method.md: max over all k = 1..t-1 with unseen entries (k < j) as 0; the same for non-negative scores.
    zeros = np.nan_to_num(A4)
    for t in range(1, 4):
        reference = np.mean([zeros[:t, j].max() - zeros[t, j] for j in range(t)])
        assert forgetting(A4, t) == pytest.approx(reference)


def test_first_task_and_per_task_series():
    first = cl_metrics(A3, B3, t=0)
    assert first["AA"] == 80.0 and first["plasticity"] == 80.0
    assert all(math.isnan(first[k]) for k in ("F", "Fen", "BWT", "FWT"))
    series = cl_metrics_per_task(A4)
    assert len(series) == 4
    assert "FWT" not in series[0]  # no zero-shot scores given
    assert [round(s["AA"], 4) for s in series] == [50.0, 35.0, round(100 / 3, 4), 20.0]
    assert series[-1] == pytest.approx(cl_metrics(A4))


def test_cl_metrics_accept_partial_matrix_and_torch():
    torch = pytest.importorskip("torch")
    assert cl_metrics(torch.tensor(A4[:2]), B4) == pytest.approx(cl_metrics(A4, B4, t=1))
    with pytest.raises(ValueError, match="not a row"):
        average_accuracy(A3, t=3)
    with pytest.raises(ValueError, match="zero_shot"):
        forward_transfer(A3, B3[:2])


# ------------------------------------------------------------------------------------------------ retrieval


def naive_retrieval(text, image, idx):
    """Loops over every pair; no chunking, no vectorized ranking."""
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    n_c, n_i = len(text), len(image)
    s = np.array([[float(np.dot(text[i], image[j])) for j in range(n_i)] for i in range(n_c)])
    t2i = [sum(s[i, j] > s[i, idx[i]] for j in range(n_i)) for i in range(n_c)]
    i2t = []
    for j in range(n_i):
        own = [i for i in range(n_c) if idx[i] == j]
        i2t.append(min(sum(s[k, j] > s[i, j] for k in range(n_c)) for i in own))
    out = {}
    for name, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
        out[f"{name}_r_mean"] = (out[f"{name}_r1"] + out[f"{name}_r5"] + out[f"{name}_r10"]) / 3
    out["r_mean"] = (out["t2i_r_mean"] + out["i2t_r_mean"]) / 2
    return np.array(t2i), np.array(i2t), out


def random_caption_index(rng, n_images):
    """2 or 3 captions per image, shuffled so that an image's captions are not contiguous."""
    idx = np.repeat(np.arange(n_images), rng.integers(2, 4, size=n_images))
    return rng.permutation(idx)


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 1024])
def test_retrieval_matches_naive_reference(chunk_size):
    rng = np.random.default_rng(0)
    n_images, dim = 37, 4  # small D so that ranks spread over 0..>10
    idx = random_caption_index(rng, n_images)
    image = rng.normal(size=(n_images, dim))
    text = image[idx] + 0.8 * rng.normal(size=(len(idx), dim))  # noisy copies of their image
    t2i, i2t, expected = naive_retrieval(text, image, idx)
    got_t2i, got_i2t = retrieval_ranks(text, image, idx, chunk_size=chunk_size)
    np.testing.assert_array_equal(got_t2i, t2i)
    np.testing.assert_array_equal(got_i2t, i2t)
    assert retrieval_metrics(text, image, idx, chunk_size=chunk_size) == pytest.approx(expected)
    assert 0 < expected["t2i_r1"] < 100 and 0 < expected["i2t_r1"] < 100  # the data is not trivial


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_retrieval_ties_match_naive_reference(dtype):
    # Rows with four entries of +-0.5 have norm exactly 1 and dot products in multiples of 0.25, so every tie is
    # exact whatever the summation order; duplicated image rows add ties with the ground truth itself.
    rng = np.random.default_rng(1)

    def exact_unit_rows(n, dim=6):
        rows = np.zeros((n, dim))
        for r in rows:
            r[rng.choice(dim, size=4, replace=False)] = rng.choice([-0.5, 0.5], size=4)
        return rows

    image = exact_unit_rows(23)
    image[5] = image[3]
    image[17] = image[3]
    idx = random_caption_index(rng, len(image))
    text = exact_unit_rows(len(idx))
    t2i, i2t, expected = naive_retrieval(text, image, idx)
    got_t2i, got_i2t = retrieval_ranks(text.astype(dtype), image.astype(dtype), idx, chunk_size=10)
    np.testing.assert_array_equal(got_t2i, t2i)
    np.testing.assert_array_equal(got_i2t, i2t)
    assert retrieval_metrics(text.astype(dtype), image.astype(dtype), idx, chunk_size=10) == pytest.approx(
        expected
    )


def test_tied_candidates_do_not_lower_the_rank():
    image = np.array([[1.0, 0.0], [0.0, 1.0]])
    text = np.array([[1.0, 1.0], [1.0, 1.0]])  # both captions score 1/sqrt(2) with both images
    t2i, i2t = retrieval_ranks(text, image, np.array([1, 0]))
    assert t2i.tolist() == [0, 0]
    assert i2t.tolist() == [0, 0]


def angle(degrees, scale=1.0):
    r = math.radians(degrees)
    return [scale * math.cos(r), scale * math.sin(r)]


def test_tiny_case_by_hand():
    # Images on the axes: a caption at angle a scores cos(a) with image 0 and sin(a) with image 1.
    image = np.array([[1.0, 0.0], [0.0, 2.0]])  # norms differ on purpose: both sides are L2-normalized
    text = np.array([angle(10), angle(60, 3.0), angle(30, 5.0), angle(50, 0.5)])
    idx = np.array([0, 0, 1, 1])
    # t2i: c0 (10 deg) -> img0 wins, rank 0; c1 (60 deg, gt img0) -> img1 wins, rank 1;
    #      c2 (30 deg, gt img1) -> img0 wins, rank 1; c3 (50 deg, gt img1) -> img1 wins, rank 0.
    # i2t: img0 scores cos = [.985, .5, .866, .643], best own = c0 .985 -> rank 0;
    #      img1 scores sin = [.174, .866, .5, .766], best own = c3 .766 < c1 .866 -> rank 1.
    t2i, i2t = retrieval_ranks(text, image, idx)
    assert t2i.tolist() == [0, 1, 1, 0]
    assert i2t.tolist() == [0, 1]
    m = retrieval_metrics(text, image, idx)
    assert list(m) == list(RETRIEVAL_KEYS)
    assert m == pytest.approx(
        {
            "t2i_r1": 50.0,
            "t2i_r5": 100.0,
            "t2i_r10": 100.0,
            "i2t_r1": 50.0,
            "i2t_r5": 100.0,
            "i2t_r10": 100.0,
            "t2i_r_mean": 250 / 3,
            "i2t_r_mean": 250 / 3,
            "r_mean": 250 / 3,
        }
    )


def test_direction_naming():
    # Each caption prefers its own image (t2i perfect), but image 1's own caption c1 scores 0.6 against it
    # while image 0's caption c0 scores 0.8: image 1 retrieves the wrong text first (i2t R@1 = 50).
    image = np.array([[1.0, 0.0], [0.8, 0.6]])
    text = np.array([[1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(text, image, np.array([0, 1]))
    assert m["t2i_r1"] == 100.0
    assert m["i2t_r1"] == 50.0
    assert m["t2i_r_mean"] == 100.0
    assert m["i2t_r_mean"] == pytest.approx((50 + 100 + 100) / 3)
    assert m["r_mean"] == pytest.approx((100 + 250 / 3) / 2)


def test_retrieval_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    image = rng.normal(size=(9, 5)).astype(np.float32)
    idx = random_caption_index(rng, 9)
    text = (image[idx] + rng.normal(size=(len(idx), 5))).astype(np.float32)
    expected = retrieval_metrics(text, image, idx)
    got = retrieval_metrics(torch.from_numpy(text), torch.from_numpy(image), torch.from_numpy(idx))
    assert got == pytest.approx(expected)


def test_retrieval_rejects_bad_inputs():
    image = np.eye(3)
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(np.eye(3)[:2], image, np.array([0, 1]))  # image 2 has no caption
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        retrieval_metrics(np.eye(3), image, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="dim"):
        retrieval_metrics(np.ones((3, 2)), image, np.array([0, 1, 2]))
