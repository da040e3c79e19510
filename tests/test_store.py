"""One contract for every store backend, checked against NumPy brute force (the oracle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from xdretrieve.errors import EncoderMismatchError
from xdretrieve.store import ITEMS, StoreInfo, VectorStore, item_point_id
from xdretrieve.store.edge import EdgeStore
from xdretrieve.store.server import ServerStore

N, DIM = 600, 24


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> VectorStore:
    if request.param == "edge":
        s: VectorStore = EdgeStore(tmp_path / "edge")
    else:
        # qdrant-client's in-process mode speaks the server API
        s = ServerStore(QdrantClient(":memory:"), prefix="t_")
    yield s
    s.close()


@pytest.fixture(scope="module")
def points() -> tuple[list[str], np.ndarray, list[dict]]:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{j}" for j in range(N)]
    payloads = [{"item_id": i, "domain": "a" if j % 3 else "b", "title": i}
                for j, i in enumerate(ids)]
    return ids, vectors, payloads


def load(store: VectorStore, points) -> None:
    ids, vectors, payloads = points
    store.ensure(ITEMS, DIM, ("domain",))
    store.upsert(ITEMS, [item_point_id(i) for i in ids], vectors, payloads)
    store.build_index(ITEMS)


def brute_force(points, query: np.ndarray, limit: int, domain=None, exclude=()) -> list[str]:
    ids, vectors, payloads = points
    scores = vectors @ query
    keep = [j for j in range(N) if (domain is None or payloads[j]["domain"] == domain)
            and ids[j] not in exclude]
    order = sorted(keep, key=lambda j: -scores[j])
    return [ids[j] for j in order[:limit]]


def test_search_matches_brute_force(store: VectorStore, points) -> None:
    load(store, points)
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        for domain in (None, "a", "b"):
            got = store.search(ITEMS, q, 10, domain=domain)
            assert [h.payload["item_id"] for h in got] == brute_force(points, q, 10, domain)
            assert all(h.payload["domain"] == domain for h in got if domain)
            expected = sorted((float(points[1][int(h.payload["item_id"][1:])] @ q) for h in got),
                              reverse=True)
            np.testing.assert_allclose([h.score for h in got], expected, atol=1e-5)
        # excluded ids never come back
        top = brute_force(points, q, 3, "a")
        got = store.search(ITEMS, q, 10, "a", exclude=[item_point_id(i) for i in top])
        assert [h.payload["item_id"] for h in got] == brute_force(points, q, 10, "a", set(top))


def test_retrieve_scroll_count_delete(store: VectorStore, points) -> None:
    load(store, points)
    ids, vectors, _ = points
    assert store.count(ITEMS) == N
    got = store.retrieve(ITEMS, [item_point_id("i5"), item_point_id("nope")], with_vectors=True)
    assert [p.payload["item_id"] for p in got] == ["i5"]
    np.testing.assert_allclose(got[0].vector, vectors[5], atol=1e-6)
    scrolled = list(store.scroll(ITEMS, fields=["item_id"]))
    assert sorted(p.payload["item_id"] for p in scrolled) == sorted(ids)
    assert set(scrolled[0].payload) == {"item_id"}
    store.delete(ITEMS, [item_point_id("i5")])
    assert store.count(ITEMS) == N - 1
    assert store.retrieve(ITEMS, [item_point_id("i5")]) == []


def test_upsert_is_idempotent(store: VectorStore, points) -> None:
    load(store, points)
    load(store, points)  # same ids: overwritten, never duplicated
    assert store.count(ITEMS) == N


def test_info_round_trip_and_encoder_check(store: VectorStore, points) -> None:
    assert store.read_info() is None
    load(store, points)
    info = StoreInfo(encoder="enc", fingerprint="abc", dim=DIM, version="0", domains=["a", "b"],
                     text_template="{title}", max_seq_length=64, pooling="mean")
    store.write_info(info)
    back = store.read_info()
    assert back == info
    back.check_encoder("enc", "abc")
    with pytest.raises(EncoderMismatchError, match="built by encoder 'enc'"):
        back.check_encoder("other", "zzz")


def test_edge_store_persists(tmp_path: Path, points) -> None:
    s = EdgeStore(tmp_path / "edge")
    load(s, points)
    s.close()
    again = EdgeStore(tmp_path / "edge")
    q = points[1][0]
    assert [h.payload["item_id"] for h in again.search(ITEMS, q, 5)] == brute_force(points, q, 5)
    again.close()


def test_edge_store_open_twice_is_a_clear_error(tmp_path: Path, points) -> None:
    from xdretrieve.errors import StoreError

    first = EdgeStore(tmp_path / "edge")
    load(first, points)
    second = EdgeStore(tmp_path / "edge")
    with pytest.raises(StoreError, match="open in another process"):
        second.count(ITEMS)
    first.close()
    assert second.count(ITEMS) == N  # free once the first is closed
    second.close()
