"""Retrieval and continual-learning metrics as pure functions (method.md §6.1, §6.2).

Directions are named by what queries what. ``t2i`` = text→image: each caption retrieves an image (the
reference's ``img_r@K``). ``i2t`` = image→text: each image retrieves a caption (the reference's ``txt_r@K``).

Continual-learning metrics are functions of an accuracy matrix ``A`` with ``A[t, j]`` = score on language j
after task t (both 0-indexed, task order; task 0 is the first language, usually English). Only entries with
``j <= t`` are read: the matrix is never padded with zeros for unseen languages, so ``A[t, j]`` for ``j > t``
may hold anything (NaN by convention). Formulas in the docstrings are method.md's, 1-indexed: the code's row
``t`` is task ``t + 1`` there. Inputs may be numpy arrays, nested lists or torch tensors.
"""

from __future__ import annotations

import math

import numpy as np

RECALL_KS = (1, 5, 10)
RETRIEVAL_KEYS = (
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r_mean",
    "i2t_r_mean",
    "r_mean",
)
CL_KEYS = ("AA", "F", "Fen", "BWT", "FWT", "plasticity")


def _as_numpy(x) -> np.ndarray:
    """numpy view of an array-like; torch tensors are detached and moved to the CPU (torch is not imported)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:  # float16/bfloat16 have no numpy equivalent
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------ retrieval


def _normalized(x, name: str) -> np.ndarray:
    """Row-wise L2-normalized float32 copy (float64 stays float64)."""
    a = _as_numpy(x)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, D), got shape {a.shape}")
    a = a.astype(np.float64 if a.dtype == np.float64 else np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def retrieval_ranks(
    text_emb, image_emb, caption_image_index, *, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the ground truth in both directions.

    Args:
        text_emb: (N_captions, D) caption embeddings.
        image_emb: (N_images, D) image embeddings; every image must have at least one caption.
        caption_image_index: (N_captions,) int, the image row of each caption.
        chunk_size: query rows scored at a time, so memory is O(chunk_size · N) rather than O(N_captions · N_images).

    Returns:
        ``(t2i, i2t)``: t2i[i] = rank of caption i's image among all images; i2t[j] = best rank of one of image
        j's captions among all captions. Both int64.

    Scores are dot products of the L2-normalized embeddings over the whole set. Ties: a rank is the number of
    candidates with a *strictly* higher score than the ground truth, so tied candidates do not push it down
    (the reference's argsort breaks ties by index order instead). For i2t this equals the best rank over the
    image's captions: rank_j = #{captions i : s(i, j) > max over ground-truth captions g of s(g, j)}.
    """
    text = _normalized(text_emb, "text_emb")  # (Nc, D)
    image = _normalized(image_emb, "image_emb")  # (Ni, D)
    dtype = np.promote_types(text.dtype, image.dtype)
    text, image = text.astype(dtype, copy=False), image.astype(dtype, copy=False)
    idx = _as_numpy(caption_image_index)
    n_c, n_i = len(text), len(image)
    if text.shape[1] != image.shape[1]:
        raise ValueError(f"text_emb has dim {text.shape[1]} but image_emb has dim {image.shape[1]}")
    if idx.shape != (n_c,) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"caption_image_index must be ({n_c},) integers, got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= n_i:
        raise ValueError(f"caption_image_index must lie in [0, {n_i}), got [{idx.min()}, {idx.max()}]")
    uncaptioned = np.flatnonzero(np.bincount(idx, minlength=n_i) == 0)
    if len(uncaptioned):
        raise ValueError(
            f"{len(uncaptioned)} images have no caption (first: row {uncaptioned[0]}); i2t is undefined"
        )

    t2i = np.empty(n_c, dtype=np.int64)
    for start in range(0, n_c, chunk_size):
        scores = text[start : start + chunk_size] @ image.T  # (C, Ni)
        own = scores[np.arange(len(scores)), idx[start : start + chunk_size]]  # (C,)
        t2i[start : start + chunk_size] = (scores > own[:, None]).sum(axis=1)

    i2t = np.empty(n_i, dtype=np.int64)
    for start in range(0, n_i, chunk_size):
        scores = image[start : start + chunk_size] @ text.T  # (C, Nc)
        # Best ground-truth score per image, read from this same matrix so that exact ties stay exact.
        mine = np.flatnonzero((idx >= start) & (idx < start + len(scores)))  # captions of these images
        best = np.full(len(scores), -np.inf, dtype=scores.dtype)
        np.maximum.at(best, idx[mine] - start, scores[idx[mine] - start, mine])
        i2t[start : start + chunk_size] = (scores > best[:, None]).sum(axis=1)
    return t2i, i2t


