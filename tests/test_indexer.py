"""index: idempotent, incremental, refuses a mismatched encoder, writes nothing on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xdretrieve import indexer
from xdretrieve.data import Dataset, Interaction, Item
from xdretrieve.errors import EncoderMismatchError
from xdretrieve.indexer import index_dataset
from xdretrieve.retriever import Retriever
from xdretrieve.store import ITEMS, USERS, item_point_id, open_store, user_point_id
from xdretrieve.store.base import VectorStore


def snapshot(settings) -> dict[str, tuple]:
    with open_store(settings) as s:
        return store_snapshot(s)


def store_snapshot(s: VectorStore) -> dict[str, tuple]:
    return {c: {p.id: (json.dumps(p.payload, sort_keys=True), p.vector.tobytes())
                for p in s.scroll(c, with_vectors=True)} for c in (ITEMS, USERS)}


def test_reindex_changes_nothing(paired_dir: Path, tiny_model: str, settings_for) -> None:
    settings = settings_for(model=tiny_model)
    ds = Dataset.from_dir(paired_dir)
    first = index_dataset(ds, settings)
    assert first.items_embedded == len(ds.items) == 24
    assert first.profiles_written == first.user_profiles == 2 * len(ds.histories)
    before = snapshot(settings)
    again = index_dataset(ds, settings)
    assert not again.changed
    assert (again.items_embedded, again.profiles_written) == (0, 0)
    assert again.user_profiles == first.user_profiles  # what the store holds, not what was written
    assert first.users == again.users == len(ds.histories)
    assert snapshot(settings) == before


def test_changed_catalog_updates_only_what_changed(paired_dir: Path, tiny_model: str,
                                                   settings_for) -> None:
    settings = settings_for(model=tiny_model)
    ds = Dataset.from_dir(paired_dir)
    index_dataset(ds, settings)
    before = snapshot(settings)
    items = dict(ds.items)
    old = items["movie-3"]
    items["movie-3"] = Item(old.item_id, old.domain, old.title, "a film about deep sea subs")
    del items["movie-11"]  # no longer sold; drop its interactions too
    inter = [x for x in ds.interactions if x.item_id != "movie-11"]
    report = index_dataset(Dataset(items, inter), settings)
    assert (report.items_embedded, report.items_deleted) == (1, 1)
    # profiles of users who watched movie-3 (its vector changed) or movie-11 (history changed)
    assert report.profiles_written == 3 and report.profiles_deleted == 3
    after = snapshot(settings)
    changed = {pid for pid in before[ITEMS] if before[ITEMS][pid] != after[ITEMS].get(pid)}
    assert changed == {item_point_id("movie-3"), item_point_id("movie-11")}
    assert item_point_id("movie-11") not in after[ITEMS]
    assert user_point_id("u11-0", "movies") not in after[USERS]


def test_an_item_that_moves_domain_or_changes_a_field_is_rewritten(
        paired_dir: Path, tiny_model: str, settings_for) -> None:
    """Before, both went unseen (their encoder text is the same): a moved item stayed among
    its old domain's answers, a changed price was served stale, and the run said 'nothing
    changed'."""
    from dataclasses import replace

    settings = settings_for(model=tiny_model)
    ds = Dataset.from_dir(paired_dir)
    index_dataset(ds, settings)
    items = dict(ds.items)
    items["movie-3"] = replace(items["movie-3"], domain="books")
    items["book-2"] = replace(items["book-2"], extra={"price": 9.5})
    inter = [replace(x, domain="books") if x.item_id == "movie-3" else x
             for x in ds.interactions]
    report = index_dataset(Dataset(items, inter), settings)
    assert (report.items_embedded, report.items_rewritten, report.items_deleted) == (1, 1, 0)
    with Retriever(settings) as r:
        text = f"{items['movie-3'].title}. {items['movie-3'].text}"
        assert "movie-3" not in [h.item_id for h in r.search_text(text, "movies", 12)]
        moved = r.search_text(text, "books", 1)[0]
        assert (moved.item_id, moved.domain) == ("movie-3", "books")
        priced = next(h for h in r.search_text("anything", "books", 13) if h.item_id == "book-2")
        assert priced.fields["price"] == 9.5
        assert not {"text_hash", "fields_hash"} & set(priced.fields)  # the index's own
    with open_store(settings) as s:
        assert s.count(ITEMS) == len(items)  # moved, not copied
    assert not index_dataset(Dataset(items, inter), settings).changed


