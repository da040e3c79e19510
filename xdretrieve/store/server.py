"""Server backend: a Qdrant server or cluster through ``qdrant-client``.

Collections are ``{prefix}items`` and ``{prefix}users``; the :class:`StoreInfo` rides in the
items collection's metadata. A bulk load runs with indexing off; :meth:`build_index` turns it on
and waits for the collection to turn green.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from xdretrieve.config import DEFAULT_SEARCH_EF
from xdretrieve.errors import StoreError
from xdretrieve.store.base import ITEMS, PointId, ScoredHit, StoredPoint, StoreInfo, VectorStore

_INFO_KEY = "xdretrieve"
_SCROLL_PAGE = 2048
_INDEXING_THRESHOLD_KB = 10_000


class ServerStore(VectorStore):
    """Store on a Qdrant server.

    Args:
        client: a connected ``QdrantClient`` (``QdrantClient(url=...)``; tests use ``":memory:"``).
        prefix: collection name prefix.
        shards, replicas: placement of new collections on a cluster.
        url: the server's address, for messages.
    """

    def __init__(self, client: QdrantClient, prefix: str = "xdr_", hnsw_m: int = 32,
                 hnsw_ef_construct: int = 256, search_ef: int = DEFAULT_SEARCH_EF,
                 shards: int = 1, replicas: int = 1, url: str | None = None):
        self.client, self.prefix, self.url = client, prefix, url
        self.hnsw_m, self.hnsw_ef_construct, self.search_ef = hnsw_m, hnsw_ef_construct, search_ef
        self.shards, self.replicas = shards, replicas

    def __repr__(self) -> str:
        return f"ServerStore(prefix={self.prefix!r})"

    def name(self, collection: str) -> str:
        return self.prefix + collection

    def exists(self, collection: str) -> bool:
        try:
            return self.client.collection_exists(self.name(collection))
        except Exception as e:  # connection refused, DNS, TLS: all mean the same to a user
            at = f" at {self.url}" if self.url else ""
            raise StoreError(f"cannot reach the Qdrant server{at}: {e} (is it running? "
                             f"`docker compose up -d qdrant` starts one)") from e

    def create(self, collection: str, dim: int, keyword_fields: Sequence[str]) -> None:
        name = self.name(collection)
        self.client.create_collection(
            name,
            vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
            hnsw_config=models.HnswConfigDiff(m=self.hnsw_m, ef_construct=self.hnsw_ef_construct),
            optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0),  # bulk load
            shard_number=self.shards, replication_factor=self.replicas,
        )
        for field_name in keyword_fields:
            self.client.create_payload_index(name, field_name, models.PayloadSchemaType.KEYWORD)

    def drop(self, collection: str) -> None:
        self.client.delete_collection(self.name(collection))

    def _upsert(self, collection: str, ids: list[PointId], vectors: np.ndarray,
                payloads: list[dict[str, Any]]) -> None:
        self.client.upsert(self.name(collection), wait=True, points=models.Batch(
            ids=ids, vectors=vectors.tolist(), payloads=payloads))

    def delete(self, collection: str, ids: Sequence[PointId]) -> None:
        if ids:
            self.client.delete(self.name(collection), wait=True,
                               points_selector=models.PointIdsList(points=list(ids)))

    def retrieve(self, collection: str, ids: Sequence[PointId], with_vectors: bool = False,
                 with_payload: bool = True) -> list[StoredPoint]:
        if not ids:
            return []
        records = self.client.retrieve(self.name(collection), list(ids), with_payload=with_payload,
                                       with_vectors=with_vectors)
        return [StoredPoint.of(r, with_vectors) for r in records]

    def scroll(self, collection: str, with_vectors: bool = False,
               fields: Sequence[str] | None = None) -> Iterator[StoredPoint]:
        payload: Any = list(fields) if fields is not None else True
        offset = None
        while True:
            records, offset = self.client.scroll(
                self.name(collection), limit=_SCROLL_PAGE, offset=offset, with_payload=payload,
                with_vectors=with_vectors)
            for r in records:
                yield StoredPoint.of(r, with_vectors)
            if offset is None:
                return

    def count(self, collection: str) -> int:
        return self.client.count(self.name(collection), exact=True).count

    @staticmethod
    def _filter(domain: str | None, exclude: Iterable[PointId],
                among: Iterable[PointId] = ()) -> models.Filter | None:
        """Points of ``domain`` (if given), not in ``exclude``, in ``among`` (if given)."""
        among = list(dict.fromkeys(among))
        must = ([models.FieldCondition(key="domain", match=models.MatchValue(value=domain))]
                if domain else [])
        must += [models.HasIdCondition(has_id=among)] if among else []
        excluded = list(dict.fromkeys(exclude))
        must_not = [models.HasIdCondition(has_id=excluded)] if excluded else None
        return models.Filter(must=must or None, must_not=must_not) if (must or must_not) else None

    def search(self, collection: str, vector: np.ndarray, limit: int,
               domain: str | None = None, exclude: Iterable[PointId] = (),
               ef: int | None = None, with_payload: bool = True) -> list[ScoredHit]:
        response = self.client.query_points(
            self.name(collection), query=np.asarray(vector, dtype=np.float32).tolist(),
            limit=limit, query_filter=self._filter(domain, exclude), with_payload=with_payload,
            search_params=models.SearchParams(hnsw_ef=ef or self.search_ef))
        return [ScoredHit(p.id, p.score, p.payload or {}) for p in response.points]

    def similarity(self, collection: str, vector: np.ndarray, ids: Sequence[PointId],
                   domain: str | None = None) -> dict[PointId, float]:
        if not ids:
            return {}
        response = self.client.query_points(
            self.name(collection), query=np.asarray(vector, dtype=np.float32).tolist(),
            limit=len(ids), with_payload=False, query_filter=self._filter(domain, (), ids),
            search_params=models.SearchParams(exact=True))
        return {p.id: p.score for p in response.points}

    def build_index(self, collection: str, timeout_s: float = 3600) -> None:
        name = self.name(collection)
        self.client.update_collection(name, optimizers_config=models.OptimizersConfigDiff(
            indexing_threshold=_INDEXING_THRESHOLD_KB))
        deadline = time.monotonic() + timeout_s
        while self.client.get_collection(name).status != models.CollectionStatus.GREEN:
            if time.monotonic() > deadline:
                raise StoreError(f"collection {name} was not indexed within {timeout_s:.0f} s")
            time.sleep(0.5)

    def read_info(self) -> StoreInfo | None:
        if not self.exists(ITEMS):
            return None
        metadata = self.client.get_collection(self.name(ITEMS)).config.metadata or {}
        data = metadata.get(_INFO_KEY)
        return StoreInfo.from_dict(data) if data else None

    def write_info(self, info: StoreInfo) -> None:
        self.client.update_collection(self.name(ITEMS), metadata={_INFO_KEY: info.to_dict()})

    def close(self) -> None:
        self.client.close()
