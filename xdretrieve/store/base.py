"""The store interface: what xdretrieve asks of Qdrant, whichever way Qdrant runs.

Backends (:mod:`.edge` in-process, :mod:`.server` over ``qdrant-client``) only translate these
calls; ids, batching, build metadata and its checks live here, once.
"""

from __future__ import annotations

import hashlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np

from xdretrieve.errors import EncoderMismatchError, StoreError

ITEMS = "items"
USERS = "users"
UPSERT_BATCH = 1024

_NAMESPACE = uuid.UUID("6f9b1c52-3a1e-4c0e-9a57-8d1f3c2b7e10")
# Store layout: 2 = integer point ids (1, before: UUID strings). Qdrant hands integer ids back as
# Python ints; UUIDs came back as uuid.UUID objects whose construction and str() were a fifth of
# a re-ranked query's time (400 neighbours).
STORE_LAYOUT = 2

PointId = int


_NAMESPACE_SHA1 = hashlib.sha1(_NAMESPACE.bytes)


def _point_id(key: str) -> PointId:
    # the top 63 bits of a UUIDv5 (``uuid.uuid5(_NAMESPACE, key).int >> 65``): deterministic,
    # positive in any signed 64-bit type, and a collision among a billion keys has odds of
    # about 1 in 10^10. Computed from the SHA-1 directly, 4x faster than through uuid.UUID
    # (a trained model maps its whole catalog when a process starts: 38k ids, 80 -> 20 ms).
    digest = _NAMESPACE_SHA1.copy()
    digest.update(key.encode("utf-8"))
    top = int.from_bytes(digest.digest()[:8], "big")
    return ((top & ~0xF000) | 0x5000) >> 1  # the version nibble UUIDv5 sets; variant bits fall off


def item_point_id(item_id: str) -> PointId:
    """Deterministic point id of an item: re-indexing the same item overwrites, never adds."""
    return _point_id(f"item:{item_id}")


def user_point_id(user_id: str, domain: str) -> PointId:
    """Deterministic point id of a user's profile in one domain."""
    return _point_id(f"user:{domain}:{user_id}")


# Named tuples, not frozen dataclasses: a wide search makes hundreds of these per query, and a
# frozen dataclass costs about 1 us each to build (measured: 0.35 ms of a 400-hit search).
class StoredPoint(NamedTuple):
    id: PointId
    payload: dict[str, Any]
    vector: np.ndarray | None = None

    @classmethod
    def of(cls, record: Any, with_vectors: bool) -> StoredPoint:
        """A point as either engine returns it (``id``, ``payload``, ``vector``)."""
        vector = np.asarray(record.vector, dtype=np.float32) if with_vectors else None
        return cls(record.id, dict(record.payload or {}), vector)


class ScoredHit(NamedTuple):
    id: PointId
    score: float
    payload: dict[str, Any]


