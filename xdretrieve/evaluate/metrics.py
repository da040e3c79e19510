"""Ranking metrics of ``shared/EVALUATION.md``, binary relevance, from full rankings.

With ``top_k`` the first k items of the ranking and ``G`` the truth set:

- ``recall@k = |top_k ∩ G| / |G|``
- ``ndcg@k = DCG@k / IDCG@k``, ``DCG@k = Σ_{r=1..k} rel_r / log2(r + 1)``, IDCG@k the DCG of a
  ranking with min(|G|, k) relevant items first
- ``hr@k = 1`` if ``top_k ∩ G`` is non-empty, else 0
- ``mrr = 1 / rank`` of the first relevant item in the full ranking (0 if none)

:func:`score_rankings` computes all of them for a batch of rankings at once (one relevance
matrix, no Python loop over users); the single-ranking functions are for people and tests.

Example:
    >>> recall_at([3, 0, 2, 1], {2, 5}, k=3)   # one of 2 relevant items in the top 3
    0.5
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

KS = (10, 50)
METRICS = ("recall@10", "ndcg@10", "hr@10", "recall@50", "ndcg@50", "hr@50", "mrr")


def metric_names(ks: Sequence[int] = KS) -> tuple[str, ...]:
    """Names in report order: recall, ndcg, hr at each k, then mrr."""
    return (*(f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr")), "mrr")


def relevance(rankings: np.ndarray, truth: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """(n_queries, ranking_length) bool: whether the item at each rank is relevant.

    Args:
        rankings: (n_queries, ranking_length) item indices, best first.
        truth: per query, the indices of its relevant items (any order, no duplicates needed).
        n_items: number of candidate items (indices are < n_items).
    """
    rankings = np.asarray(rankings)
    if rankings.ndim != 2 or len(rankings) != len(truth):
        raise ValueError(f"rankings must be (n_queries, length) with one truth per query, got "
                         f"shape {rankings.shape} and {len(truth)} truth sets")
    sizes = np.fromiter((len(t) for t in truth), dtype=np.int64, count=len(truth))
    mask = np.zeros((len(truth), n_items), dtype=bool)  # (n_queries, n_items) truth indicator
    if sizes.sum():
        mask[np.repeat(np.arange(len(truth)), sizes),
             np.concatenate([np.asarray(t, dtype=np.int64) for t in truth])] = True
    return np.take_along_axis(mask, rankings, axis=1)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))  # (k,) discount of ranks 1..k


def score_rankings(rankings: np.ndarray, truth: Sequence[np.ndarray], n_items: int,
                   ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
    """Every metric for every query: name -> (n_queries,) float64, names as :func:`metric_names`.

    Args:
        rankings: (n_queries, n_items) full rankings (item indices, best first); a shorter
            ranking is accepted, mrr then counts only what it contains. A cut-off longer than
            the rankings takes all of them.
        truth: per query, the non-empty array of its relevant item indices.
        n_items: number of candidate items.
        ks: cut-offs.

    Raises:
        ValueError: a truth set is empty, or a cut-off is below 1.
    """
    rel = relevance(rankings, truth, n_items)
    n_truth = np.array([len(np.unique(t)) for t in truth], dtype=np.float64)  # |G| per query
    if (n_truth == 0).any():
        raise ValueError("every query needs at least one relevant item")
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"cut-off must be at least 1, got {k}")
        top = rel[:, :k]  # a catalog smaller than k: top_k is the whole ranking
        hits = top.sum(axis=1)
        disc = _discounts(k)
        ideal = np.cumsum(disc)[np.minimum(n_truth, k).astype(np.int64) - 1]  # IDCG@k per query
        disc = disc[:top.shape[1]]
        out[f"recall@{k}"] = hits / n_truth
        out[f"ndcg@{k}"] = (top @ disc) / ideal
        out[f"hr@{k}"] = (hits > 0).astype(np.float64)
    found = rel.any(axis=1)
    first = rel.argmax(axis=1)  # 0-based rank of the first relevant item (0 when none)
    out["mrr"] = np.where(found, 1.0 / (first + 1), 0.0)
    return {name: out[name] for name in metric_names(ks)}


def _one(ranking: Iterable[int], truth: Iterable[int]) -> tuple[np.ndarray, list[np.ndarray], int]:
    r = np.asarray(list(ranking), dtype=np.int64)[None, :]
    t = np.unique(np.asarray(list(truth), dtype=np.int64))
    n_items = int(max(r.max(initial=-1), t.max(initial=-1))) + 1
    return r, [t], n_items


def recall_at(ranking: Iterable[int], truth: Iterable[int], k: int) -> float:
    """``|top_k ∩ G| / |G|`` of one ranking."""
    r, t, n = _one(ranking, truth)
    return float(score_rankings(r, t, n, ks=(k,))[f"recall@{k}"][0])


def ndcg_at(ranking: Iterable[int], truth: Iterable[int], k: int) -> float:
    """``DCG@k / IDCG@k`` of one ranking."""
    r, t, n = _one(ranking, truth)
    return float(score_rankings(r, t, n, ks=(k,))[f"ndcg@{k}"][0])


def hr_at(ranking: Iterable[int], truth: Iterable[int], k: int) -> float:
    """1.0 when one of the first k items is relevant, else 0.0."""
    r, t, n = _one(ranking, truth)
    return float(score_rankings(r, t, n, ks=(k,))[f"hr@{k}"][0])


def mrr(ranking: Iterable[int], truth: Iterable[int]) -> float:
    """``1 / rank`` of the first relevant item of one ranking (0.0 when none is in it)."""
    r, t, n = _one(ranking, truth)
    return float(score_rankings(r, t, n, ks=())["mrr"][0])