def recall_at_k(ranks, k: int) -> float:
    """R@K = 100 · #{queries with rank < K} / N_queries."""
    return 100.0 * float(np.mean(_as_numpy(ranks) < k))


def retrieval_metrics(
    text_emb, image_emb, caption_image_index, *, chunk_size: int = 1024
) -> dict[str, float]:
    """Recall@{1,5,10} in both directions over the whole set, several captions per image (method.md §6.1).

    Args:
        text_emb: (N_captions, D); image_emb: (N_images, D); caption_image_index: (N_captions,) int image rows.

    Returns ``RETRIEVAL_KEYS``:
        t2i_rK = 100 · #{captions whose image ranks < K} / N_captions   (text→image; reference ``img_rK``)
        i2t_rK = 100 · #{images with some caption ranked < K} / N_images (image→text; reference ``txt_rK``)
        t2i_r_mean = mean(t2i_r1, t2i_r5, t2i_r10); i2t_r_mean likewise; r_mean = (t2i_r_mean + i2t_r_mean) / 2.
    Ranks and ties are as in ``retrieval_ranks`` (a tie does not count against the ground truth).
    """
    t2i, i2t = retrieval_ranks(text_emb, image_emb, caption_image_index, chunk_size=chunk_size)
    out = {f"t2i_r{k}": recall_at_k(t2i, k) for k in RECALL_KS}
    out |= {f"i2t_r{k}": recall_at_k(i2t, k) for k in RECALL_KS}
    for d in ("t2i", "i2t"):
        out[f"{d}_r_mean"] = float(np.mean([out[f"{d}_r{k}"] for k in RECALL_KS]))
    out["r_mean"] = (out["t2i_r_mean"] + out["i2t_r_mean"]) / 2
    return {key: out[key] for key in RETRIEVAL_KEYS}


# --------------------------------------------------------------------------------------- continual learning


