"""The same filtered search by three engines: Qdrant Edge (HNSW or exact), NumPy brute force,
and qdrant-client's in-process mode.

Every engine answers ``search(vector, domain, exclude, limit) -> point ids, best first``: the
nearest items of ``domain`` by cosine, without the excluded point ids (a user's own items).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xdretrieve.store import ITEMS, VectorStore
from xdretrieve.store.edge import EdgeStore


@dataclass
class Catalog:
    """The items of a store as arrays: what the NumPy engine and the ground truth search."""

    ids: list[int]  # point ids
    vectors: np.ndarray  # (n, dim) float32 unit
    domains: np.ndarray  # (n,) str
    payloads: list[dict[str, Any]]

    @classmethod
    def from_store(cls, store: VectorStore) -> Catalog:
        ids, vectors, domains, payloads = [], [], [], []
        for p in store.scroll(ITEMS, with_vectors=True):
            ids.append(p.id)
            vectors.append(p.vector)
            domains.append(p.payload["domain"])
            payloads.append(p.payload)
        return cls(ids, np.stack(vectors).astype(np.float32), np.array(domains), payloads)


class NumpyExact:
    """Exact search: one contiguous matrix per domain, ``matrix @ query``, ``argpartition``.

    The floor on this CPU for an exact answer; it returns ids and scores, no payload.
    """

    name = "NumPy brute force (exact)"

    def __init__(self, catalog: Catalog):
        self.by_domain: dict[str, tuple[np.ndarray, np.ndarray, dict[int, int]]] = {}
        ids = np.array(catalog.ids, dtype=object)
        for domain in np.unique(catalog.domains):
            rows = np.flatnonzero(catalog.domains == domain)
            matrix = np.ascontiguousarray(catalog.vectors[rows])  # (n_domain, dim)
            dom_ids = ids[rows]
            self.by_domain[str(domain)] = (matrix, dom_ids, {p: i for i, p in enumerate(dom_ids)})

    def scores_top(self, vector: np.ndarray, domain: str, exclude: Sequence[int],
                   limit: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the ``limit`` best, best first."""
        matrix, ids, row_of = self.by_domain[domain]
        return _top(matrix @ vector, ids, row_of, exclude, limit)

    def search(self, vector: np.ndarray, domain: str, exclude: Sequence[int],
               limit: int) -> list[int]:
        return list(self.scores_top(vector, domain, exclude, limit)[0])

    def search_batch(self, vectors: np.ndarray, domain: str, excludes: Sequence[Sequence[int]],
                     limit: int) -> list[list[int]]:
        """Many queries of one domain as one matrix product (for ground truth)."""
        matrix, ids, row_of = self.by_domain[domain]
        scores = vectors @ matrix.T  # (n_queries, n_domain)
        return [list(_top(scores[q], ids, row_of, exclude, limit)[0])
                for q, exclude in enumerate(excludes)]


def _top(scores: np.ndarray, ids: np.ndarray, row_of: dict[int, int], exclude: Sequence[int],
         limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of the ``limit`` best of one domain's ``scores`` (modified: the excluded
    points set to -inf), best first."""
    for pid in exclude:
        row = row_of.get(pid)
        if row is not None:
            scores[row] = -np.inf
    k = min(limit, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    keep = np.isfinite(scores[top])
    return ids[top[keep]], scores[top[keep]]


class StoreEngine:
    """A :class:`VectorStore`'s own ``search`` (payload included unless ``with_payload`` is
    false, as the retriever asks it)."""

    def __init__(self, store: VectorStore, name: str, ef: int | None = None,
                 with_payload: bool = True):
        self.store, self.name, self.ef, self.with_payload = store, name, ef, with_payload

    def search(self, vector: np.ndarray, domain: str, exclude: Sequence[int],
               limit: int) -> list[int]:
        return [h.id for h in self.store.search(ITEMS, vector, limit, domain=domain,
                                                exclude=exclude, ef=self.ef,
                                                with_payload=self.with_payload)]


class EdgeExact:
    """Qdrant Edge with ``SearchParams(exact=True)``: the engine's own full scan (of the
    original vectors, not of int8 copies)."""

    name = "Qdrant Edge exact=True (full scan)"

    def __init__(self, store: Any):
        import qdrant_edge as qe

        self.qe, self.store = qe, store

    def search(self, vector: np.ndarray, domain: str, exclude: Sequence[int],
               limit: int) -> list[int]:
        qe = self.qe
        shard, filtered = self.store.shard_of(ITEMS, domain)  # exact= is not in the store's API
        if shard is None:
            return []
        request = qe.QueryRequest(limit=limit, query=qe.Query.Nearest(vector.tolist()),
                                  filter=self.store._filter(domain if filtered else None, exclude),
                                  with_payload=True,
                                  params=qe.SearchParams(exact=True, quantization=qe.QuantizationSearchParams(
                                      ignore=True)))
        return [p.id for p in shard.query(request)]


def client_local_store(prefix: str = "bench_") -> VectorStore:
    """qdrant-client's in-process mode behind xdretrieve's server backend: what a user who
    reaches for ``QdrantClient(":memory:")`` gets (brute force in Python, no HNSW)."""
    import warnings

    from qdrant_client import QdrantClient

    from xdretrieve.store.server import ServerStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = QdrantClient(":memory:")
    return ServerStore(client, prefix=prefix)


@dataclass(frozen=True)
class EdgeVariant:
    """How an Edge index is built: ``None`` fields take the settings (what xdretrieve ships).

    ``per_domain``: one shard, hence one HNSW graph, per value of the ``domain`` field, or one
    shard and one graph over all points (the domain a filter);
    ``quantization``: ``"int8"`` (scalar, in RAM, candidates rescored on the originals) or
    ``"none"``.
    """

    name: str
    per_domain: bool | None = None
    quantization: str | None = None
    hnsw_m: int | None = None
    hnsw_ef_construct: int | None = None
    search_ef: int | None = None
    search_threads: int | None = None

    def store(self, path: str | Path, **index_args: Any) -> EdgeStore:
        overrides = {k: v for k, v in (("hnsw_per_domain", self.per_domain),
                                       ("quantization", self.quantization),
                                       ("hnsw_m", self.hnsw_m),
                                       ("hnsw_ef_construct", self.hnsw_ef_construct),
                                       ("search_ef", self.search_ef),
                                       ("search_threads", self.search_threads))
                     if v is not None}
        return EdgeStore(path, **{**index_args, **overrides})


def describe(store: EdgeStore) -> str:
    """The index layout of an :class:`EdgeStore`'s new collections, in words."""
    graph = "per-domain HNSW" if store.hnsw_per_domain else "global HNSW"
    return (f"{graph} (m={store.hnsw_m}, ef {store.search_ef})"
            + (" + int8" if store.quantization == "int8" else "")
            + ("" if store.search_threads == 1 else ", search pool: one thread per CPU"
               if store.search_threads == 0 else f", {store.search_threads} search threads"))


SHIPPED = EdgeVariant("as shipped")  # named after its layout by the suite (describe())
PREVIOUS = EdgeVariant("global HNSW (m=16, ef 128), float, one search thread per CPU: the "
                       "previous defaults", per_domain=False, quantization="none", hnsw_m=16,
                       hnsw_ef_construct=128, search_ef=128, search_threads=0)
