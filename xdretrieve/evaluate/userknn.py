"""UserKNN across domains: recommend the target items of the train users whose source-domain
profiles are closest to the query (user-based CF, Herlocker et al., SIGIR 1999, with the
source domain as the only shared ground).

Profiles are binary item vectors weighted by idf (``log(n_users / n_i)``, rare items say more
about taste) and L2-normalised; closeness is their cosine. The score of target item j is
``Σ_{v in top-k neighbours} cos(q, v) * [v has j]``. ``k`` is chosen on valid users. Items no
neighbour has fall back to train popularity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from xdretrieve.evaluate.methods import ScoringMethod, stable_rank
from xdretrieve.evaluate.protocol import TrainView
from xdretrieve.evaluate.selection import choose

NEIGHBOURS = (50, 10, 25, 100, 200, 400, 800)


def _l2_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())  # (n_rows,)
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return (sp.diags(inv.astype(np.float32)) @ m).tocsr()


class UserKNN(ScoringMethod):
    """Nearest train users by source-domain profile; their target items, similarity-weighted.

    Args:
        neighbours: candidate numbers of neighbours, the default first; the best on valid
            users (ndcg@10) is used.
    """

    name = "userknn"

    def __init__(self, neighbours: Sequence[int] = NEIGHBOURS):
        self.neighbours = tuple(neighbours)
        self.k = self.neighbours[0]
        self.valid_table: list[tuple[dict[str, Any], float]] = []
        self._view: TrainView | None = None
        self._profiles: sp.csr_matrix | None = None

    def fit(self, view: TrainView) -> None:
        self._view = view
        source = view.matrix(view.source).astype(bool).astype(np.float32)  # (n_users, n_s)
        df = np.asarray(source.sum(axis=0)).ravel()  # (n_s,) users per source item
        n_users = max(source.shape[0], 1)
        # log(n_users / df), and at least a small weight so that an item every user has counts
        self._idf = np.where(df > 0, np.log(n_users / np.maximum(df, 1)) + 1e-3, 0.0)
        self._idf = self._idf.astype(np.float32)
        self._profiles = _l2_rows((source @ sp.diags(self._idf)).tocsr())  # (n_users, n_s)
        self._target = view.matrix(view.target).astype(bool).astype(np.float32).tocsr()
        self.tiebreak = view.popularity(view.target)
        params, self.valid_table = choose(
            [{"k": k} for k in self.neighbours],
            lambda p, q: stable_rank(self._score(p["k"], q), self.tiebreak), view.valid)
        self.k = params["k"]

    def _score(self, k: int, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
        assert self._view is not None and self._profiles is not None
        q = self._view.history_matrix(queries, self._view.source)  # (n_q, n_s) binary
        q = _l2_rows((q @ sp.diags(self._idf)).tocsr())
        sims = (q @ self._profiles.T).toarray()  # (n_q, n_users) cosine
        k = min(k, sims.shape[1])
        if k < sims.shape[1]:
            # keep each row's k largest; argpartition is O(n_users) per row
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (n_q, k)
            rows = np.repeat(np.arange(len(sims)), k)
            weights = sp.csr_matrix((sims[rows, top.ravel()], (rows, top.ravel())),
                                    shape=sims.shape)
        else:
            weights = sp.csr_matrix(sims)
        return (weights @ self._target).toarray()  # (n_q, n_t)

    def score(self, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
        if self._profiles is None:
            raise RuntimeError("score() before fit()")
        return self._score(self.k, queries)

    def config(self) -> dict[str, Any]:
        return {"k": self.k, "neighbours": list(self.neighbours), "profile": "binary idf, cosine",
                "valid_ndcg@10": {str(p["k"]): round(v, 4) for p, v in self.valid_table}}
