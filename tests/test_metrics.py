"""Metrics against hand-computed values and against a brute-force reading of EVALUATION.md."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xdretrieve.evaluate.metrics import (
    METRICS,
    hr_at,
    metric_names,
    mrr,
    ndcg_at,
    recall_at,
    relevance,
    score_rankings,
)

# ranking (item indices, best first):  4  1  7  0  3  9  2  5  8  6
# relevant (truth G = {1, 3, 6}):          .  R  .  .  R  .  .  .  .  R
# ranks of relevant items: 2, 5, 10
RANKING = [4, 1, 7, 0, 3, 9, 2, 5, 8, 6]
TRUTH = {1, 3, 6}
# DCG@5  = 1/log2(3) + 1/log2(6)             = 0.630930 + 0.386853 = 1.017783
# IDCG@5 = 1/log2(2) + 1/log2(3) + 1/log2(4) = 1 + 0.630930 + 0.5  = 2.130930 (3 relevant <= 5)
# DCG@10 = DCG@5 + 1/log2(11)                = 1.017783 + 0.289065 = 1.306847
# IDCG@10 = IDCG@5 (still 3 relevant)


def test_recall_hand_computed() -> None:
    assert recall_at(RANKING, TRUTH, 1) == 0.0
    assert recall_at(RANKING, TRUTH, 2) == pytest.approx(1 / 3)
    assert recall_at(RANKING, TRUTH, 5) == pytest.approx(2 / 3)
    assert recall_at(RANKING, TRUTH, 10) == pytest.approx(1.0)


def test_ndcg_hand_computed() -> None:
    assert ndcg_at(RANKING, TRUTH, 1) == 0.0
    assert ndcg_at(RANKING, TRUTH, 5) == pytest.approx(1.017783 / 2.130930, abs=1e-6)  # 0.477624
    assert ndcg_at(RANKING, TRUTH, 10) == pytest.approx(1.306847 / 2.130930, abs=1e-6)  # 0.613276


def test_hr_and_mrr_hand_computed() -> None:
    assert hr_at(RANKING, TRUTH, 1) == 0.0
    assert hr_at(RANKING, TRUTH, 2) == 1.0
    assert mrr(RANKING, TRUTH) == 0.5  # first relevant item at rank 2


def test_ideal_dcg_uses_min_of_truth_size_and_k() -> None:
    # ranking 0 1 2 3, G = {2}: one relevant item at rank 3 -> DCG@3 = 1/log2(4) = 0.5, IDCG@3 = 1
    assert ndcg_at([0, 1, 2, 3], {2}, 3) == pytest.approx(0.5)
    assert recall_at([0, 1, 2, 3], {2}, 3) == 1.0
    assert mrr([0, 1, 2, 3], {2}) == pytest.approx(1 / 3)
    # ranking 0 1 2 ..., G = {0..4}, k = 2: both of the top 2 are relevant -> a perfect ndcg@2
    # although only 2 of the 5 relevant items are found (recall 0.4)
    assert ndcg_at(range(10), range(5), 2) == pytest.approx(1.0)
    assert recall_at(range(10), range(5), 2) == pytest.approx(0.4)


def test_cut_off_beyond_a_small_catalog_takes_the_whole_ranking() -> None:
    # ranking 2 0 1 (3 items), G = {0, 1}: at k = 10 every item is in top_k
    # DCG = 1/log2(3) + 1/log2(4) = 0.630930 + 0.5; IDCG (2 relevant) = 1 + 0.630930
    assert recall_at([2, 0, 1], {0, 1}, 10) == 1.0
    assert ndcg_at([2, 0, 1], {0, 1}, 10) == pytest.approx(1.130930 / 1.630930, abs=1e-6)


def test_mrr_is_zero_when_no_relevant_item_is_ranked() -> None:
    assert mrr([0, 1, 2], {5}) == 0.0
    assert hr_at([0, 1, 2], {5}, 3) == 0.0


def test_relevance_matrix() -> None:
    rel = relevance(np.array([[2, 0, 1], [1, 2, 0]]), [np.array([0]), np.array([1, 2])], 3)
    assert rel.tolist() == [[False, True, False], [True, True, False]]


def _brute_force(ranking: list[int], truth: set[int], k: int) -> dict[str, float]:
    """EVALUATION.md, literally."""
    top = ranking[:k]
    found = [1.0 if item in truth else 0.0 for item in top]
    dcg = sum(rel / math.log2(r + 1) for r, rel in enumerate(found, start=1))
    idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(truth), k) + 1))
    first = next((r for r, item in enumerate(ranking, start=1) if item in truth), None)
    return {f"recall@{k}": sum(found) / len(truth), f"ndcg@{k}": dcg / idcg,
            f"hr@{k}": float(sum(found) > 0), "mrr": 0.0 if first is None else 1 / first}


def test_batch_matches_brute_force_on_random_rankings() -> None:
    rng = np.random.default_rng(0)
    n_items, n_queries = 60, 40
    rankings = np.stack([rng.permutation(n_items) for _ in range(n_queries)])
    truth = [rng.choice(n_items, size=rng.integers(1, 15), replace=False)
             for _ in range(n_queries)]
    got = score_rankings(rankings, truth, n_items, ks=(10, 50))
    assert list(got) == list(METRICS)
    for q in range(n_queries):
        for k in (10, 50):
            want = _brute_force(rankings[q].tolist(), set(truth[q].tolist()), k)
            for name, value in want.items():
                assert got[name][q] == pytest.approx(value, abs=1e-12), (q, name)


def test_repeated_truth_indices_count_once() -> None:
    once = score_rankings(np.array([[3, 1, 0, 2]]), [np.array([1, 2])], 4, ks=(2,))
    twice = score_rankings(np.array([[3, 1, 0, 2]]), [np.array([1, 2, 2, 1])], 4, ks=(2,))
    assert {k: v.tolist() for k, v in once.items()} == {k: v.tolist() for k, v in twice.items()}
    assert once["recall@2"][0] == 0.5


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least one relevant"):
        score_rankings(np.array([[0, 1]]), [np.array([], dtype=np.int64)], 2, ks=(1,))
    with pytest.raises(ValueError, match="at least 1"):
        score_rankings(np.array([[0, 1]]), [np.array([0])], 2, ks=(0,))
    with pytest.raises(ValueError, match="one truth per query"):
        score_rankings(np.array([[0, 1]]), [np.array([0]), np.array([1])], 2, ks=(1,))


def test_one_empty_truth_set_in_a_batch_is_refused() -> None:
    """A batch where only one query has no relevant item is refused as a single such query is:
    scored, that query's recall and ndcg would be NaN and the mean over users NaN with it."""
    rankings = np.array([[0, 1], [1, 0], [0, 1]])
    truth = [np.array([0]), np.array([], dtype=np.int64), np.array([1])]
    with pytest.raises(ValueError, match="every query needs at least one relevant item"):
        score_rankings(rankings, truth, 2, ks=(1,))


def test_metric_names_order() -> None:
    assert metric_names((10, 50)) == METRICS
    assert metric_names((5,)) == ("recall@5", "ndcg@5", "hr@5", "mrr")