def test_mismatched_encoder_is_refused(paired_dir: Path, tiny_model: str, other_tiny_model: str,
                                       settings_for) -> None:
    ds = Dataset.from_dir(paired_dir)
    index_dataset(ds, settings_for(model=tiny_model))
    with pytest.raises(EncoderMismatchError, match="built by encoder.*add --recreate"):
        index_dataset(ds, settings_for(model=other_tiny_model))
    with pytest.raises(EncoderMismatchError, match="use --model"):
        Retriever(settings_for(model=other_tiny_model))
    # the store is intact and answers with the right encoder
    with Retriever(settings_for(model=tiny_model)) as r:
        assert len(r.search_text("dragons", "movies", 3)) == 3
    # --recreate switches encoders on purpose
    report = index_dataset(ds, settings_for(model=other_tiny_model), recreate=True)
    assert report.items_embedded == len(ds.items)
    # and every user profile with it: pooled from the same histories, the old encoder's
    # profiles would otherwise count as up to date
    assert report.profiles_written == report.user_profiles == 2 * len(ds.histories)


class Interrupt(BaseException):
    """What Ctrl-C is to the run (a BaseException, as KeyboardInterrupt is)."""


def interrupt(*_args, **_kwargs) -> None:
    raise Interrupt


@pytest.fixture(params=["edge", "server"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    """An open store of each kind, by its name in ``tmp_path``."""
    from qdrant_client import QdrantClient

    from xdretrieve.store.edge import EdgeStore
    from xdretrieve.store.server import ServerStore

    opened: list[VectorStore] = []

    def make(name: str) -> VectorStore:
        opened.append(EdgeStore(tmp_path / name) if request.param == "edge"
                      else ServerStore(QdrantClient(":memory:"), prefix=f"{name}_"))
        return opened[-1]

    yield make
    for s in opened:
        s.close()


def test_a_run_interrupted_after_writing_items_is_finished_by_the_next(
        paired_dir: Path, tiny_model: str, other_tiny_model: str, settings_for, backend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a first run stopped after its items recorded no encoder: a rerun with another
    one kept the stored vectors as its own (or failed on their size) and called the store
    done; and `query` called the store missing."""
    from xdretrieve.errors import StoreError

    ds = Dataset.from_dir(paired_dir)
    store = backend("store")
    with monkeypatch.context() as m:
        m.setattr(indexer, "_index_users", interrupt)  # the items are written by then
        with pytest.raises(Interrupt):
            index_dataset(ds, settings_for(model=tiny_model), store=store)
    assert store.count(ITEMS) == len(ds.items) and not store.read_info().complete
    with pytest.raises(StoreError, match="not complete: the `xdretrieve index` run"):
        Retriever(settings_for(), store=store)
    with pytest.raises(EncoderMismatchError, match="built by encoder"):
        index_dataset(ds, settings_for(model=other_tiny_model), store=store)
    report = index_dataset(ds, settings_for(model=tiny_model), store=store)
    assert report.resumed and report.items_embedded == 0
    assert report.profiles_written == 2 * len(ds.histories)
    info = store.read_info()
    assert info.complete and info.extra["popular"]
    # the same as a run that was never interrupted (profiles within float error: the resumed
    # run pools the vectors it reads back, which the server stores normalised)
    whole = backend("whole")
    index_dataset(ds, settings_for(model=tiny_model), store=whole)
    expected, got = store_snapshot(whole), store_snapshot(store)
    assert got[ITEMS] == expected[ITEMS] and got[USERS].keys() == expected[USERS].keys()
    for pid, (payload, vector) in got[USERS].items():
        assert payload == expected[USERS][pid][0]
        np.testing.assert_allclose(np.frombuffer(vector, np.float32),
                                   np.frombuffer(expected[USERS][pid][1], np.float32), atol=1e-6)
    with Retriever(settings_for(model=tiny_model), store=store) as r:
        assert len(r.recommend_user("u0-0", "movies", 3)) == 3


def test_every_run_that_completes_a_store_builds_its_index(
        paired_dir: Path, tiny_model: str, settings_for, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after every point was written but before the HNSW graphs were built, the next
    run has nothing to write and still builds them (without, the store would answer by full
    scans for good); items PUT into a new store get their graph too."""
    from xdretrieve.encoder import Encoder
    from xdretrieve.store.edge import EdgeStore

    ds = Dataset.from_dir(paired_dir)
    settings = settings_for(model=tiny_model)
    with monkeypatch.context() as m:
        m.setattr(EdgeStore, "build_index", interrupt)
        with pytest.raises(Interrupt):
            index_dataset(ds, settings)
    built: list[str] = []
    build = EdgeStore.build_index

    def recorded(self: EdgeStore, collection: str) -> None:
        built.append(collection)
        build(self, collection)

    monkeypatch.setattr(EdgeStore, "build_index", recorded)
    report = index_dataset(ds, settings)
    assert report.resumed and not report.changed
    assert sorted(built) == [ITEMS, USERS]
    built.clear()
    fresh = settings_for(store=tmp_path / "fresh", model=tiny_model)
    with open_store(fresh) as s:
        indexer.upsert_items([Item("movie-x", "movies", "A film")], fresh, s,
                             Encoder.from_settings(fresh))
    assert built == [ITEMS]


def test_an_interrupted_recreate_leaves_the_old_store_whole(
        paired_dir: Path, tiny_model: str, other_tiny_model: str, settings_for,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, --recreate dropped the store first: stopped while embedding, it left nothing."""
    from xdretrieve.encoder import Encoder

    ds = Dataset.from_dir(paired_dir)
    index_dataset(ds, settings_for(model=tiny_model))
    before = snapshot(settings_for())
    with monkeypatch.context() as m:
        m.setattr(Encoder, "encode_items", interrupt)
        with pytest.raises(Interrupt):
            index_dataset(ds, settings_for(model=other_tiny_model), recreate=True)
    assert snapshot(settings_for()) == before
    with Retriever(settings_for(model=tiny_model)) as r:
        assert r.info.complete and len(r.search_text("dragons", "movies", 3)) == 3
    # stopped once the new vectors are written, the store is the new encoder's, not complete
    with monkeypatch.context() as m:
        m.setattr(indexer, "_index_users", interrupt)
        with pytest.raises(Interrupt):
            index_dataset(ds, settings_for(model=other_tiny_model), recreate=True)
    with pytest.raises(EncoderMismatchError):
        index_dataset(ds, settings_for(model=tiny_model))
    assert index_dataset(ds, settings_for(model=other_tiny_model)).resumed


def test_a_text_query_refuses_an_encoder_changed_since_the_store_was_built(
        paired_dir: Path, tiny_model: str, settings_for, tmp_path: Path) -> None:
    """A store queried without --model embeds a text with the encoder it records: retrained in
    place since, that folder would put the text in another space than the stored items, so
    the text query is refused (a history query, from stored vectors, still answers)."""
    import shutil

    copy = tmp_path / "encoder"
    shutil.copytree(tiny_model, copy)
    index_dataset(Dataset.from_dir(paired_dir), settings_for(model=str(copy)))
    with Retriever(settings_for()) as r:
        assert len(r.search_text("dragons", "movies", 3)) == 3
    config = copy / "config.json"
    config.write_text(config.read_text().replace("{", '{"comment": "retrained",', 1))
    with Retriever(settings_for()) as r:
        assert len(r.recommend_history(["book-1"], "movies", 3)) == 3
        with pytest.raises(EncoderMismatchError, match="this store was built by encoder"):
            r.search_text("dragons", "movies", 3)


def three_domain_user() -> Dataset:
    """One user: three books, an album and a film."""
    items = [Item(f"book-{k}", "books", f"book {k}", w) for k, w in
             enumerate(["dragons", "castles", "knights"])]
    items += [Item("album-0", "music", "album 0", "jazz"), Item("movie-0", "movies", "film")]
    events = [Interaction("u", f"book-{k}", "books", float(k)) for k in range(3)]
    events += [Interaction("u", "album-0", "music", 3.0),
               Interaction("u", "movie-0", "movies", 4.0)]
    return Dataset({i.item_id: i for i in items}, events)


@pytest.mark.parametrize(("change", "pooled"), [
    ({"pooling": "mean"}, {"method": "mean"}),
    ({"recency_half_life": 1.0}, {"method": "recency", "half_life": 1.0}),
])
def test_another_pooling_or_half_life_rewrites_every_profile(
        change: dict, pooled: dict, tiny_model: str, settings_for) -> None:
    """A profile's vector depends on the pooling as much as on the history, and a recency
    profile's on its half-life too: indexing again with another rewrites every profile (else
    the store kept the old profiles and said nothing changed), with the new vector."""
    from xdretrieve.users import pool

    ds = three_domain_user()
    index_dataset(ds, settings_for(model=tiny_model, pooling="recency"))
    other = settings_for(model=tiny_model, **{"pooling": "recency", **change})
    report = index_dataset(ds, other)
    assert report.items_embedded == 0 and report.profiles_written == report.user_profiles == 3
    with open_store(other) as s:
        books = s.retrieve(ITEMS, [item_point_id(f"book-{k}") for k in range(3)],
                           with_vectors=True)
        (profile,) = s.retrieve(USERS, [user_point_id("u", "books")], with_vectors=True)
    vectors = np.stack([p.vector for p in sorted(books, key=lambda p: p.payload["item_id"])])
    np.testing.assert_allclose(profile.vector, pool(vectors, **pooled), atol=1e-6)
    assert not np.allclose(pool(vectors, **pooled), pool(vectors, "recency"), atol=1e-4)


def popularity_dataset() -> Dataset:
    """Movies in catalog order m-z, m-y, m-x, m-w, m-v: m-y and m-w had by two users each, m-z
    by one, m-x by one user three times, m-v by nobody; and a book one user had."""
    items = [Item(f"m-{c}", "movies", f"film {c}") for c in "zyxwv"] + [Item("b-0", "books", "b")]
    had = [("u1", "m-x"), ("u1", "m-x"), ("u1", "m-x"), ("u2", "m-w"), ("u3", "m-w"),
           ("u4", "m-y"), ("u5", "m-y"), ("u6", "m-z"), ("u6", "b-0")]
    events = [Interaction(u, i, "books" if i == "b-0" else "movies", float(k))
              for k, (u, i) in enumerate(had)]
    return Dataset({i.item_id: i for i in items}, events)


def test_the_popular_items_are_those_most_users_have_in_catalog_order(
        tiny_model: str, settings_for, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user with no history gets: a domain's items by how many users have them (one
    user's three rentals of m-x are one user), ties in catalog order (not by id), no item that
    nobody had, at most POPULAR_KEPT of them; a run of items only keeps them."""
    settings = settings_for(model=tiny_model)
    ds = popularity_dataset()

    def popular() -> dict[str, list[str]]:
        with open_store(settings) as s:
            return s.read_info().extra["popular"]

    index_dataset(ds, settings)
    assert popular() == {"books": ["b-0"], "movies": ["m-y", "m-w", "m-z", "m-x"]}
    monkeypatch.setattr(indexer, "POPULAR_KEPT", 3)
    index_dataset(ds, settings)
    assert popular()["movies"] == ["m-y", "m-w", "m-z"]
    index_dataset(Dataset(ds.items, []), settings, users=False)
    assert popular()["movies"] == ["m-y", "m-w", "m-z"]


def test_the_build_info_keeps_its_creation_time_and_dates_each_change(
        paired_dir: Path, tiny_model: str, settings_for) -> None:
    """`info` says when a store was created and last changed: a run that changes nothing keeps
    both times; a run that only deletes a user's profiles is a change, dated, as a delete of
    items is (each deleted id listed once); the creation time stays."""
    settings = settings_for(model=tiny_model)
    ds = Dataset.from_dir(paired_dir)

    def dates() -> tuple[str, str]:
        with open_store(settings) as s:
            info = s.read_info()
        return info.created_at, info.updated_at

    index_dataset(ds, settings)
    created, updated = dates()
    assert not index_dataset(ds, settings).changed
    assert dates() == (created, updated)
    gone = Dataset(ds.items, [x for x in ds.interactions if x.user_id != "u0-0"])
    report = index_dataset(gone, settings)
    assert report.profiles_deleted == 2 and report.changed
    assert dates()[0] == created and dates()[1] > updated
    updated = dates()[1]
    with open_store(settings) as s:
        assert indexer.delete_items(["movie-1", "nope", "movie-1"], s) == ["movie-1"]
    assert dates()[0] == created and dates()[1] > updated


def test_upserted_items_are_embedded_as_the_store_was_built(
        tiny_model: str, settings_for, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """upsert_items (PUT /items) embeds with the store's text template and cut length, not the
    caller's settings, so the next `index` of the catalog re-embeds nothing; of two items with
    one id the later is written; a store an interrupted `index` left incomplete stays so. A new
    store takes the caller's settings, and no items cannot make one."""
    from dataclasses import replace

    from xdretrieve.encoder import Encoder

    ds = three_domain_user()
    built = settings_for(model=tiny_model, max_seq_length=16)
    with monkeypatch.context() as m:
        m.setattr(indexer, "_index_users", interrupt)
        with pytest.raises(Interrupt):
            index_dataset(ds, built)
    items = dict(ds.items)
    items["book-0"] = replace(items["book-0"], text="dragons and wizards")
    caller = settings_for(model=tiny_model, text_template="{title}")  # and a cut of 128
    with open_store(built) as s:
        info = indexer.upsert_items([Item("book-0", "books", "draft"), items["book-0"]], caller,
                                    s, Encoder.from_settings(built))
        assert not info.complete and not s.read_info().complete
        (point,) = s.retrieve(ITEMS, [item_point_id("book-0")])
        assert (point.payload["title"], point.payload["text"]) == ("book 0", "dragons and wizards")
    report = index_dataset(Dataset(items, ds.interactions), built)
    assert report.resumed and report.items_embedded == 0
    fresh = caller.model_copy(update={"store": tmp_path / "fresh"})
    with open_store(fresh) as s:
        encoder = Encoder.from_settings(fresh)
        with pytest.raises(ValueError, match="no items to create a store from"):
            indexer.upsert_items([], fresh, s, encoder)
        info = indexer.upsert_items([Item("movie-x", "movies", "A film")], fresh, s, encoder)
        assert info.text_template == s.read_info().text_template == "{title}"


def test_a_stored_users_query_weighs_each_other_domain_by_its_history(
        tiny_model: str, settings_for) -> None:
    """Without a trained model, a stored user's query into movies pools their profiles of
    the other domains, each weighted by how many items it was made of (3 books, 1 album)."""
    settings = settings_for(model=tiny_model)
    index_dataset(three_domain_user(), settings)
    with Retriever(settings) as r:
        books, music = r.store.retrieve(USERS, [user_point_id("u", "books"),
                                                user_point_id("u", "music")], with_vectors=True)
        if books.payload["domain"] != "books":
            books, music = music, books
        expected = 3 * books.vector + 1 * music.vector
        query = r.user_query("u", "movies")
    np.testing.assert_allclose(query.vector, expected / np.linalg.norm(expected), atol=1e-6)
    assert query.exclude == ("movie-0",)


def test_another_cut_length_embeds_every_item_again(paired_dir: Path, tiny_model: str,
                                                    settings_for) -> None:
    """The vector of an item depends on where its text is cut (max_seq_length): indexing
    again with another cut embeds every item again, with the vectors that cut gives."""
    from xdretrieve.encoder import Encoder, item_text

    ds = Dataset.from_dir(paired_dir)
    index_dataset(ds, settings_for(model=tiny_model))
    short = settings_for(model=tiny_model, max_seq_length=8)
    assert index_dataset(ds, short).items_embedded == len(ds.items)
    expected = Encoder.from_settings(short).encode(
        [item_text(ds.items["book-2"], short.text_template)])[0]
    with open_store(short) as s:
        (point,) = s.retrieve(ITEMS, [item_point_id("book-2")], with_vectors=True)
    np.testing.assert_allclose(point.vector, expected, atol=1e-5)


def test_a_domain_named_with_an_arrow_is_refused_from_python_too(tiny_model: str,
                                                                settings_for) -> None:
    """Items built in Python reach the store without a reader: index_dataset and upsert_items
    refuse a domain with '->' as the readers and the HTTP service do, before anything is
    written."""
    from xdretrieve.encoder import Encoder
    from xdretrieve.errors import DataError

    settings = settings_for(model=tiny_model)
    items = {"x": Item("x", "books->movies", "t"), "y": Item("y", "movies", "u")}
    with pytest.raises(DataError, match=r"field 'domain': 'books->movies' must not contain"):
        index_dataset(Dataset(items, []), settings)
    assert not settings.store.exists()
    with open_store(settings) as s, pytest.raises(DataError, match="must not contain '->'"):
        indexer.upsert_items(list(items.values()), settings, s, Encoder.from_settings(settings))
    assert not (settings.store / "items").exists()


def test_vectors_are_what_the_encoder_gives(paired_dir: Path, tiny_model: str,
                                            settings_for) -> None:
    from xdretrieve.encoder import Encoder, item_text

    settings = settings_for(model=tiny_model)
    ds = Dataset.from_dir(paired_dir)
    index_dataset(ds, settings)
    encoder = Encoder.from_settings(settings)
    expected = encoder.encode([item_text(ds.items["book-2"], settings.text_template)])[0]
    with open_store(settings) as s:
        (point,) = s.retrieve(ITEMS, [item_point_id("book-2")], with_vectors=True)
        np.testing.assert_allclose(point.vector, expected, atol=1e-5)
        assert point.payload["title"] == "The baseball chronicles"


def test_a_text_the_template_leaves_out_is_rewritten_not_embedded(
        tiny_model: str, settings_for) -> None:
    """With a template of the title alone an item's text is not in its vector but is served
    with it: a changed text is written again (not embedded), else the store kept the old one
    and said nothing changed."""
    from dataclasses import replace

    settings = settings_for(model=tiny_model, text_template="{title}")
    ds = three_domain_user()
    index_dataset(ds, settings)
    items = {**ds.items, "book-1": replace(ds.items["book-1"], text="castles and moats")}
    report = index_dataset(Dataset(items, ds.interactions), settings)
    assert (report.items_embedded, report.items_rewritten) == (0, 1) and report.changed
    with open_store(settings) as s:
        (point,) = s.retrieve(ITEMS, [item_point_id("book-1")])
    assert point.payload["text"] == "castles and moats"


def test_the_same_fields_in_another_order_change_nothing(tiny_model: str, settings_for) -> None:
    """A catalog exported again with its columns in another order holds the same items: a
    re-index rewrites none of them."""
    settings = settings_for(model=tiny_model)
    items = {"b": Item("b", "books", "Dune", "", {"price": 9.5, "year": 1965}),
             "m": Item("m", "movies", "Alien", "", {"year": 1979, "price": 3.0})}
    index_dataset(Dataset(items, []), settings)
    swapped = {k: Item(i.item_id, i.domain, i.title, i.text, dict(reversed(i.extra.items())))
               for k, i in items.items()}
    report = index_dataset(Dataset(swapped, []), settings)
    assert report.items_rewritten == 0 and not report.changed


def test_the_vectors_read_from_the_cache_are_counted_per_run(tiny_model: str,
                                                               settings_for) -> None:
    """One loaded encoder indexing several stores (a notebook, the evaluation's local stores):
    each report counts the vectors that run read from the embedding cache, not every vector
    the encoder has read from it since it was loaded."""
    from xdretrieve.encoder import Encoder

    ds = three_domain_user()
    encoder = Encoder.from_settings(settings_for(model=tiny_model))
    runs = [index_dataset(ds, settings_for(model=tiny_model, store=settings_for().store / name),
                          encoder=encoder) for name in ("a", "b", "c")]
    assert [r.items_from_cache for r in runs] == [0, len(ds.items), len(ds.items)]


def test_a_recreate_counts_the_room_of_the_store_it_replaces_as_free(
        paired_dir: Path, tiny_model: str, other_tiny_model: str, settings_for,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--recreate drops what the store holds before it writes: on a nearly full disk the
    room the old store's files take counts as free (else a store that fits was refused)."""
    from xdretrieve.store.edge import EdgeStore

    ds = Dataset.from_dir(paired_dir)
    index_dataset(ds, settings_for(model=tiny_model))
    checked: list[tuple[int, bool]] = []
    check_space = EdgeStore.check_space
    monkeypatch.setattr(EdgeStore, "check_space", lambda self, dim, payloads, replacing=False: (
        checked.append((len(payloads), replacing)),
        check_space(self, dim, payloads, replacing))[1])
    index_dataset(ds, settings_for(model=other_tiny_model), recreate=True)
    assert checked[0] == (len(ds.items), True)


def test_deleting_from_a_store_without_items_deletes_nothing(backend) -> None:
    """DELETE /items on a store nobody has indexed into yet (the service starts on one): every
    id is not found, not an error about a missing collection."""
    assert indexer.delete_items(["x", "y"], backend("empty")) == []
