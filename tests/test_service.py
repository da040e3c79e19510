"""The HTTP service, driven over a real socket: uvicorn on a free loopback port in a thread,
httpx as the client, the packaged encoder, paired domains whose answer is known (a reader of
book i likes movie i)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from tests.conftest import THEMES  # noqa: E402
from xdretrieve.config import Settings  # noqa: E402
from xdretrieve.data import Dataset  # noqa: E402
from xdretrieve.errors import EncoderMismatchError  # noqa: E402
from xdretrieve.indexer import index_dataset  # noqa: E402


class LiveServer:
    """uvicorn serving an app on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def _index_paired(paired_dir: Path, directory: Path) -> Settings:
    """The paired fixture with test users cold-start in movies (only their books indexed)."""
    settings = Settings(store=directory / "store", cache_dir=directory / "cache")
    ds = Dataset.from_dir(paired_dir)
    inter = [x for x in ds.interactions
             if not (ds.splits[x.user_id] == "test" and x.domain == "movies")]
    index_dataset(Dataset(ds.items, inter, ds.splits), settings)
    return settings


@pytest.fixture(scope="module")
def served(paired_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from xdretrieve.service import create_app

    settings = _index_paired(paired_dir, tmp_path_factory.mktemp("service"))
    with LiveServer(create_app(settings)) as live:
        yield live.url


@pytest.fixture
def client(served: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served, timeout=60) as c:
        yield c


def test_an_engine_out_of_disk_space_is_a_503_that_says_so(client: httpx.Client,
                                                           monkeypatch) -> None:
    """The engine's own out-of-space error (building the index needs room of its own) was a
    bare Exception: a 500 here, a traceback from the CLI. It is the store's error now."""
    from xdretrieve.store import edge

    def out_of_space(*_args: object, **_kwargs: object) -> None:
        raise Exception("Service runtime error: IO Error: No space left on device (os error 28)")

    monkeypatch.setattr(edge, "write_points", out_of_space)
    r = client.put("/items", json={"items": [{"item_id": "full-1", "domain": "movies",
                                              "title": "A film on a full disk"}]})
    assert r.status_code == 503 and r.json()["detail"].startswith("out of disk space (")
    monkeypatch.undo()
    # and a disk without room is refused before the engine writes (the service's store held
    # its writes under a lock around the engine's batches, past the store's own check)
    from collections import namedtuple

    full = namedtuple("usage", "total used free")(1 << 30, 1 << 30, 0)
    monkeypatch.setattr(edge.shutil, "disk_usage", lambda path: full)
    r = client.put("/items", json={"items": [{"item_id": "full-1", "domain": "movies",
                                              "title": "A film on a full disk"}]})
    assert r.status_code == 503 and "not enough disk space for the store" in r.json()["detail"]
    monkeypatch.undo()
    r = client.post("/recommend/history", json={"item_ids": ["book-0"], "domain": "movies"})
    assert _top(r)[0] == "movie-0"  # the store answers as before


def _top(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [h["item_id"] for h in response.json()["hits"]]


# -- answers ------------------------------------------------------------------------------------
def test_recommendations_are_the_known_right_answers(client: httpx.Client) -> None:
    for t in range(len(THEMES)):
        r = client.post("/recommend/user", json={"user_id": f"u{t}-0", "domain": "movies",
                                                 "limit": 3})
        assert _top(r)[0] == f"movie-{t}"
        body = r.json()
        assert body["domain"] == "movies" and body["query"].startswith(f"user u{t}-0")
        assert [h["rank"] for h in body["hits"]] == [1, 2, 3]
        assert body["hits"][0]["title"] == f"{THEMES[t].capitalize()}: the movie"
        r = client.post("/recommend/user", json={"user_id": f"u{t}-0", "domain": "movies"})
        assert len(_top(r)) == 10  # the default limit, as on every query endpoint
        r = client.post("/recommend/history", json={"item_ids": [f"book-{t}"], "domain": "movies"})
        assert _top(r)[0] == f"movie-{t}"
        assert len(r.json()["hits"]) == 10  # the default limit (12 movies exist)
    r = client.post("/recommend/history", json={"item_ids": [], "domain": "movies", "limit": 3})
    assert r.status_code == 200 and r.json()["query"].startswith("no history")
    assert len(_top(r)) == 3  # the most popular movies
    r = client.post("/search/text", json={"text": "a film about volcanoes", "domain": "movies",
                                          "limit": 1})
    assert _top(r) == ["movie-10"]
    scores = [h["score"] for h in client.post("/search/text", json={
        "text": "jazz", "domain": "books", "limit": 5}).json()["hits"]]
    assert scores == sorted(scores, reverse=True)
    r = client.post("/search/text", json={"text": "jazz", "domain": "books"})
    assert len(_top(r)) == 10  # the default limit (12 books exist)


def test_operations_endpoints(client: httpx.Client) -> None:
    from xdretrieve import __version__

    assert client.get("/health").json() == {"status": "ok", "version": __version__}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["items"] >= 2 * len(THEMES)
    info = client.get("/info").json()
    assert info["encoder"] == "all-MiniLM-L6-v2" and info["dim"] == 384
    assert info["model"] is None  # a pretrained encoder: nothing learned to summarise
    assert {"books", "movies"} <= set(info["domains"])
    assert info["points"]["users"] == 2 * 3 * len(THEMES) - len(THEMES)  # test users: books only
    schema = client.get("/openapi.json").json()
    assert {"/recommend/user", "/recommend/history", "/search/text", "/items", "/health",
            "/ready", "/info"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


# -- bad requests: 404 with the library's message, 422 from validation, never a 500 ---------------
@pytest.mark.parametrize("path, body, message", [
    ("/recommend/user", {"user_id": "ghost", "domain": "movies"}, "unknown user 'ghost'"),
    ("/recommend/user", {"user_id": "u1-0", "domain": "music"},
     "unknown domain 'music'; this store has: books, movies"),
    ("/recommend/history", {"item_ids": ["book-1", "book-99"], "domain": "movies"},
     "unknown item(s): book-99"),
    ("/search/text", {"text": "jazz", "domain": "music"}, "unknown domain 'music'"),
])
def test_unknowns_are_404_with_the_message(client: httpx.Client, path: str, body: dict,
                                           message: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 404
    assert message in r.json()["detail"]


@pytest.mark.parametrize("path, body", [
    ("/recommend/user", {"user_id": "u1-0", "domain": "movies", "limit": 0}),
    ("/recommend/user", {"user_id": "u1-0", "domain": "movies", "limit": 1001}),
    ("/recommend/user", {"user_id": "u1-0", "domain": "movies", "limit": "ten"}),
    ("/recommend/user", {"user_id": "u1-0"}),
    ("/recommend/user", {"user_id": "  ", "domain": "movies"}),
    ("/recommend/user", {"user_id": "u1-0", "domain": "movies", "k": 3}),
    ("/recommend/history", {"item_ids": "book-1", "domain": "movies"}),
    ("/recommend/history", {"item_ids": ["  "], "domain": "movies"}),  # an id, not a 404
    ("/search/text", {"text": "", "domain": "movies"}),
    ("/search/text", None),
    ("/items", {"items": [{"item_id": "x", "domain": "movies", "title": "t",
                           "extra": {"text_hash": 1}}]}),  # the index writes its own there
    ("/items", {"items": [{"item_id": "x", "domain": "movies", "title": "t",
                           "extra": {"fields_hash": 1}}]}),  # and there
    # refused in files too: '->' joins a direction's domains (before: stored as a domain)
    ("/items", {"items": [{"item_id": "x", "domain": "books->movies", "title": "t"}]}),
    ("/items", {"items": []}),  # an empty write is a client's mistake, not "0 upserted"
    ("/items", {"items": [{"item_id": "x", "domain": "movies", "title": "t",
                           "extra": {f"f{k}": k for k in range(101)}}]}),  # at most 100 fields
    ("/recommend/history", {"item_ids": ["book-1"] * 1001, "domain": "movies"}),  # the cap
    ("/items", {"items": [{"item_id": "x", "domain": "movies", "title": "t"}] * 1001}),
    ("/items", {"items": [{"item_id": "x", "domain": "movies", "title": "  "}]}),  # no title
    ("/items", {"items": [{"item_id": "x", "domain": "movies", "title": "t",
                           "extra": {"": 1}}]}),  # a field needs a name
    ("/items", {"items": [{"item_id": "x", "domain": "movies", "title": "t",
                           "extra": {"f" * 129: 1}}]}),  # of at most 128 characters
])
def test_invalid_bodies_are_422(client: httpx.Client, path: str, body: dict | None) -> None:
    r = client.request("PUT" if path == "/items" else "POST", path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_malformed_and_misrouted_requests_are_4xx(client: httpx.Client) -> None:
    r = client.post("/recommend/user", content=b"{not json",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert client.request("DELETE", "/items", json={"item_ids": []}).status_code == 422
    assert client.request("DELETE", "/items", json={"item_ids": ["x"] * 1001}
                          ).status_code == 422  # at most 1000 a request
    assert client.put("/items", json={"items": [{"item_id": "x", "domain": "movies"}]}
                      ).status_code == 422  # no title
    assert client.put("/items", json={"items": [{"item_id": "x", "domain": "movies", "title": "t",
                                                 "extra": {"n": {"nested": 1}}}]}
                      ).status_code == 422  # payload values are flat scalars
    assert client.get("/recommend/user").status_code == 405
    assert client.get("/nowhere").status_code == 404
    # a NaN (Python's json reads it) was echoed back in FastAPI's 422, which then failed to
    # write it: a 500; and a wrong value is not echoed (a 1,000,000-character text was, whole)
    r = client.put("/items", content=b'{"items": [{"item_id": "x", "domain": "movies", '
                                     b'"title": "t", "extra": {"price": NaN}}]}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:5] == [
        "body", "items", 0, "extra", "price"]
    r = client.post("/search/text", json={"text": "jazz " * 200_000, "domain": "movies"})
    assert r.status_code == 422 and len(r.content) < 1000
    assert r.json()["detail"] == [{"type": "string_too_long", "loc": ["body", "text"],
                                   "msg": "String should have at most 10000 characters",
                                   "ctx": {"max_length": 10000}}]


def test_explain_says_why_only_when_asked_on_both_recommend_endpoints(
        client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """`explain` on /recommend/user and /recommend/history returns each hit's `why`, and
    leaving it out returns none (a re-ranker that ordered the answer stands in here: the
    served store has none)."""
    from types import SimpleNamespace

    import numpy as np

    from xdretrieve.retriever import Retriever

    why = {"features": {"model_score": 1.5}, "standardised": {"model_score": 0.5},
           "contributions": {"model_score": 0.25}}
    search = Retriever.search

    def reranked(self, *args: object, **kwargs: object) -> list:
        hits = search(self, *args, **kwargs)
        for h in hits:
            h.features, h.reranker = np.zeros(1), SimpleNamespace(explain=lambda row: why)
        return hits

    monkeypatch.setattr(Retriever, "search", reranked)
    for path, body in (("/recommend/user", {"user_id": "u2-0", "domain": "movies", "limit": 2}),
                       ("/recommend/history", {"item_ids": ["book-2"], "domain": "movies",
                                               "limit": 2})):
        plain = client.post(path, json=body).json()["hits"]
        told = client.post(path, json={**body, "explain": True}).json()["hits"]
        assert [h["why"] for h in plain] == [None, None], path
        assert [h["why"] for h in told] == [why, why], path
        assert [h["item_id"] for h in told] == [h["item_id"] for h in plain]


def test_requests_at_the_documented_bounds_are_answered(client: httpx.Client) -> None:
    """The limits the schema documents are the limits: a limit of 1000, 1000 ids to delete,
    an id of 512 characters, a title of 1000 and a text of 20,000 are served, not refused with
    a 422 (one over each is refused: test_invalid_bodies_are_422)."""
    r = client.post("/recommend/history", json={"item_ids": ["book-1"], "domain": "movies",
                                                "limit": 1000})
    assert len(_top(r)) == len(THEMES)  # every movie
    ids = [f"gone-{k}" for k in range(999)] + ["x" * 512]
    r = client.request("DELETE", "/items", json={"item_ids": ids})
    assert r.status_code == 200, r.text
    assert r.json() == {"deleted": [], "not_found": ids}
    long = {"item_id": "y" * 512, "domain": "movies", "title": "T" * 1000,
            "text": ("a long film about nothing " * 800)[:20_000]}
    r = client.put("/items", json={"items": [long]})
    assert r.status_code == 200, r.text
    r = client.request("DELETE", "/items", json={"item_ids": [long["item_id"]]})
    assert r.json()["deleted"] == [long["item_id"]]


# -- writes ---------------------------------------------------------------------------------------
def test_upsert_then_query_then_delete(client: httpx.Client) -> None:
    knitting = {"item_id": "movie-knit", "domain": "movies", "title": "Knitting: the movie",
                "text": "a film about knitting", "extra": {"year": 2024}}
    r = client.put("/items", json={"items": [knitting, knitting]})  # once: items, not rows
    assert r.status_code == 200, r.text
    assert r.json() == {"upserted": 1, "domains": ["books", "movies"], "new_to_model": 0}
    r = client.post("/search/text", json={"text": "knitting", "domain": "movies", "limit": 1})
    assert _top(r) == ["movie-knit"]
    r = client.post("/recommend/history", json={"item_ids": ["movie-knit"], "domain": "movies"})
    assert "movie-knit" not in _top(r)  # the history itself is excluded

    # a new domain becomes queryable at once
    game = {"item_id": "game-1", "domain": "games", "title": "Dragon quest", "text": "dragons"}
    assert client.put("/items", json={"items": [game]}).json()["domains"] == [
        "books", "games", "movies"]
    r = client.post("/recommend/history", json={"item_ids": ["book-0"], "domain": "games"})
    assert _top(r) == ["game-1"]
    assert "games" in client.get("/info").json()["domains"]
    # an item written again with another domain moves there
    moved = {**knitting, "domain": "games"}
    assert client.put("/items", json={"items": [moved]}).status_code == 200
    r = client.post("/search/text", json={"text": "knitting", "domain": "movies", "limit": 20})
    assert "movie-knit" not in _top(r)
    r = client.post("/search/text", json={"text": "knitting", "domain": "games", "limit": 1})
    assert _top(r) == ["movie-knit"]

    r = client.request("DELETE", "/items", json={"item_ids": ["movie-knit", "game-1", "nope",
                                                              "nope", "movie-knit"]})
    assert r.status_code == 200  # each id said once
    assert r.json() == {"deleted": ["movie-knit", "game-1"], "not_found": ["nope"]}
    r = client.post("/search/text", json={"text": "knitting", "domain": "movies", "limit": 20})
    assert "movie-knit" not in _top(r)
    r = client.post("/recommend/history", json={"item_ids": ["movie-knit"], "domain": "books"})
    assert r.status_code == 404


def test_concurrent_queries_during_upserts_never_fail(client: httpx.Client, served: str) -> None:
    stop = threading.Event()
    statuses: list[int] = []
    answers_ok: list[bool] = []

    def query_loop(t: int) -> None:
        with httpx.Client(base_url=served, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/recommend/history", json={"item_ids": [f"book-{t}"],
                                                       "domain": "movies", "limit": 3})
                statuses.append(r.status_code)
                answers_ok.append(r.status_code == 200 and
                                  r.json()["hits"][0]["item_id"] == f"movie-{t}")
                r = c.post("/recommend/user", json={"user_id": f"u{t}-0", "domain": "movies"})
                statuses.append(r.status_code)
                r = c.post("/search/text", json={"text": f"a film about {THEMES[t]}",
                                                 "domain": "movies", "limit": 1})
                answers_ok.append(r.status_code == 200 and
                                  r.json()["hits"][0]["item_id"] == f"movie-{t}")

    batches = [[{"item_id": f"extra-{b}-{i}", "domain": "movies", "title": f"Filler {b}.{i}",
                 "text": "a film about nothing in particular"} for i in range(5)]
               for b in range(6)]
    with ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(query_loop, t) for t in (0, 3, 7)]
        try:
            for batch in batches:
                r = client.put("/items", json={"items": batch})
                assert r.status_code == 200, r.text
        finally:
            stop.set()
        for f in readers:
            f.result()
    assert statuses and set(statuses) == {200}
    assert all(answers_ok)
    r = client.request("DELETE", "/items", json={
        "item_ids": [item["item_id"] for batch in batches for item in batch]})
    assert len(r.json()["deleted"]) == 30


def test_read_write_lock_excludes_writers_from_readers() -> None:
    from xdretrieve.service import ReadWriteLock

    lock, events = ReadWriteLock(), []
    reading, release = threading.Event(), threading.Event()

    def reader() -> None:
        with lock.read():
            events.append("read")
            reading.set()
            release.wait(5)
            events.append("read done")

    def writer() -> None:
        with lock.write():
            events.append("write")

    # daemons: a lock that never lets a thread go fails the test instead of hanging the run
    threads = [threading.Thread(target=reader, daemon=True)]
    threads[0].start()
    reading.wait(5)
    with lock.read():  # readers share the lock
        events.append("second read")
    threads.append(threading.Thread(target=writer, daemon=True))
    threads[1].start()
    time.sleep(0.1)
    assert "write" not in events  # waits for the first reader
    release.set()
    for t in threads:
        t.join(5)
    assert events == ["read", "second read", "read done", "write"]


def test_the_locked_store_answers_as_the_store_it_wraps(tmp_path: Path) -> None:
    """The service's store holds a lock around each call and passes every argument on: the
    history left out and the domain kept in the nearest-neighbour search a trained model's
    query makes (before it, the service would recommend the items a user already has), the
    cosines of given points of one domain, each domain's ids (a trained model's bias scan), a
    read without payloads, and a drop."""
    import numpy as np

    from xdretrieve.service import LockedStore, ReadWriteLock
    from xdretrieve.store import ITEMS, open_store

    vectors = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    inner = open_store(Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache"))
    inner.create(ITEMS, 16, ("domain",))
    inner.upsert(ITEMS, list(range(8)), vectors,
                 [{"item_id": f"i{k}", "domain": "ab"[k % 2]} for k in range(8)])
    store = LockedStore(inner, ReadWriteLock())
    try:
        ids, cosines = store.nearest(ITEMS, vectors[0], 8, domain="a", exclude=[0, 2])
        assert sorted(ids) == [4, 6] and cosines.tolist() == sorted(cosines, reverse=True)
        hits = store.search(ITEMS, vectors[0], 8, domain="a", exclude=[0, 2])
        assert [h.id for h in hits] == ids
        found = store.similarity(ITEMS, vectors[0], [0, 1, 2], domain="a")
        assert sorted(found) == [0, 2] and found[0] == pytest.approx(1, abs=1e-5)
        by_domain = store.ids_by_domain(ITEMS)
        assert {d: sorted(ids) for d, ids in by_domain.items()} == {
            "a": [0, 2, 4, 6], "b": [1, 3, 5, 7]}
        (bare,) = store.retrieve(ITEMS, [1], with_vectors=True, with_payload=False)
        assert bare.id == 1 and not bare.payload and bare.vector.shape == (16,)
        store.drop(ITEMS)
        assert not inner.exists(ITEMS)
    finally:
        store.close()


def test_the_service_s_store_changes_alone_and_reads_together(tmp_path: Path) -> None:
    """Every call of the service's store that changes it (points, collections, the build info,
    closing) holds the lock as a writer, alone; every read holds it as a reader, beside other
    reads: an upsert or DELETE taken as a read would run while a query reads the same shard."""
    from contextlib import contextmanager

    import numpy as np

    from xdretrieve.service import LockedStore, ReadWriteLock
    from xdretrieve.store import ITEMS, StoreInfo, open_store

    class Recording(ReadWriteLock):
        def __init__(self) -> None:
            super().__init__()
            self.modes: list[str] = []

        @contextmanager
        def read(self):
            self.modes.append("read")
            with super().read():
                yield

        @contextmanager
        def write(self):
            self.modes.append("write")
            with super().write():
                yield

    lock = Recording()
    inner = open_store(Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache"))
    store = LockedStore(inner, lock)
    v = np.eye(4, dtype=np.float32)
    payloads = [{"item_id": f"i{k}", "domain": "a"} for k in range(4)]
    calls = {
        "create": lambda: store.create(ITEMS, 4, ("domain",)),
        "upsert": lambda: store.upsert(ITEMS, [0, 1, 2, 3], v, payloads),
        "_upsert": lambda: store._upsert(ITEMS, [0], v[:1], payloads[:1]),
        "build_index": lambda: store.build_index(ITEMS),
        "exists": lambda: store.exists(ITEMS),
        "retrieve": lambda: store.retrieve(ITEMS, [0]),
        "scroll": lambda: list(store.scroll(ITEMS)),
        "ids_by_domain": lambda: store.ids_by_domain(ITEMS),
        "count": lambda: store.count(ITEMS),
        "search": lambda: store.search(ITEMS, v[0], 2),
        "nearest": lambda: store.nearest(ITEMS, v[0], 2),
        "similarity": lambda: store.similarity(ITEMS, v[0], [1]),
        "write_info": lambda: store.write_info(StoreInfo("enc", "abc", 4, "0", ["a"], "{title}",
                                                         64, "mean")),
        "read_info": lambda: store.read_info(),
        "delete": lambda: store.delete(ITEMS, [3]),
        "drop": lambda: store.drop(ITEMS),
        "close": lambda: store.close(),
    }
    changes = {"create", "upsert", "_upsert", "build_index", "write_info", "delete", "drop",
               "close"}
    for name, call in calls.items():
        lock.modes.clear()
        call()
        assert lock.modes == ["write" if name in changes else "read"], name


def test_a_waiting_writer_holds_back_new_readers_and_writers_take_turns() -> None:
    """A stream of searches must not starve an upsert: a reader that comes while a writer
    waits goes after it. And two writes never run at once (they read and rewrite the store's
    build info)."""
    from xdretrieve.service import ReadWriteLock

    lock, events = ReadWriteLock(), []
    reading, release = threading.Event(), threading.Event()

    def first_reader() -> None:
        with lock.read():
            reading.set()
            release.wait(5)
            events.append("read 1 done")

    def writer(name: str) -> None:
        with lock.write():
            events.append(name)

    def late_reader() -> None:
        with lock.read():
            events.append("read 2")

    # daemons: a lock that never lets a thread go fails the test instead of hanging the run
    threads = [threading.Thread(target=first_reader, daemon=True)]
    threads[0].start()
    reading.wait(5)
    threads.append(threading.Thread(target=writer, args=("write",), daemon=True))
    threads[1].start()
    deadline = time.monotonic() + 5
    while not lock._writers_waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    threads.append(threading.Thread(target=late_reader, daemon=True))
    threads[2].start()
    time.sleep(0.1)
    assert events == []  # the late reader waits behind the waiting writer
    release.set()
    for t in threads:
        t.join(5)
    assert events == ["read 1 done", "write", "read 2"]

    events.clear()
    writing, release = threading.Event(), threading.Event()

    def first_writer() -> None:
        with lock.write():
            events.append("write 1")
            writing.set()
            release.wait(5)
            events.append("write 1 done")

    threads = [threading.Thread(target=first_writer, daemon=True)]
    threads[0].start()
    writing.wait(5)
    threads.append(threading.Thread(target=writer, args=("write 2",), daemon=True))
    threads[1].start()
    time.sleep(0.1)
    assert events == ["write 1"]  # the second write waits for the first
    release.set()
    for t in threads:
        t.join(5)
    assert events == ["write 1", "write 1 done", "write 2"]


# -- an empty store, the CLI command, the missing extra --------------------------------------------
def test_an_empty_store_is_alive_but_not_ready(tmp_path: Path) -> None:
    from xdretrieve.service import create_app

    settings = Settings(store=tmp_path / "empty", cache_dir=tmp_path / "cache")
    with LiveServer(create_app(settings)) as live, httpx.Client(base_url=live.url) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert "xdretrieve index" in r.json()["reason"]
        r = c.post("/recommend/user", json={"user_id": "u1", "domain": "movies"})
        assert r.status_code == 503 and "run `xdretrieve index` first" in r.json()["detail"]
        r = c.get("/info")
        assert r.status_code == 503
        assert r.json()["detail"].startswith(f"no xdretrieve store at {tmp_path / 'empty'}: ")
    # a server's store is named by its URL (not by the --store it does not use)
    server = Settings(url=":memory:", cache_dir=tmp_path / "cache")
    with LiveServer(create_app(server)) as live, httpx.Client(base_url=live.url) as c:
        r = c.get("/info")
        assert r.status_code == 503 and r.json()["detail"].startswith(
            "no xdretrieve store at :memory:: ")


def test_a_store_that_lost_its_items_is_not_ready_and_says_to_index(
        paired_dir: Path, tiny_model: str, tmp_path: Path) -> None:
    """Build info without an items collection (its folder deleted, or the collection dropped
    on a server) is an empty store: not ready, with the way out, not the engine's words."""
    import shutil

    from xdretrieve.service import create_app

    settings = Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache", model=tiny_model)
    index_dataset(Dataset.from_dir(paired_dir), settings)
    shutil.rmtree(tmp_path / "store" / "items")
    with LiveServer(create_app(settings)) as live, httpx.Client(base_url=live.url) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["items"] == 0
        assert r.json()["reason"] == "the store is empty: run `xdretrieve index` or PUT /items"


def test_a_store_an_interrupted_index_left_incomplete_is_not_ready(
        paired_dir: Path, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xdretrieve import indexer
    from xdretrieve.service import create_app

    def stop(*_args: object) -> None:
        raise KeyboardInterrupt

    settings = Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache", model=tiny_model)
    with monkeypatch.context() as m:
        m.setattr(indexer, "_index_users", stop)  # the items are written by then
        with pytest.raises(KeyboardInterrupt):
            index_dataset(Dataset.from_dir(paired_dir), settings)
    with LiveServer(create_app(settings)) as live, httpx.Client(base_url=live.url) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and "not complete" in r.json()["reason"]
        r = c.post("/recommend/user", json={"user_id": "u0-0", "domain": "movies"})
        assert r.status_code == 503 and "run it again" in r.json()["detail"]
    # started with a --model other than the store's (not refused at start: the store is not
    # complete), a write is refused with a 409 that says so, not taken for a bad request
    other = Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache",
                     model="all-MiniLM-L6-v2")
    with LiveServer(create_app(other)) as live, httpx.Client(base_url=live.url) as c:
        r = c.put("/items", json={"items": [{"item_id": "movie-x", "domain": "movies",
                                             "title": "A film"}]})
        assert r.status_code == 409 and "built by encoder" in r.json()["detail"]


def test_a_store_made_by_put_items_alone_is_ready_and_described(tiny_model: str,
                                                                 tmp_path: Path) -> None:
    """Items written through the service to an empty store (no `index`: no users collection)
    make it ready, and GET /info counts what it has instead of failing on what it lacks."""
    from xdretrieve.service import create_app

    settings = Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache", model=tiny_model)
    with LiveServer(create_app(settings)) as live, httpx.Client(base_url=live.url) as c:
        r = c.put("/items", json={"items": [{"item_id": "movie-1", "domain": "movies",
                                             "title": "A film"}]})
        assert r.status_code == 200, r.text
        assert c.get("/ready").json() == {"ready": True, "items": 1, "reason": None}
        r = c.get("/info")
        assert r.status_code == 200, r.text
        assert r.json()["points"] == {"items": 1} and r.json()["domains"] == ["movies"]


def test_put_items_embeds_as_the_store_was_built(paired_dir: Path, tiny_model: str,
                                                 tmp_path: Path, monkeypatch) -> None:
    """A service started without a model serves PUT /items with the encoder and the token limit
    that built the store (here a local model cutting texts at 16 tokens), not with the
    defaults: an item written again gets the very vector `index` gave it. A store whose items
    were all deleted is alive but not ready."""
    import numpy as np

    from xdretrieve.data import Item
    from xdretrieve.service import create_app
    from xdretrieve.store import ITEMS, item_point_id

    ds = Dataset.from_dir(paired_dir)
    words = " ".join(f"word{k}" for k in range(40))  # far more than 16 tokens
    items = {i.item_id: Item(i.item_id, i.domain, i.title, f"{i.text} {words}")
             for i in ds.items.values()}
    built = Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache", model=tiny_model,
                     max_seq_length=16)
    index_dataset(Dataset(items, ds.interactions, ds.splits), built)
    app = create_app(Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache"))
    store = app.state.service.store

    def stored(item_id: str):
        (point,) = store.retrieve(ITEMS, [item_point_id(item_id)], with_vectors=True)
        return point

    before = stored("book-3").vector
    book = items["book-3"]
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.put("/items", json={"items": [{"item_id": book.item_id, "domain": book.domain,
                                             "title": book.title, "text": book.text,
                                             "extra": {"n": 2**70, "m": -3, "on": True,
                                                       "price": 9.5, "note": None}}]})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(stored("book-3").vector, before, atol=1e-6)
        # an integer beyond Qdrant's 64 bits keeps its digits, as a file's does (before: a
        # float, 1.1805916207174113e+21)
        payload = stored("book-3").payload
        assert (payload["n"], payload["m"]) == (str(2**70), -3)
        assert payload["on"] is True  # a flag stays a flag (not the integer 1)
        assert payload["price"] == 9.5 and payload["note"] is None  # as a file's row keeps them

        r = c.request("DELETE", "/items", json={"item_ids": list(items)})
        assert r.status_code == 200 and r.json()["not_found"] == []
        r = c.get("/ready")
        assert r.status_code == 503
        assert r.json() == {"ready": False, "items": 0, "reason": "the store has no items"}
    # a --model that did not build the store is refused as the service starts, not at its
    # first request
    from xdretrieve import service
    from xdretrieve.errors import StoreError
    from xdretrieve.store import open_store

    opened = []
    monkeypatch.setattr(service, "open_store",
                        lambda settings: opened.append(open_store(settings)) or opened[-1])
    with pytest.raises(EncoderMismatchError, match="built by encoder"):
        create_app(Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache",
                            model="all-MiniLM-L6-v2"))
    # and closes the store it opened (an open embedded store holds its files and memory)
    (store,) = opened
    with pytest.raises(StoreError, match="closed"):
        store.count(ITEMS)
    # but a store it was given is the caller's: left open for them
    given = open_store(Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache"))
    with pytest.raises(EncoderMismatchError, match="built by encoder"):
        create_app(Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache",
                            model="all-MiniLM-L6-v2"), store=given)
    assert given.count(ITEMS) == 0  # every item was deleted above
    given.close()


def test_serve_help_and_light_import() -> None:
    from click.testing import CliRunner

    from xdretrieve.serve_cli import serve

    result = CliRunner().invoke(serve, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--store", "--url", "--model"):
        assert option in result.output
    # -h too, on its own as under `xdretrieve` (click keeps the help option of the first run:
    # without the group's settings of its own, `xdretrieve serve -h` then failed in-process)
    assert CliRunner().invoke(serve, ["-h"]).output == result.output
    from xdretrieve.cli import main
    assert CliRunner().invoke(main, ["serve", "-h"]).exit_code == 0
    code = ("import sys, xdretrieve.serve_cli; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_serve_command_runs_uvicorn(tmp_path: Path) -> None:
    """`serve` in its own process, as a user starts it (an empty store: alive, not ready)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "from xdretrieve.serve_cli import serve; serve()"
    server = subprocess.Popen(
        [sys.executable, "-c", code, "--store", str(tmp_path / "store"), "--port", str(port),
         "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve did not answer within 60 s"
                time.sleep(0.1)
        assert r.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 503
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert f"on http://127.0.0.1:{port}" in err


def test_serve_hands_uvicorn_its_options_and_the_model_to_the_service(
        tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented defaults (the loopback interface only, port 8000, level info, one log
    line per request) and each option as given reach uvicorn, and --model reaches the
    service (before the first request: a mismatch fails at start)."""
    from click.testing import CliRunner

    from xdretrieve.serve_cli import serve

    runs: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: runs.append((app, options)))
    store = str(tmp_path / "store")
    result = CliRunner().invoke(serve, ["--store", store])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(serve, ["--store", store, "--host", "0.0.0.0", "--port", "9001",
                                        "--log-level", "warning", "--no-access-log",
                                        "--model", tiny_model])
    assert result.exit_code == 0, result.output
    for app, _ in runs:
        app.state.service.close()
    assert [options for _, options in runs] == [
        {"host": "127.0.0.1", "port": 8000, "log_level": "info", "access_log": True},
        {"host": "0.0.0.0", "port": 9001, "log_level": "warning", "access_log": False}]
    assert runs[1][0].state.service.settings.model == tiny_model
    # --url serves the server's store, and says so (not the --store it does not use)
    runs.clear()
    result = CliRunner().invoke(serve, ["--store", store, "--url", ":memory:"])
    assert result.exit_code == 0, result.output
    ((app, _),) = runs
    app.state.service.close()
    assert app.state.service.settings.url == ":memory:"
    assert "serving :memory: on http://127.0.0.1:8000" in result.output
    # a port that is not one is refused by the option, not by uvicorn's traceback
    result = CliRunner().invoke(serve, ["--store", store, "--port", "65536"])
    assert result.exit_code == 2 and "65536 is not in the range" in result.output
    assert len(runs) == 1


def test_a_failing_command_is_one_line_naming_both_paths_and_a_closed_pipe_stays_quiet() -> None:
    """How `serve` and every other command fail (cli_checks.fail_cleanly): an OS error on two
    paths (a rename, a copy) names both; a reader that went away (`| head`) is left to click,
    which ends quietly, not turned into an 'Error: Broken pipe' and exit code 1."""
    import errno

    import click

    from xdretrieve.cli_checks import fail_cleanly

    @fail_cleanly
    def move() -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link", "/a/model.tmp", None,
                      "/b/model")

    with pytest.raises(click.ClickException) as failed:
        move()
    assert failed.value.message == "/a/model.tmp -> /b/model: Invalid cross-device link"

    @fail_cleanly
    def print_to_a_closed_pipe() -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        print_to_a_closed_pipe()


def test_missing_fastapi_names_the_install_command() -> None:
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from xdretrieve.errors import MissingDependencyError\n"
            "try:\n    import xdretrieve.service\n"
            "except MissingDependencyError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    # xdretrieve is not on PyPI: the command must not send pip there for it
    assert "pip install 'fastapi>=0.115' 'uvicorn>=0.30'" in done.stdout
    assert "xdretrieve[serve]" not in done.stdout


# -- property-based: every operation of the OpenAPI schema, no 5xx -------------------------------
def test_openapi_schema_fuzzed_without_server_errors(paired_dir: Path,
                                                     tmp_path_factory: pytest.TempPathFactory
                                                     ) -> None:
    """schemathesis draws bodies from the schema (valid ones, and invalid ones for operations
    that take a body) for every operation; the answer must be documented and never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    from xdretrieve.service import create_app

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    store_settings = _index_paired(paired_dir, tmp_path_factory.mktemp("fuzz"))
    with LiveServer(create_app(store_settings)) as live:
        schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 8
        for operation in operations:
            modes = [GenerationMode.POSITIVE]
            if operation.body:
                modes.append(GenerationMode.NEGATIVE)
            strategy = st.one_of(*(operation.as_strategy(mode) for mode in modes))

            @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def fuzz(case) -> None:
                case.call_and_validate(checks=checks, timeout=60)

            fuzz()

