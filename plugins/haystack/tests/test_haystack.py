"""The Haystack component, run on its own and inside a real haystack Pipeline."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from haystack import Document, Pipeline
from xdretrieve_haystack import XDRetrieveRetriever

from xdretrieve import NotFoundError, Retriever, StoreError, XDRetrieveError


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")


@pytest.fixture
def component(paired_settings) -> Iterator[XDRetrieveRetriever]:
    c = XDRetrieveRetriever(domain="movies", limit=3, store=str(paired_settings.store))
    yield c
    c.close()  # an embedded store is open in one place at a time


def test_the_counterpart_comes_first(component: XDRetrieveRetriever, themes: list[str]) -> None:
    for t, theme in enumerate(themes):
        for kwargs in ({"user_id": f"u{t}"}, {"history": [f"book-{t}"]},
                       {"text": f"The {theme} chronicles"}):
            docs = component.run(**kwargs)["documents"]
            assert len(docs) == 3 and all(isinstance(d, Document) for d in docs)
            assert docs[0].id == docs[0].meta["item_id"] == f"movie-{t}", kwargs
            assert docs[0].content == f"{theme.capitalize()}: the movie"
            assert docs[0].meta["domain"] == "movies"
            assert docs[0].meta["text"] == f"a film about {theme}"  # the item's stored fields
            assert not {"text_hash", "fields_hash"} & set(docs[0].meta)
            assert [d.score for d in docs] == sorted((d.score for d in docs), reverse=True)
    back = component.run(history=["movie-2"], domain="books", limit=1)["documents"]
    assert [d.id for d in back] == ["book-2"]


def test_in_a_pipeline_and_serialized(component: XDRetrieveRetriever, paired_settings) -> None:
    data = component.to_dict()  # not warmed up: the pipeline below opens the store
    assert data["init_parameters"] == {"domain": "movies", "limit": 3,
                                       "store": str(paired_settings.store), "url": None,
                                       "model": None}
    again = XDRetrieveRetriever.from_dict(data)
    assert again.to_dict() == data

    pipe = Pipeline()
    pipe.add_component("recommend", again)
    # YAML round trip of the whole pipeline; haystack >= 2.x asks which modules to trust
    loaded = Pipeline.loads(pipe.dumps(), allowed_modules=["xdretrieve_haystack"])
    result = loaded.run({"recommend": {"history": ["book-1"]}})
    assert result["recommend"]["documents"][0].id == "movie-1"
    with pytest.raises(StoreError, match="open in another process or object"):
        component.run(history=["book-1"])  # the loaded pipeline's component holds the store
    loaded.get_component("recommend").close()
    assert component.run(history=["book-1"])["documents"][0].id == "movie-1"


def test_bad_calls(component: XDRetrieveRetriever) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        component.run(user_id="u1", text="dragons")
    with pytest.raises(NotFoundError, match="unknown domain 'music'"):
        component.run(user_id="u1", domain="music")
    with pytest.raises(ValueError, match="exactly one"):
        component.run()  # nothing to answer for: not a text search for None
    with pytest.raises(NotFoundError, match="unknown user ''"):
        component.run(user_id="")  # a user id, if an empty one: not a text search


def test_the_readme_example_runs_as_printed(readme_example_output: list[str]) -> None:
    assert len(readme_example_output) == 5
    assert all(line.startswith("movie-") for line in readme_example_output)


def test_a_closed_component_reopens_and_a_given_model_is_used(
        component: XDRetrieveRetriever, paired_settings, tmp_path) -> None:
    assert component.run(history=["book-1"])["documents"][0].id == "movie-1"
    component.close()  # the store is free for another component...
    assert component.run(history=["book-1"])["documents"][0].id == "movie-1"  # ...and reopened
    component.close()
    missing = tmp_path / "no-such-model"
    other = XDRetrieveRetriever(domain="movies", store=str(paired_settings.store),
                                model=str(missing))
    with pytest.raises(XDRetrieveError, match="no-such-model"):
        other.run(history=["book-1"])
    other.close()


def test_a_catalog_field_named_score_does_not_replace_the_hit_s_score(
        component: XDRetrieveRetriever, monkeypatch: pytest.MonkeyPatch) -> None:
    """meta's 'score' is the hit's, as Document.score is: an item's own field of that name (a
    review score) must not replace it, else a pipeline that ranks or cuts by it reads that."""
    answer = Retriever.recommend_history

    def rated(self, *args):
        hits = answer(self, *args)
        for h in hits:
            h.payload = {**h.payload, "score": 4.5}
        return hits

    monkeypatch.setattr(Retriever, "recommend_history", rated)
    docs = component.run(history=["book-1"])["documents"]
    assert docs[0].id == "movie-1"
    assert [d.meta["score"] for d in docs] == [d.score for d in docs]
