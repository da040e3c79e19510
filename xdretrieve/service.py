"""The HTTP service: the Python API (:class:`~xdretrieve.retriever.Retriever`,
:func:`~xdretrieve.indexer.upsert_items`, the store) behind FastAPI.

Run it with ``xdretrieve serve`` or any ASGI server::

    uvicorn --factory 'xdretrieve.service:create_app'

Endpoints (the OpenAPI schema is at ``/openapi.json``, browsable at ``/docs``)::

    POST   /recommend/user     {user_id, domain, limit}   -> {query, domain, hits}
    POST   /recommend/history  {item_ids, domain, limit}  -> {query, domain, hits}
    POST   /search/text        {text, domain, limit}      -> {query, domain, hits}
    PUT    /items              {items: [...]}             embed and upsert
    DELETE /items              {item_ids: [...]}
    GET    /health  (alive)    GET /ready (store has items)    GET /info (build info, counts)

Errors: unknown user, item or domain -> 404, a body that does not validate -> 422, no store or
an unreachable server -> 503; the body is ``{"detail": "<the XDRetrieveError message>"}``.

Concurrency: handlers run in a thread pool. Store calls go through a readers-writer lock (many
searches at once, a write alone): Qdrant Edge shards are safe across threads, but
qdrant-client's in-process mode is plain Python. Writes are serialized as a whole, since they
read and rewrite the store's build info; text queries are embedded one at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xdretrieve import __version__
from xdretrieve.config import Settings
from xdretrieve.errors import (
    SERVE_MISSING,
    DataError,
    EncoderMismatchError,
    MissingDependencyError,
    NotFoundError,
    StoreError,
    XDRetrieveError,
)
from xdretrieve.model import model_summary
from xdretrieve.retriever import Hit, Query, Retriever
from xdretrieve.service_models import (
    DeleteRequest,
    DeleteResponse,
    ErrorResponse,
    HealthResponse,
    HistoryRequest,
    HitOut,
    HitsResponse,
    InfoResponse,
    ReadyResponse,
    TextRequest,
    UpsertRequest,
    UpsertResponse,
    UserRequest,
)
from xdretrieve.store import (
    ITEMS,
    USERS,
    PointId,
    ScoredHit,
    StoredPoint,
    StoreInfo,
    VectorStore,
    open_store,
)

try:
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
except ImportError as e:  # pragma: no cover - exercised by test_service's subprocess check
    raise MissingDependencyError(SERVE_MISSING) from e

if TYPE_CHECKING:
    from xdretrieve.encoder import Encoder

log = logging.getLogger(__name__)

# error class -> HTTP status; the first match wins (subclasses before XDRetrieveError)
_STATUS: tuple[tuple[type[XDRetrieveError], int], ...] = (
    (NotFoundError, 404),
    (DataError, 422),
    (EncoderMismatchError, 409),
    (StoreError, 503),
    (MissingDependencyError, 503),
    (XDRetrieveError, 400),
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body cannot be read (not UTF-8 JSON)."},
    404: {"model": ErrorResponse, "description": "Unknown user, item or domain."},
    503: {"model": ErrorResponse, "description": "No store yet, or the Qdrant server is down."},
}


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers, so a stream of
    searches cannot starve an upsert."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class LockedStore(VectorStore):
    """A store whose every call holds ``lock``: reads shared, writes exclusive."""

    def __init__(self, inner: VectorStore, lock: ReadWriteLock):
        self.inner, self.lock = inner, lock

    def __repr__(self) -> str:
        return f"LockedStore({self.inner!r})"

    def exists(self, collection: str) -> bool:
        with self.lock.read():
            return self.inner.exists(collection)

    def create(self, collection: str, dim: int, keyword_fields: Sequence[str]) -> None:
        with self.lock.write():
            self.inner.create(collection, dim, keyword_fields)

    def drop(self, collection: str) -> None:
        with self.lock.write():
            self.inner.drop(collection)

    def upsert(self, collection: str, ids: Sequence[PointId], vectors: np.ndarray,
               payloads: Sequence[dict[str, Any]], progress: bool = False) -> None:
        # the inner store's own upsert: its disk-space check, and (embedded) its flush
        with self.lock.write():
            self.inner.upsert(collection, ids, vectors, payloads, progress)

    def _upsert(self, collection: str, ids: list[PointId], vectors: np.ndarray,
                payloads: list[dict[str, Any]]) -> None:
        with self.lock.write():
            self.inner._upsert(collection, ids, vectors, payloads)

    def check_space(self, dim: int, payloads: Sequence[dict[str, Any]],
                    replacing: bool = False) -> None:
        self.inner.check_space(dim, payloads, replacing)

    def delete(self, collection: str, ids: Sequence[PointId]) -> None:
        with self.lock.write():
            self.inner.delete(collection, ids)

    def retrieve(self, collection: str, ids: Sequence[PointId], with_vectors: bool = False,
                 with_payload: bool = True) -> list[StoredPoint]:
        with self.lock.read():
            return self.inner.retrieve(collection, ids, with_vectors, with_payload)

    def scroll(self, collection: str, with_vectors: bool = False,
               fields: Sequence[str] | None = None) -> Iterator[StoredPoint]:
        with self.lock.read():  # read it all now: a paused generator must not hold the lock
            return iter(list(self.inner.scroll(collection, with_vectors, fields)))

    def ids_by_domain(self, collection: str) -> dict[str, list[PointId]]:
        with self.lock.read():
            return self.inner.ids_by_domain(collection)

    def count(self, collection: str) -> int:
        with self.lock.read():
            return self.inner.count(collection)

    def search(self, collection: str, vector: np.ndarray, limit: int,
               domain: str | None = None, exclude: Iterable[PointId] = (),
               ef: int | None = None, with_payload: bool = True) -> list[ScoredHit]:
        with self.lock.read():
            return self.inner.search(collection, vector, limit, domain, exclude, ef,
                                     with_payload)

    def nearest(self, collection: str, vector: np.ndarray, limit: int, domain: str | None = None,
                exclude: Iterable[PointId] = ()) -> tuple[list[PointId], np.ndarray]:
        with self.lock.read():
            return self.inner.nearest(collection, vector, limit, domain, exclude)

    def similarity(self, collection: str, vector: np.ndarray, ids: Sequence[PointId],
                   domain: str | None = None) -> dict[PointId, float]:
        with self.lock.read():
            return self.inner.similarity(collection, vector, ids, domain)

    def build_index(self, collection: str) -> None:
        with self.lock.write():
            self.inner.build_index(collection)

    def read_info(self) -> StoreInfo | None:
        with self.lock.read():
            return self.inner.read_info()

    def write_info(self, info: StoreInfo) -> None:
        with self.lock.write():
            self.inner.write_info(info)

    def close(self) -> None:
        with self.lock.write():
            self.inner.close()


class Service:
    """What the endpoints share: the store, a retriever over it, the encoder for upserts.

    Args:
        settings: the store to open and the encoder to use.
        store: an open store to serve instead (it is closed with the service).

    Raises:
        EncoderMismatchError: ``settings.model`` was given and did not build the store.
        StoreError: the Qdrant server cannot be reached.
    """

    def __init__(self, settings: Settings, store: VectorStore | None = None):
        self.settings = settings
        self.store = LockedStore(store or open_store(settings), ReadWriteLock())
        self._write_lock = threading.Lock()  # one write at a time, as a whole
        # a tokenizer is not safe across threads: the retriever's (text queries) is used by one
        # at a time; the upsert encoder is another object, used under the write lock only
        self._encode_lock = threading.Lock()
        self._retriever_lock = threading.Lock()
        self._retriever: Retriever | None = None
        self._encoder: Encoder | None = None
        try:
            self.retriever()  # a mismatched --model fails now, not at the first request
        except StoreError as e:  # empty store or server down: serve, and say so at /ready
            log.warning("not ready yet: %s", e)
        except BaseException:
            if store is None:  # a service that failed to start leaves no store of its open
                self.store.close()
            raise

    # -- shared objects, built on first use ---------------------------------------------------
    def retriever(self) -> Retriever:
        """The retriever, once the store has items (:class:`StoreError` until then)."""
        if self._retriever is None:
            with self._retriever_lock:
                if self._retriever is None:
                    retriever = Retriever(self.settings, store=self.store)
                    retriever.warm()  # before the first request, not during it
                    self._retriever = retriever
        return self._retriever

    def encoder(self) -> Encoder:
        """The store's encoder (the settings' one for an empty store), loaded by the first
        upsert; called under the write lock only."""
        from xdretrieve.encoder import Encoder, resolve_model

        if self._encoder is None:  # only under the write lock: no race
            info = self.store.read_info()
            explicit = "model" in self.settings.model_fields_set
            ref = resolve_model(self.settings.model if explicit or info is None else info.encoder)
            settings = self.settings
            if info is not None:
                info.check_encoder(ref.name, ref.fingerprint)
                settings = settings.model_copy(update={"max_seq_length": info.max_seq_length})
            self._encoder = Encoder.from_settings(settings, ref)
        return self._encoder

    # -- what the endpoints call --------------------------------------------------------------
    def search(self, query: Query, domain: str, limit: int, explain: bool = False) -> HitsResponse:
        hits: list[Hit] = self.retriever().search(query, domain, limit)
        return HitsResponse(query=query.source, domain=domain, hits=[
            HitOut(rank=rank, item_id=h.item_id, title=h.title, score=h.score,
                   why=h.why if explain else None)
            for rank, h in enumerate(hits, start=1)])

    def text_query(self, text: str, domain: str) -> Query:
        retriever = self.retriever()
        with self._encode_lock:
            return retriever.text_query(text, domain)

    def upsert(self, request: UpsertRequest) -> UpsertResponse:
        from xdretrieve.data import Item
        from xdretrieve.indexer import upsert_items

        items = [Item(i.item_id, i.domain, i.title, i.text, i.extra) for i in request.items]
        with self._write_lock:
            encoder = self.encoder()
            info = upsert_items(items, self.settings, self.store, encoder)  # its own encoder
            self._refresh(info)
        ids = {i.item_id for i in items}
        known = encoder.trained.bias if encoder.trained is not None else None
        return UpsertResponse(upserted=len(ids), domains=info.domains,
                              new_to_model=0 if known is None else len(ids - known.keys()))

    def delete(self, request: DeleteRequest) -> DeleteResponse:
        from xdretrieve.indexer import delete_items

        with self._write_lock:
            deleted = delete_items(request.item_ids, self.store)
            info = self.store.read_info()
            if info is not None:
                self._refresh(info)
        gone = set(deleted)
        return DeleteResponse(deleted=deleted, not_found=[
            i for i in dict.fromkeys(request.item_ids) if i not in gone])

    def _refresh(self, info: StoreInfo) -> None:
        """Let the retriever see new domains and items (it reads them once, then on use)."""
        if self._retriever is not None:
            self._retriever.refresh(info)

    def ready(self) -> ReadyResponse:
        try:
            info = self.store.read_info()
            if info is None or not self.store.exists(ITEMS):
                return ReadyResponse(ready=False, items=0,
                                     reason="the store is empty: run `xdretrieve index` "
                                            "or PUT /items")
            info.check_complete(self.settings.url or self.settings.store)
            items = self.store.count(ITEMS)
        except StoreError as e:
            return ReadyResponse(ready=False, items=0, reason=str(e))
        return ReadyResponse(ready=items > 0, items=items,
                             reason=None if items else "the store has no items")

    def info(self) -> InfoResponse:
        info = self.store.read_info()
        if info is None:
            where = self.settings.url or self.settings.store
            raise StoreError(f"no xdretrieve store at {where}: run `xdretrieve index` first")
        points = {c: self.store.count(c) for c in (ITEMS, USERS) if self.store.exists(c)}
        trained = info.extra.get("trained")
        return InfoResponse(**info.summary(), points=points,
                            model=model_summary(Path(trained)) if trained else None)

    def close(self) -> None:
        if self._retriever is not None:
            self._retriever.close()  # does not close a store it was given
        self.store.close()


def create_app(settings: Settings | None = None, *, store: VectorStore | None = None) -> FastAPI:
    """The ASGI app over a store.

    Args:
        settings: which store and encoder (default: ``Settings()``: env ``XDR_...``,
            ``xdretrieve.toml``, defaults).
        store: an open store to serve instead of the one ``settings`` names.

    Raises:
        EncoderMismatchError: ``settings.model`` was given and did not build the store.

    Example:
        >>> app = create_app(Settings(store="shop.xdr"))                   # doctest: +SKIP
        >>> uvicorn.run(app, port=8000)
    """
    service = Service(settings or Settings(), store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        service.close()

    app = FastAPI(title="xdretrieve", version=__version__, lifespan=lifespan,
                  description="Cross-domain retrieval for cold-start users: recommend items of "
                              "one domain to a user known from another.")
    app.state.service = service

    @app.exception_handler(XDRetrieveError)
    async def library_error(request: Request, exc: XDRetrieveError) -> JSONResponse:
        status = next(code for cls, code in _STATUS if isinstance(exc, cls))
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 echoes each wrong value: a 1,000,000-character text whole, and a
        # NaN, which it then cannot write as JSON (a 500 instead of the 422)
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(
            [{k: v for k, v in err.items() if k != "input"} for err in exc.errors()])})

    @app.post("/recommend/user", response_model=HitsResponse, responses=_ERRORS,
              tags=["recommend"])
    def recommend_user(body: UserRequest) -> HitsResponse:
        """Items of `domain` for a stored user, from their history in the other domains."""
        query = service.retriever().user_query(body.user_id, body.domain)
        return service.search(query, body.domain, body.limit, body.explain)

    @app.post("/recommend/history", response_model=HitsResponse, responses=_ERRORS,
              tags=["recommend"])
    def recommend_history(body: HistoryRequest) -> HitsResponse:
        """Items of `domain` for a cold-start user given by item ids, oldest first."""
        query = service.retriever().history_query(body.item_ids, body.domain)
        return service.search(query, body.domain, body.limit, body.explain)

    @app.post("/search/text", response_model=HitsResponse, responses=_ERRORS,
              tags=["recommend"])
    def search_text(body: TextRequest) -> HitsResponse:
        """Items of `domain` nearest to a free-text query."""
        return service.search(service.text_query(body.text, body.domain), body.domain,
                              body.limit)

    @app.put("/items", response_model=UpsertResponse, tags=["items"], responses={
        400: _ERRORS[400], 503: _ERRORS[503],
        409: {"model": ErrorResponse, "description": "The store's encoder cannot be loaded."}})
    def put_items(body: UpsertRequest) -> UpsertResponse:
        """Embed items with the store's encoder and insert or overwrite them. User profiles are
        refreshed by the next `xdretrieve index`."""
        return service.upsert(body)

    @app.delete("/items", response_model=DeleteResponse, tags=["items"],
                responses={400: _ERRORS[400], 503: _ERRORS[503]})
    def delete_items(body: DeleteRequest) -> DeleteResponse:
        """Delete items by id; ids the store does not have are listed, not an error."""
        return service.delete(body)

    @app.get("/health", response_model=HealthResponse, tags=["operations"])
    def health() -> HealthResponse:
        """Liveness: the process answers."""
        return HealthResponse(version=__version__)

    @app.get("/ready", response_model=ReadyResponse, tags=["operations"], responses={
        503: {"model": ReadyResponse, "description": "Not ready: no store or no items."}})
    def ready() -> Any:
        """Readiness: the store is open and holds items."""
        state = service.ready()
        return state if state.ready else JSONResponse(status_code=503,
                                                      content=state.model_dump())

    @app.get("/info", response_model=InfoResponse, tags=["operations"],
             responses={503: _ERRORS[503]})
    def info() -> InfoResponse:
        """What built the store (encoder, dimension, domains, version, times) and its counts."""
        return service.info()

    return app
