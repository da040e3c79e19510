"""End to end with the real packaged encoder on paired domains whose answer is known:
a reader of book i likes movie i."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import THEMES
from xdretrieve.data import Dataset
from xdretrieve.errors import NotFoundError
from xdretrieve.indexer import index_dataset
from xdretrieve.retriever import Retriever


@pytest.fixture(scope="module")
def paired_store(paired_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from xdretrieve.config import Settings

    tmp = tmp_path_factory.mktemp("e2e")
    settings = Settings(store=tmp / "store", cache_dir=tmp / "cache")
    ds = Dataset.from_dir(paired_dir)
    # test users are cold-start in movies: index only their books
    inter = [x for x in ds.interactions
             if not (ds.splits[x.user_id] == "test" and x.domain == "movies")]
    index_dataset(Dataset(ds.items, inter, ds.splits), settings)
    return settings


@pytest.mark.parametrize("theme", range(len(THEMES)))
def test_cold_start_user_gets_the_counterpart_first(paired_store, theme: int) -> None:
    with Retriever(paired_store) as r:
        assert r.recommend_user(f"u{theme}-0", "movies", 3)[0].item_id == f"movie-{theme}"
        assert r.recommend_history([f"book-{theme}"], "movies", 3)[0].item_id == f"movie-{theme}"
        assert r.recommend_history([f"movie-{theme}"], "books", 3)[0].item_id == f"book-{theme}"


def test_known_items_are_excluded_and_domain_respected(paired_store) -> None:
    with Retriever(paired_store) as r:
        hits = r.recommend_user("u4-1", "movies", 24)  # a train user who watched movie-4
        assert "movie-4" not in {h.item_id for h in hits}
        assert len(hits) == len(THEMES) - 1
        assert {h.domain for h in hits} == {"movies"}
        # a user known only in the domain asked for is answered from that history, less its items
        own = r.recommend_user("u4-0", "books", 3)
        assert len(own) == 3 and {h.domain for h in own} == {"books"}
        assert "book-4" not in {h.item_id for h in own}
        assert r.search_text("a film about volcanoes", "movies", 1)[0].item_id == "movie-10"
        # asked without a limit: the ten best, by every kind of query
        assert [len(r.recommend_user("u4-1", "movies")),
                len(r.recommend_history(["book-4"], "movies")),
                len(r.search_text("volcanoes", "movies"))] == [10, 10, 10]
        # what a framework that prints its components shows (before: "<... object at 0x...>")
        assert repr(r) == (f"Retriever({str(paired_store.store)!r}, domains=['books', "
                           f"'movies'], model='all-MiniLM-L6-v2')")


def test_answer_chosen_from_more_candidates_is_the_same_nearest_items(paired_store,
                                                                     monkeypatch) -> None:
    """Without a trained model the nearest are the answer: asking for 10 out of 20 candidates
    (payloads read for the 10 only) gives what a 10-wide search gives, with payloads. An item
    deleted between the search and that read (the service runs a DELETE beside a query) is
    left out of the answer, not an error."""
    with Retriever(paired_store) as r:
        query = r.user_query("u4-1", "movies")
        plain = r.search(query, "movies", 10)
        wide = r.search(query, "movies", 10, candidates=20)
        assert [(h.item_id, h.title) for h in wide] == [(h.item_id, h.title) for h in plain]
        assert [h.score for h in wide] == pytest.approx([h.score for h in plain], abs=1e-5)
        assert all(h.payload["item_id"] == h.item_id for h in wide)
        assert "movie-4" not in {h.item_id for h in wide}  # still excluded
        with pytest.raises(ValueError, match="candidates"):
            r.search(query, "movies", 10, candidates=0)
        # fewer candidates than asked for: the answer is still the `limit` nearest
        narrow = r.search(query, "movies", 10, candidates=5)
        assert [h.item_id for h in narrow] == [h.item_id for h in plain]
        with pytest.raises(ValueError, match="limit and candidates must be at least 1"):
            r.search(query, "movies", 0)
        real, dropped = r.store.retrieve, []

        def deleted_meanwhile(collection, ids, **kwargs):
            points = real(collection, ids, **kwargs)
            dropped.append(points[0].payload["item_id"])
            return points[1:]

        monkeypatch.setattr(r.store, "retrieve", deleted_meanwhile)
        raced = r.search(query, "movies", 10, candidates=20)
        monkeypatch.undo()
        assert [h.item_id for h in raced] == [h.item_id for h in wide if h.item_id != dropped[0]]
        with pytest.raises(TypeError, match="limit must be a whole number, not 2.5"):
            r.recommend_user("u4-1", "movies", limit=2.5)
        assert len(r.recommend_user("u4-1", "movies", limit=np.int64(2))) == 2
        with pytest.raises(TypeError, match="limit must be a whole number, not True"):
            r.recommend_user("u4-1", "movies", limit=True)  # not one item


def test_unknowns_are_clear_errors(paired_store) -> None:
    with Retriever(paired_store) as r:
        with pytest.raises(NotFoundError, match="unknown user 'ghost'"):
            r.recommend_user("ghost", "movies")
        with pytest.raises(NotFoundError, match="unknown domain 'music'; this store has: books"):
            r.recommend_user("u1-0", "music")
        with pytest.raises(NotFoundError, match=r"unknown item\(s\): book-99$"):
            r.recommend_history(["book-1", "book-99"], "movies")  # the known one not named
        for ask in (lambda: r.recommend_history(["book-1"], "music"),
                    lambda: r.search_text("dragons", "music")):  # not an empty answer
            with pytest.raises(NotFoundError, match="unknown domain 'music'; this store has"):
                ask()
        with pytest.raises(TypeError, match=r"e\.g\. \['book-1'\], not one string"):
            r.recommend_history("book-1", "movies")  # not its characters as 6 unknown items
        for blank in ("", " \n\t"):  # blanks say nothing: not an answer of arbitrary items
            with pytest.raises(NotFoundError, match="the text is empty"):
                r.search_text(blank, "movies")


def test_a_user_with_no_history_gets_the_most_popular_items(paired_dir: Path,
                                                            tmp_path: Path) -> None:
    """No history at all: the target domain's most popular items, and the query says so."""
    from click.testing import CliRunner

    from xdretrieve.cli import main
    from xdretrieve.config import Settings
    from xdretrieve.data import Interaction

    ds = Dataset.from_dir(paired_dir)
    fans = [Interaction(f"fan-{k}", "movie-7", "movies", 0.0) for k in range(3)]
    settings = Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache")
    index_dataset(Dataset(ds.items, [*ds.interactions, *fans]), settings)
    with Retriever(settings) as r:
        query = r.history_query([], "movies")
        assert query.popular and "no history" in query.source
        hits = r.search(query, "movies", 3)
        # movie-7: 6 users; every other movie 3 (ties keep catalog order)
        assert [h.item_id for h in hits] == ["movie-7", "movie-0", "movie-1"]
        # scored 1 / rank: the same item's score whatever the limit
        assert [h.score for h in hits] == pytest.approx([1, 1 / 2, 1 / 3])
        assert [h.score for h in r.search(query, "movies", 10)[:3]] == pytest.approx(
            [h.score for h in hits])
        # ranked within the answer, also when an item before them is left out
        assert [(h.item_id, h.score) for h in r.popular("movies", 2, exclude=["movie-7"])] == [
            ("movie-0", 1.0), ("movie-1", 0.5)]
        assert {h.domain for h in r.recommend_history([], "books", 24)} == {"books"}
        # kept in the build info; `info` shows how many, not the list
        assert len(r.info.extra["popular"]["movies"]) == len(THEMES)
        assert r.info.summary()["extra"]["popular"] == {"books": "12 items", "movies": "12 items"}
    out = CliRunner().invoke(main, ["query", "--history", "", "--domain", "movies", "--limit",
                                    "2", "--store", str(tmp_path / "store")])
    assert out.exit_code == 0, out.output
    assert "no history: the most popular items -> movies" in out.output
    assert "movie-7" in out.output
    from xdretrieve.indexer import delete_items
    from xdretrieve.store import open_store

    with open_store(settings) as store:
        assert delete_items(["movie-7"], store) == ["movie-7"]
    with Retriever(settings) as r:  # deleted since indexing: left out, not an error
        assert [h.item_id for h in r.recommend_history([], "movies", 2)] == ["movie-0", "movie-1"]