def _matrix(A) -> np.ndarray:
    a = np.asarray(_as_numpy(A), dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < a.shape[0]:
        raise ValueError(
            f"the accuracy matrix must be (T, T) (or (T, >=T) while tasks remain), got {a.shape}"
        )
    return a


def _row(a: np.ndarray, t: int | None) -> int:
    t = a.shape[0] - 1 if t is None else int(t)
    if not 0 <= t < a.shape[0]:
        raise ValueError(f"t={t} is not a row of the {a.shape} accuracy matrix (0-based)")
    return t


def average_accuracy(A, t: int | None = None) -> float:
    """AA_t = (1/t) Σ_{j=1..t} a_{t,j}: the mean over the languages seen so far, after task t.

    ``t`` is the 0-based row (default: the last). Entries j > t are not used (never padded with zeros).
    """
    a = _matrix(A)
    t = _row(a, t)
    return float(np.mean(a[t, : t + 1]))


def forgetting(A, t: int | None = None) -> float:
    """F_t = 1/(t−1) Σ_{j=1..t−1} [max_{k=1..t−1} a_{k,j} − a_{t,j}], for 1-indexed t ≥ 2 (NaN for the first task).

    The max runs over the earlier models that had learned j (j ≤ k < t); the reference's zero entries for
    k < j cannot raise it for non-negative scores, so this is the same number without padding. ``t`` is the
    0-based row (default: the last); entries j > t are not used.
    """
    a = _matrix(A)
    t = _row(a, t)
    if t == 0:
        return math.nan
    return float(np.mean([a[j:t, j].max() - a[t, j] for j in range(t)]))


def forgetting_first(A, t: int | None = None) -> float:
    """Fen_t = max_{k=1..t−1} a_{k,1} − a_{t,1}: forgetting of the first language (English), NaN for task 1.

    ``t`` is the 0-based row (default: the last); entries j > t are not used (never padded with zeros).
    """
    a = _matrix(A)
    t = _row(a, t)
    return math.nan if t == 0 else float(a[:t, 0].max() - a[t, 0])


def backward_transfer(A, t: int | None = None) -> float:
    """BWT_t = 1/(t−1) Σ_{j=1..t−1} (a_{t,j} − a_{j,j}), for 1-indexed t ≥ 2 (NaN for the first task).

    Negative means forgetting relative to the just-learned score. ``t`` is the 0-based row (default: the
    last); entries j > t are not used (never padded with zeros).
    """
    a = _matrix(A)
    t = _row(a, t)
    if t == 0:
        return math.nan
    return float(np.mean([a[t, j] - a[j, j] for j in range(t)]))


def forward_transfer(A, zero_shot, t: int | None = None) -> float:
    """FWT_t = 1/(t−1) Σ_{j=2..t} (a_{j,j} − b_j), for 1-indexed t ≥ 2 (NaN for the first task).

    ``zero_shot``: b, the base model's zero-shot score per language in task order (length ≥ t). ``t`` is the
    0-based row (default: the last); entries j > t are not used (never padded with zeros).
    """
    a = _matrix(A)
    t = _row(a, t)
    b = np.asarray(_as_numpy(zero_shot), dtype=np.float64).reshape(-1)
    if len(b) <= t:
        raise ValueError(f"zero_shot has {len(b)} scores; row t={t} needs at least {t + 1}")
    if t == 0:
        return math.nan
    return float(np.mean([a[j, j] - b[j] for j in range(1, t + 1)]))


def plasticity(A, t: int | None = None) -> float:
    """(1/t) Σ_{j=1..t} a_{j,j}: the mean just-learned score (the reference's ``*_CL_retrieval.csv`` Average).

    ``t`` is the 0-based row (default: the last); entries j > t are not used (never padded with zeros).
    """
    a = _matrix(A)
    t = _row(a, t)
    return float(np.mean(np.diagonal(a)[: t + 1]))


def cl_metrics(A, zero_shot=None, t: int | None = None) -> dict[str, float]:
    """{"AA", "F", "Fen", "BWT", "FWT", "plasticity"} after row t (default: the last), as defined above.

    "FWT" is present only when ``zero_shot`` is given; F, Fen, BWT and FWT are NaN for the first task.
    Entries j > t are not used (the matrix is never padded with zeros).
    """
    out = {
        "AA": average_accuracy(A, t),
        "F": forgetting(A, t),
        "Fen": forgetting_first(A, t),
        "BWT": backward_transfer(A, t),
    }
    if zero_shot is not None:
        out["FWT"] = forward_transfer(A, zero_shot, t)
    out["plasticity"] = plasticity(A, t)
    return out


def cl_metrics_per_task(A, zero_shot=None) -> list[dict[str, float]]:
    """``cl_metrics`` for every row t = 0..T−1: the per-task series (the reference's ``*_cl_AA.csv`` etc.)."""
    return [cl_metrics(A, zero_shot, t) for t in range(_matrix(A).shape[0])]


def joint_metrics(scores, zero_shot=None) -> dict[str, float]:
    """CL-table values for a jointly trained model, whose accuracy "matrix" is one final row over all languages.

    AA = plasticity = the mean over languages; FWT = the mean gain over the zero-shot scores (when given);
    F, Fen and BWT are NaN: there is no earlier model to forget from.
    """
    row = np.asarray(_as_numpy(scores), dtype=np.float64).reshape(-1)
    if row.size == 0:
        raise ValueError("joint_metrics needs at least one language's score")
    out = {"AA": float(row.mean()), "F": math.nan, "Fen": math.nan, "BWT": math.nan}
    if zero_shot is not None:
        b = np.asarray(_as_numpy(zero_shot), dtype=np.float64).reshape(-1)
        if b.shape != row.shape:
            raise ValueError(f"zero_shot has {b.size} scores for {row.size} languages")
        out["FWT"] = float((row - b).mean())
    out["plasticity"] = float(row.mean())
    return out

