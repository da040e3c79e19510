"""The lightweight re-ranker: a linear model over cheap features of (user, candidate).

The nearest-neighbour search hands over ``candidates`` (200) items; each gets

====================  ==========================================================================
``score``             the model's score: scale * cosine + item bias
``cosine``            cosine between the user vector and the item
``log_popularity``    log(1 + interactions of train users with the item)
``cooccurrence``      log(1 + sum over history items h of train users having both h and the item)
``cooccurrence_norm`` that sum with each pair divided by sqrt(pop(h) * pop(item)) (cosine-like)
``text_overlap``      share of the item's text tokens (category path, brand) in the history's text
====================  ==========================================================================

and the re-ranker orders them by ``w . standardised(features)``. It is trained listwise (softmax
over a user's candidates) on train users the tower did not see, and kept only if it lifts
ndcg@10 on valid users. Everything is NumPy: about 0.1 ms for 200 candidates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

FEATURES = ("score", "cosine", "log_popularity", "cooccurrence", "cooccurrence_norm",
            "text_overlap")
_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


@dataclass
class ItemStats:
    """Collaborative statistics of train users: popularity and cross-domain co-occurrence.

    ``cooc`` is (n_items, n_items) CSR over ``ids``: entry (h, c) counts train users who
    interacted with both h and c, for h and c of different domains."""

    ids: list[str]
    popularity: np.ndarray  # (n_items,)
    cooc: sp.csr_matrix

    def __post_init__(self) -> None:
        self.row = {iid: r for r, iid in enumerate(self.ids)}

    @classmethod
    def fit(cls, ids: list[str], histories: dict[str, dict[str, tuple[str, ...]]]) -> ItemStats:
        row = {iid: r for r, iid in enumerate(ids)}
        rows, cols = [], []
        for per_domain in histories.values():
            sets = {d: sorted({row[i] for i in h}) for d, h in per_domain.items() if h}
            for d, members in sets.items():  # every cross-domain pair of this user's items
                others = [r for other, rs in sets.items() if other != d for r in rs]
                for h in members:
                    rows.extend([h] * len(others))
                    cols.extend(others)
        data = np.ones(len(rows), dtype=np.float32)
        cooc = sp.csr_matrix((data, (rows, cols)), shape=(len(ids), len(ids)), dtype=np.float32)
        cooc.sum_duplicates()
        popularity = np.zeros(len(ids), dtype=np.float32)
        for per_domain in histories.values():
            for h in per_domain.values():
                for i in h:
                    popularity[row[i]] += 1
        return cls(list(ids), popularity, cooc)

    def save(self, path: Path) -> None:
        np.savez(path, ids=np.array(self.ids), popularity=self.popularity,
                 data=self.cooc.data, indices=self.cooc.indices, indptr=self.cooc.indptr)

    @classmethod
    def load(cls, path: Path) -> ItemStats:
        with np.load(path, allow_pickle=False) as z:
            n = len(z["ids"])
            cooc = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(n, n))
            return cls(z["ids"].tolist(), z["popularity"], cooc)


def features(stats: ItemStats, history: Sequence[str], history_text: str,
             candidates: Sequence[str], candidate_texts: Sequence[str], cosines: np.ndarray,
             scores: np.ndarray) -> np.ndarray:
    """(len(candidates), len(FEATURES)) raw features, columns as :data:`FEATURES`."""
    rows = np.array([stats.row.get(i, -1) for i in candidates])
    known = rows >= 0
    pop = np.zeros(len(candidates), dtype=np.float32)
    pop[known] = stats.popularity[rows[known]]
    hist_rows = sorted({stats.row[i] for i in history if i in stats.row})
    cooc = np.zeros(len(candidates), dtype=np.float32)
    norm = np.zeros(len(candidates), dtype=np.float32)
    if hist_rows and known.any():
        block = stats.cooc[hist_rows][:, rows[known]].toarray()  # (n_hist, n_known)
        cooc[known] = block.sum(0)
        denom = np.sqrt(np.outer(stats.popularity[hist_rows], pop[known])) + 1.0
        norm[known] = (block / denom).sum(0)
    history_tokens = tokens(history_text)
    overlap = np.array([len(t & history_tokens) / len(t) if t else 0.0
                        for t in map(tokens, candidate_texts)], dtype=np.float32)
    return np.column_stack([scores, cosines, np.log1p(pop), np.log1p(cooc), norm, overlap])


@dataclass
class Reranker:
    """``w . (x - mean) / std``: a linear listwise re-ranker over :data:`FEATURES`."""

    weights: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    stats: ItemStats

    def score(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std) @ self.weights

    def save(self, directory: Path) -> None:
        (directory / "reranker.json").write_text(json.dumps({
            "features": list(FEATURES), "weights": self.weights.tolist(),
            "mean": self.mean.tolist(), "std": self.std.tolist()}, indent=2))
        self.stats.save(directory / "item_stats.npz")

    @classmethod
    def load(cls, directory: Path) -> Reranker | None:
        path = directory / "reranker.json"
        if not path.is_file():
            return None
        spec = json.loads(path.read_text())
        if tuple(spec["features"]) != FEATURES:
            raise ValueError(f"{path}: features {spec['features']} are not {list(FEATURES)}")
        return cls(np.array(spec["weights"], dtype=np.float32),
                   np.array(spec["mean"], dtype=np.float32),
                   np.array(spec["std"], dtype=np.float32),
                   ItemStats.load(directory / "item_stats.npz"))


def fit_reranker(groups: list[tuple[np.ndarray, np.ndarray]], stats: ItemStats,
                 epochs: int = 200, lr: float = 0.05, seed: int = 0) -> Reranker:
    """Fit listwise: ``groups`` holds per user (features (n_cand, F), labels (n_cand,) 0/1);
    users without a relevant candidate teach nothing and are dropped."""
    import torch

    torch.manual_seed(seed)
    groups = [(x, y) for x, y in groups if y.any()]
    allx = np.concatenate([x for x, _ in groups])
    mean, std = allx.mean(0), allx.std(0) + 1e-6
    X = torch.tensor(np.stack([(x - mean) / std for x, _ in groups]), dtype=torch.float32)
    Y = torch.tensor(np.stack([y / y.sum() for _, y in groups]), dtype=torch.float32)
    w = torch.zeros(X.shape[-1], requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(epochs):
        loss = -(Y * torch.log_softmax(X @ w, dim=1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Reranker(w.detach().numpy().astype(np.float32), mean.astype(np.float32),
                    std.astype(np.float32), stats)
