"""Search recall of the approximate index against exact search, and what it costs.

recall@k = |approximate top k  ∩  exact top k| / k, averaged over the queries; the exact top k
comes from NumPy brute force with the same domain filter and exclusions. Ties at the k-th score
are rare with float32 cosines and count as misses, so the figure is a lower bound.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.common import timed_repeats
from benchmarks.engines import NumpyExact, StoreEngine
from benchmarks.querypath import Resolved
from xdretrieve.store.edge import EdgeStore


def ground_truth(exact: NumpyExact, queries: Sequence[Resolved], limit: int,
                 block: int = 128) -> list[list[str]]:
    """Exact top ``limit`` point ids of every query (batched by domain)."""
    out: list[list[str]] = [[] for _ in queries]
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        by_domain[q.domain].append(i)
    for domain, idx in by_domain.items():
        for start in range(0, len(idx), block):
            chunk = idx[start:start + block]
            vectors = np.stack([queries[i].vector for i in chunk])
            found = exact.search_batch(vectors, domain, [queries[i].exclude for i in chunk],
                                       limit)
            for i, ids in zip(chunk, found, strict=True):
                out[i] = ids
    return out


def recall_at(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]], k: int) -> float:
    hits = [len(set(f[:k]) & set(t[:k])) / max(1, min(k, len(t)))
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def measure(engine: Any, queries: Sequence[Resolved], limit: int, repeats: int,
            warmup: int | None = 20) -> tuple[dict[str, Any], np.ndarray, list[list[str]]]:
    """Latency figures (median over repeats) of ``engine.search`` and its answers."""
    answers: dict[int, list[str]] = {}

    def call(i: int) -> None:
        q = queries[i]
        answers[i] = engine.search(q.vector, q.domain, q.exclude, limit)

    figures, all_ms = timed_repeats(call, list(range(len(queries))), repeats, warmup)
    return figures, all_ms, [answers[i] for i in range(len(queries))]


def ef_sweep(store: EdgeStore, queries: Sequence[Resolved], truth: Sequence[Sequence[str]],
             efs: Sequence[int], limit: int, top: int, repeats: int,
             label: str = "") -> list[dict[str, Any]]:
    """Search latency and recall for each ``hnsw_ef``: recall@top of the first ``top`` of
    ``limit`` answers, and recall@limit when ``limit > top``. ``truth``: exact top ``limit``."""
    rows = []
    for ef in efs:
        figures, _, answers = measure(StoreEngine(store, label, ef=ef), queries, limit, repeats)
        row = {"index": label, "hnsw_ef": ef, "limit": limit,
               f"recall@{top}": recall_at([a[:top] for a in answers], [t[:top] for t in truth],
                                          top), **figures}
        if limit > top:
            row[f"recall@{limit}"] = recall_at(answers, truth, limit)
        rows.append(row)
    return rows


def production(store: EdgeStore, queries: Sequence[Resolved], truth: Sequence[Sequence[str]],
               candidates: int, limit: int, repeats: int, label: str,
               with_payload: bool = True) -> tuple[dict[str, Any], np.ndarray]:
    """Recall of the retriever's own search: ``candidates`` at the store's default ef, then
    its top ``limit``; recall of both lists. Also every latency (ms)."""
    figures, ms, answers = measure(StoreEngine(store, label, with_payload=with_payload), queries,
                                   candidates, repeats)
    row = {"index": label, "hnsw_ef": store.search_ef, "limit": candidates, "production": True,
           f"recall@{limit}": recall_at([a[:limit] for a in answers],
                                        [t[:limit] for t in truth], limit),
           f"recall@{candidates}": recall_at(answers, truth, candidates), **figures}
    return row, ms
