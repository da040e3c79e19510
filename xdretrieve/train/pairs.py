"""Training pairs of full mode and their batching: what a user's history asks for (a query
text) and what it leads to (an item), cut into global batches of one target domain that several
processes share. NumPy only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def query_text(titles: Sequence[str], source: str, target: str, limit: int = 10) -> str:
    """The query side: a domain prompt and the last ``limit`` titles, most recent first (so
    that truncation drops the oldest).

    Example:
        >>> query_text(["a", "b", "c"], "arts", "office", 2)
        'arts buyer, recommend office: c; b'
    """
    return f"{source} buyer, recommend {target}: " + "; ".join(reversed(list(titles[-limit:])))


@dataclass
class Pairs:
    """Training pairs. Queries are kept once per (user, direction) or (user, prefix); every
    array is aligned with the pairs unless named ``query_*``."""

    query_texts: list[str]
    query_user: np.ndarray  # (n_queries,) user index of each query
    query_target: np.ndarray  # (n_queries,) domain index the query asks for
    query: np.ndarray  # (n_pairs,) query index
    item: np.ndarray  # (n_pairs,) global item row of the positive
    target: np.ndarray  # (n_pairs,) domain index of the positive
    cross: np.ndarray  # (n_pairs,) bool: source history of another domain
    known: list[np.ndarray]  # per user: sorted global rows of every item they have (never negatives)

    def __len__(self) -> int:
        return len(self.item)


def build_pairs(histories, users: Sequence[str], domains: Sequence[str], items,
                row_of: dict[str, int], history_titles: int = 10,
                same_domain: bool = True) -> Pairs:
    """Pairs of train users' histories (``histories[user][domain]``: item ids, oldest first)."""
    texts, q_user, q_target, query, item, target, cross, known = [], [], [], [], [], [], [], []

    def add_query(text: str, u: int, t: int) -> int:
        texts.append(text)
        q_user.append(u)
        q_target.append(t)
        return len(texts) - 1

    for u, user in enumerate(users):
        h = histories.get(user, {})
        known.append(np.unique(np.array([row_of[i] for ids in h.values() for i in ids],
                                        dtype=np.int64)))
        titles = {d: [items[i].title for i in h.get(d, ())] for d in domains}
        for s, src in enumerate(domains):
            for t, tgt in enumerate(domains):
                if s == t or not titles[src] or not h.get(tgt):
                    continue
                q = add_query(query_text(titles[src], src, tgt, history_titles), u, t)
                for iid in dict.fromkeys(h[tgt]):  # each target item once, first-seen order
                    query.append(q)
                    item.append(row_of[iid])
                    target.append(t)
                    cross.append(True)
            if same_domain:
                ids = h.get(src, ())
                for k in range(1, len(ids)):
                    q = add_query(query_text(titles[src][:k], src, src, history_titles), u, s)
                    query.append(q)
                    item.append(row_of[ids[k]])
                    target.append(s)
                    cross.append(False)
    return Pairs(texts, np.array(q_user, dtype=np.int64), np.array(q_target, dtype=np.int64),
                 np.array(query, dtype=np.int64), np.array(item, dtype=np.int64),
                 np.array(target, dtype=np.int64), np.array(cross, dtype=bool), known)


def global_batches(target: np.ndarray, batch_size: int, world_size: int,
                   rng: np.random.Generator, max_pairs: int | None = None) -> list[np.ndarray]:
    """One epoch's steps: each a global batch of pair indices of one target domain, of
    ``batch_size * world_size`` pairs (a domain's last batch may be shorter: trimmed to a multiple
    of ``world_size``, dropped below two pairs per process). Every process computes the same list
    from the same seed; :func:`shard` then gives each its part."""
    order = rng.permutation(len(target))
    if max_pairs is not None:
        order = order[:max_pairs]
    size = batch_size * world_size
    out = []
    for t in np.unique(target[order]):
        chosen = order[target[order] == t]
        for start in range(0, len(chosen), size):
            chunk = chosen[start:start + size]
            keep = len(chunk) // world_size * world_size
            if keep >= 2 * world_size:
                out.append(chunk[:keep])
    return [out[i] for i in rng.permutation(len(out))]


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Process ``rank``'s equal, contiguous share of a global batch."""
    per = len(batch) // world_size
    return batch[rank * per:(rank + 1) * per]
