"""One contract for every store backend, checked against NumPy brute force (the oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from xdretrieve.errors import EncoderMismatchError
from xdretrieve.store import ITEMS, StoreInfo, VectorStore, edge, item_point_id
from xdretrieve.store.edge import MAX_EXCLUDED_AFTER, EdgeStore
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
        # excluded ids never come back: a few (left out after the search, which returns more)
        # and many (left out by the engine's filter)
        for n_excluded in (3, MAX_EXCLUDED_AFTER + 6):
            top = brute_force(points, q, n_excluded, "a")
            got = store.search(ITEMS, q, 10, "a", exclude=[item_point_id(i) for i in top])
            assert [h.payload["item_id"] for h in got] == brute_force(points, q, 10, "a",
                                                                      set(top))


def test_nearest_is_the_search_without_payloads(store: VectorStore, points) -> None:
    load(store, points)
    q = np.random.default_rng(3).normal(size=DIM).astype(np.float32)
    q /= np.linalg.norm(q)
    excluded = [item_point_id(i) for i in brute_force(points, q, 4, "a")]
    hits = store.search(ITEMS, q, 30, "a", exclude=excluded)
    ids, cosines = store.nearest(ITEMS, q, 30, "a", exclude=excluded)
    assert ids == [h.id for h in hits] and len(ids) == 30
    np.testing.assert_allclose(cosines, [h.score for h in hits], atol=1e-6)


def test_similarity_is_the_exact_cosine_of_the_given_points(store: VectorStore, points) -> None:
    load(store, points)
    ids, vectors, _ = points
    q = np.random.default_rng(2).normal(size=DIM).astype(np.float32)
    q /= np.linalg.norm(q)
    asked = [item_point_id(i) for i in ids[::7]] + [item_point_id("nope")]
    got = store.similarity(ITEMS, q, asked)
    assert set(got) == set(asked[:-1])  # the unknown id is left out
    for k in range(0, N, 7):
        assert got[item_point_id(ids[k])] == pytest.approx(float(vectors[k] @ q), abs=1e-5)
    assert store.similarity(ITEMS, q, []) == {}


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


def test_point_ids_are_deterministic_integers_and_hits_return_them(store: VectorStore,
                                                                   points) -> None:
    from xdretrieve.store import user_point_id

    pid = item_point_id("b1")
    assert isinstance(pid, int) and 0 <= pid < 2 ** 63 and pid == item_point_id("b1")
    assert len({item_point_id(f"i{k}") for k in range(10_000)}) == 10_000
    assert user_point_id("u1", "books") != user_point_id("u1", "movies") != item_point_id("u1")
    load(store, points)
    hit = store.search(ITEMS, points[1][0], 1)[0]
    assert hit.id == item_point_id(hit.payload["item_id"])
    assert store.retrieve(ITEMS, [hit.id])[0].id == hit.id


def test_a_store_of_the_uuid_layout_is_refused_with_what_to_do(tmp_path: Path) -> None:
    import json

    from xdretrieve.errors import StoreError

    info = StoreInfo(encoder="enc", fingerprint="abc", dim=DIM, version="0.0.9", domains=["a"],
                     text_template="{title}", max_seq_length=64, pooling="mean").to_dict()
    del info["layout"]  # what the first release wrote
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "xdretrieve.json").write_text(json.dumps(info))
    with pytest.raises(StoreError, match="layout 1 .UUID point ids.*index the data again"):
        EdgeStore(tmp_path / "old").read_info()


def test_search_without_a_domain_scans_a_store_of_per_domain_graphs(tmp_path: Path, points,
                                                                   monkeypatch) -> None:
    """With one graph per domain there is no graph over all points: a search without a domain
    must still find the nearest (it scans). The thresholds are lowered so that these few
    points get graphs, as a large store's do."""
    monkeypatch.setattr(edge, "FULL_SCAN_KB", 1)
    monkeypatch.setattr(edge, "INDEXING_KB", 1)
    store = EdgeStore(tmp_path / "s", hnsw_per_domain=True)
    load(store, points)
    q = np.random.default_rng(5).normal(size=DIM).astype(np.float32)
    q /= np.linalg.norm(q)
    got = store.search(ITEMS, q, 10)
    assert [h.payload["item_id"] for h in got] == brute_force(points, q, 10)
    assert [h.payload["item_id"] for h in store.search(ITEMS, q, 10, "b")][:5] == \
        brute_force(points, q, 5, "b")  # the per-domain graphs still answer
    store.close()


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_search_threads_is_kept_with_the_collection_and_answers_the_same(
        tmp_path: Path, points, threads: int) -> None:
    """``search_threads`` goes into the collection's engine configuration (0: the engine's
    own default, one per CPU), survives a reopen, and does not change an answer."""
    store = EdgeStore(tmp_path / "s", search_threads=threads)
    load(store, points)
    store.close()
    config = json.loads((tmp_path / "s" / ITEMS / "edge_config.json").read_text())
    assert config.get("max_search_threads") == (threads or None)
    again = EdgeStore(tmp_path / "s")  # the collection keeps what it was created with
    q = points[1][3]
    assert [h.payload["item_id"] for h in again.search(ITEMS, q, 10, "a")] == \
        brute_force(points, q, 10, "a")
    again.close()
    config = json.loads((tmp_path / "s" / ITEMS / "edge_config.json").read_text())
    assert config.get("max_search_threads") == (threads or None)


def test_search_threads_below_zero_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="search_threads"):
        EdgeStore(tmp_path / "s", search_threads=-1)
