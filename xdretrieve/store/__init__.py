"""Qdrant, embedded or served, behind one interface.

:func:`open_store` picks the backend from the settings, as ``QdrantClient`` does from its
arguments: a URL means a server (``":memory:"`` means qdrant-client's in-process mode, for
tests), otherwise the embedded Qdrant Edge store in ``settings.store``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from xdretrieve.errors import StoreError
from xdretrieve.store.base import (
    ITEMS,
    STORE_LAYOUT,
    USERS,
    PointId,
    ScoredHit,
    StoredPoint,
    StoreInfo,
    VectorStore,
    item_point_id,
    user_point_id,
)

if TYPE_CHECKING:
    from xdretrieve.config import Settings

__all__ = ["ITEMS", "STORE_LAYOUT", "USERS", "PointId", "ScoredHit", "StoreInfo", "StoredPoint",
           "VectorStore", "item_point_id", "open_store", "user_point_id"]


def open_store(settings: Settings) -> VectorStore:
    """The store the settings name: a Qdrant server when ``settings.url`` is set, else the
    embedded Qdrant Edge store in ``settings.store``."""
    index_args = dict(hnsw_m=settings.hnsw_m, hnsw_ef_construct=settings.hnsw_ef_construct,
                      search_ef=settings.search_ef)
    if settings.url:
        from qdrant_client import QdrantClient

        from xdretrieve.store.server import ServerStore

        if settings.url == ":memory:":
            client = QdrantClient(":memory:")
        else:
            # the client checks the server's version on a thread of its own, and warns when it
            # cannot reach it: the first call says so, with the address, as one error
            warnings.filterwarnings("ignore", message="Failed to obtain server version",
                                    category=UserWarning)
            try:
                key = settings.api_key.get_secret_value() if settings.api_key else None
                client = QdrantClient(url=settings.url, api_key=key)
            except ValueError as e:  # an unknown scheme, a host that cannot be one
                raise StoreError(f"'{settings.url}' is not a Qdrant server URL ({e}); expected "
                                 f"http(s)://HOST:PORT, e.g. http://localhost:6333") from None
        return ServerStore(client, settings.collection_prefix, shards=settings.shards,
                           replicas=settings.replicas, url=settings.url, **index_args)
    from xdretrieve.store.edge import EdgeStore

    return EdgeStore(settings.store, hnsw_per_domain=settings.hnsw_per_domain,
                     quantization=settings.quantization, search_threads=settings.search_threads,
                     **index_args)