@dataclass
class StoreInfo:
    """What built a store; a query with another encoder is refused."""

    encoder: str
    fingerprint: str
    dim: int
    version: str
    domains: list[str]
    text_template: str
    max_seq_length: int
    pooling: str
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    updated_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    extra: dict[str, Any] = field(default_factory=dict)
    layout: int = STORE_LAYOUT
    # False from a first `index` run's start (or --recreate's) until it has written everything
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """:meth:`to_dict` for people: long lists in ``extra`` (the popular items kept for users
        without history) given by their length."""
        out = self.to_dict()
        out["extra"] = {k: ({d: f"{len(v)} items" for d, v in v.items()} if k == "popular" else v)
                        for k, v in out["extra"].items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreInfo:
        layout = data.get("layout", 1)  # stores of layout 1 did not write it
        if layout != STORE_LAYOUT:
            raise StoreError(
                f"this store was written by xdretrieve {data.get('version', '?')} in store layout "
                f"{layout} ({'UUID' if layout == 1 else 'other'} point ids); this version reads "
                f"layout {STORE_LAYOUT}: index the data again into a new store directory")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def check_complete(self, where: object) -> None:
        """Raise :class:`StoreError` while the `index` run that builds the store (a first run,
        or one with --recreate) has not finished: it holds only part of the catalog."""
        if not self.complete:
            raise StoreError(f"the store at {where} is not complete: the `xdretrieve index` run "
                             f"that builds it has not finished (it is running, or was "
                             f"interrupted: then run it again; it keeps what was written)")

    def check_encoder(self, name: str, fingerprint: str, remedy: str | None = None) -> None:
        """Raise :class:`EncoderMismatchError` unless the encoder is the one that built this;
        ``remedy`` replaces the message's advice (what the caller's user can do)."""
        if fingerprint != self.fingerprint:
            raise EncoderMismatchError(
                f"this store was built by encoder '{self.encoder}' (fingerprint "
                f"{self.fingerprint}, dim {self.dim}), not by '{name}' (fingerprint {fingerprint}); "
                f"{remedy or f'use --model {self.encoder!r}, or re-index into a new store'}")


def checked_vectors(ids: Sequence[PointId], vectors: np.ndarray,
                    payloads: Sequence[dict[str, Any]]) -> np.ndarray:
    """The vectors of an upsert as float32, once its three parts are known to match."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if not (len(ids) == len(vectors) == len(payloads)):
        raise ValueError("ids, vectors and payloads differ in length")
    return vectors


class VectorStore(ABC):
    """Two collections, ``items`` and ``users``, of unit vectors with payload.

    Implementations must give the same answers for the same calls; ``tests/test_store.py`` runs
    one contract against every backend and against NumPy brute force.

    Example:
        >>> store = open_store(Settings(store="shop.xdr"))   # doctest: +SKIP
        >>> store.ensure(ITEMS, dim=384)
        >>> store.upsert(ITEMS, [item_point_id("b1")], vectors, [{"item_id": "b1", ...}])
        >>> store.search(ITEMS, query, limit=10, domain="movies")
    """

    # -- what a backend implements -------------------------------------------------------
    @abstractmethod
    def exists(self, collection: str) -> bool: ...

    @abstractmethod
    def create(self, collection: str, dim: int, keyword_fields: Sequence[str]) -> None:
        """Create an empty collection (cosine), with a keyword index on each field and the
        HNSW index deferred until :meth:`build_index`."""

    @abstractmethod
    def drop(self, collection: str) -> None: ...

    @abstractmethod
    def _upsert(self, collection: str, ids: list[PointId], vectors: np.ndarray,
                payloads: list[dict[str, Any]]) -> None: ...

    @abstractmethod
    def delete(self, collection: str, ids: Sequence[PointId]) -> None: ...

    @abstractmethod
    def retrieve(self, collection: str, ids: Sequence[PointId], with_vectors: bool = False,
                 with_payload: bool = True) -> list[StoredPoint]:
        """Points by id; ids not in the store are left out. ``with_payload=False`` leaves the
        payloads empty (a new process's first read of 2,000 scattered items' payloads cost
        ~0.1 s on the embedded store, their vectors alone ~3 ms)."""

    @abstractmethod
    def scroll(self, collection: str, with_vectors: bool = False,
               fields: Sequence[str] | None = None) -> Iterator[StoredPoint]: ...

    @abstractmethod
    def count(self, collection: str) -> int: ...

    @abstractmethod
    def search(self, collection: str, vector: np.ndarray, limit: int,
               domain: str | None = None, exclude: Iterable[PointId] = (),
               ef: int | None = None, with_payload: bool = True) -> list[ScoredHit]:
        """Nearest points by cosine, best first, optionally in one domain and without
        the excluded point ids; ``with_payload=False`` leaves the payloads empty (reading
        them is most of the cost of a wide search)."""

    def nearest(self, collection: str, vector: np.ndarray, limit: int, domain: str | None = None,
                exclude: Iterable[PointId] = ()) -> tuple[list[PointId], np.ndarray]:
        """:meth:`search` without payloads, as (point ids, cosines), best first: what a wide
        search of the query path needs, without an object per hit."""
        hits = self.search(collection, vector, limit, domain, exclude, with_payload=False)
        return [h.id for h in hits], np.fromiter((h.score for h in hits), np.float32, len(hits))

    def ids_by_domain(self, collection: str) -> dict[str, list[PointId]]:
        """Every point id of the collection, by the ``domain`` of its payload."""
        out: dict[str, list[PointId]] = {}
        for p in self.scroll(collection, fields=["domain"]):
            out.setdefault(p.payload.get("domain", ""), []).append(p.id)
        return out

    @abstractmethod
    def similarity(self, collection: str, vector: np.ndarray, ids: Sequence[PointId],
                   domain: str | None = None) -> dict[PointId, float]:
        """Cosine of the query to each of the given points (exact, on the stored vectors),
        by point id; ids not in the store (or, given ``domain``, not in that domain) are left
        out. Cheaper than retrieving the vectors: the engine scores them where they lie."""

    @abstractmethod
    def build_index(self, collection: str) -> None:
        """Build the HNSW index after a bulk load (blocks until it is built)."""

    @abstractmethod
    def read_info(self) -> StoreInfo | None: ...

    @abstractmethod
    def write_info(self, info: StoreInfo) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release files and connections."""

    def check_space(self, dim: int, payloads: Sequence[dict[str, Any]],  # noqa: B027
                    replacing: bool = False) -> None:
        """Refuse, before writing, points of ``dim`` and these payloads that cannot fit where
        the store keeps its files (``replacing``: what the store holds is dropped first, so its
        space counts as free). A server keeps its own disk: nothing to check here."""

    # -- shared logic ------------------------------------------------------------------------
    def ensure(self, collection: str, dim: int, keyword_fields: Sequence[str] = ("domain",)) -> None:
        if not self.exists(collection):
            self.create(collection, dim, keyword_fields)

    def upsert(self, collection: str, ids: Sequence[PointId], vectors: np.ndarray,
               payloads: Sequence[dict[str, Any]], progress: bool = False) -> None:
        """Insert or overwrite points, in batches."""
        from tqdm.auto import tqdm

        vectors = checked_vectors(ids, vectors, payloads)
        with tqdm(total=len(ids), desc=f"upserting {collection}", unit="point",
                  disable=not progress) as bar:
            for start in range(0, len(ids), UPSERT_BATCH):
                end = start + UPSERT_BATCH
                self._upsert(collection, list(ids[start:end]), vectors[start:end],
                             list(payloads[start:end]))
                bar.update(min(end, len(ids)) - start)

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