def test_a_history_is_pooled_by_recency_as_the_settings_say(paired_store) -> None:
    """Recency pooling (the default) weighs a history's latest items most: with a short
    half-life the latest book decides the answer, whatever was read before it (pooled by the
    mean, both orders would get one answer)."""
    recent = paired_store.model_copy(update={"recency_half_life": 0.1})
    with Retriever(recent) as r:
        assert r.recommend_history(["book-1", "book-2"], "movies", 1)[0].item_id == "movie-2"
        assert r.recommend_history(["book-2", "book-1"], "movies", 1)[0].item_id == "movie-1"


def test_an_empty_history_in_a_store_without_interactions_is_a_clear_error(
        paired_dir: Path, tmp_path: Path, tiny_model: str) -> None:
    """A store indexed from items alone has no popularity to answer an empty history with:
    an error that says what a query needs then, not an empty answer."""
    from xdretrieve.config import Settings

    settings = Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache", model=tiny_model)
    index_dataset(Dataset(Dataset.from_dir(paired_dir).items, []), settings)
    needs = "no popularity for domain 'movies'.* needs a history or a text"
    with Retriever(settings) as r, pytest.raises(NotFoundError, match=needs):
        r.recommend_history([], "movies")


def test_the_best_scores_break_ties_by_position_also_at_the_cut() -> None:
    """Scores tied across the cut (popular items of one bias, equal cosines): the first of
    them by position are kept, as a full stable sort keeps them, not an arbitrary few."""
    from xdretrieve.retriever import _best

    tied = np.zeros(60)
    tied[30:] = 1.0
    assert _best(tied, 5).tolist() == [30, 31, 32, 33, 34]
    rounded = np.round(np.random.default_rng(0).normal(size=1000), 1)  # many ties
    for n in (1, 50, 999):
        assert _best(rounded, n).tolist() == np.argsort(-rounded, kind="stable")[:n].tolist()
