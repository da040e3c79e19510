"""ItemKNN across domains: source item -> target item similarities from train users'
co-occurrence, summed over the query history (item-based CF, Sarwar et al., WWW 2001; source
items in the rows, target items in the columns).

``sim(i, j) = c(i, j) / (n_i ** alpha * n_j ** (1 - alpha) + shrink)`` with ``c(i, j)`` the
number of train users who have source item i and target item j, and ``n_i`` / ``n_j`` the number
of train users with i / j: the asymmetric cosine of Aiolli (RecSys 2013; ``alpha = 0.5`` is the
cosine, ``alpha = 1`` the conditional probability P(j | i)) with the shrink term of the ItemKNN
baseline of Ferrari Dacrema et al. (RecSys 2019), which damps pairs seen by few users. ``alpha``
and ``shrink`` are chosen on valid users. Items no query item co-occurs with fall back to train
popularity. Each train user counts with their most recent distinct items per domain, up to
``COOCCURRENCE_HISTORY`` (as the re-ranker's statistics: a user's pairs grow with the square of
their history).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from xdretrieve.evaluate.methods import ScoringMethod, stable_rank
from xdretrieve.evaluate.protocol import TrainView
from xdretrieve.evaluate.selection import choose
from xdretrieve.rerank import COOCCURRENCE_HISTORY, recent_distinct

ALPHAS = (0.5, 0.75, 1.0)
SHRINKS = (0.0, 10.0, 50.0, 200.0, 1000.0)


class ItemKNN(ScoringMethod):
    """Cross-domain item-to-item co-occurrence scoring.

    Args:
        alphas: candidate values of the asymmetric-cosine exponent.
        shrinks: candidate shrink terms. Every (alpha, shrink) pair is tried; the best on valid
            users (ndcg@10) is used, the first pair when there are no valid users.
    """

    name = "itemknn"

    def __init__(self, alphas: Sequence[float] = ALPHAS, shrinks: Sequence[float] = SHRINKS,
                 max_history: int = COOCCURRENCE_HISTORY):
        self.alphas, self.shrinks = tuple(alphas), tuple(shrinks)
        self.max_history = max_history
        self.alpha, self.shrink = self.alphas[0], self.shrinks[0]
        self.valid_table: list[tuple[dict[str, Any], float]] = []
        self._view: TrainView | None = None
        self._sim: sp.csr_matrix | None = None

    def fit(self, view: TrainView) -> None:
        self._view = view
        source, target = (view.history_matrix(  # binary (n_users, n_s) and (n_users, n_t)
            [recent_distinct(view.histories[u].get(d, ()), self.max_history) for u in view.users],
            d) for d in (view.source, view.target))
        self._cooc = self._cooccurrence(view, source, target)
        self._n_source = np.asarray(source.sum(axis=0)).ravel()  # (n_s,) users per item
        self._n_target = np.asarray(target.sum(axis=0)).ravel()  # (n_t,)
        self.tiebreak = view.popularity(view.target)
        cache: dict[tuple[float, float], sp.csr_matrix] = {}

        def similarity(p: dict[str, Any]) -> sp.csr_matrix:
            key = (p["alpha"], p["shrink"])
            if key not in cache:
                cache.clear()  # one (n_s, n_t) sparse matrix alive at a time
                cache[key] = self._similarity(*key)
            return cache[key]

        params, self.valid_table = choose(
            [{"alpha": a, "shrink": h} for a in self.alphas for h in self.shrinks],
            lambda p, q: stable_rank(self._score(similarity(p), q), self.tiebreak), view.valid)
        self.alpha, self.shrink = params["alpha"], params["shrink"]
        self._sim = similarity(params)

    def _cooccurrence(self, view: TrainView, source: sp.csr_matrix,
                      target: sp.csr_matrix) -> sp.csr_matrix:
        """(n_s, n_t) c(i, j): the train users who have both items, from the binary user rows
        of each domain (a hook: ``benchmarks/cooccurrence_order.py`` weights the pairs)."""
        return (source.T @ target).tocsr()

    def _similarity(self, alpha: float, shrink: float) -> sp.csr_matrix:
        """(n_s, n_t) shrunk asymmetric cosine; zero where no train user has both items."""
        pairs = self._cooc.tocoo()
        norm = (self._n_source[pairs.row] ** alpha) * (self._n_target[pairs.col] ** (1 - alpha))
        values = (pairs.data / (norm + shrink)).astype(np.float32)  # n_i, n_j >= c(i, j) >= 1
        return sp.csr_matrix((values, (pairs.row, pairs.col)), shape=pairs.shape)

    def _score(self, sim: sp.csr_matrix, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
        assert self._view is not None
        q = self._view.history_matrix(queries, self._view.source)  # (n_q, n_s) binary
        return (q @ sim).toarray()  # (n_q, n_t)

    def score(self, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
        if self._sim is None:
            raise RuntimeError("score() before fit()")
        return self._score(self._sim, queries)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "shrink": self.shrink, "alphas": list(self.alphas),
                "shrinks": list(self.shrinks),
                "max_history": self.max_history,
                "valid_ndcg@10": {f"alpha={p['alpha']},shrink={p['shrink']}": round(v, 4)
                                  for p, v in self.valid_table}}
