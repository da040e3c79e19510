"""The LangChain adapter, through langchain-core's own Runnable interface."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda
from xdretrieve_langchain import XDRetrieveRetriever

from xdretrieve import NotFoundError, Retriever


@pytest.fixture(scope="module")
def core(paired_settings):
    with Retriever(paired_settings) as r:
        yield r


@pytest.mark.parametrize("mode, query", [("user", "u{t}"), ("user", " u{t}\n"),
                                         ("history", "book-{t}"), ("history", " book-{t} , "),
                                         ("text", "The {theme} chronicles")])
def test_the_counterpart_comes_first(core: Retriever, themes: list[str], mode: str,
                                     query: str) -> None:
    retriever = XDRetrieveRetriever(retriever=core, mode=mode, domain="movies", limit=3)
    for t, theme in enumerate(themes):
        docs = retriever.invoke(query.format(t=t, theme=theme))
        assert all(isinstance(d, Document) for d in docs) and len(docs) == 3
        top = docs[0]
        assert top.metadata["item_id"] == f"movie-{t}"
        assert top.page_content == f"{theme.capitalize()}: the movie"
        assert top.metadata["domain"] == "movies"
        assert top.metadata["text"] == f"a film about {theme}"
        assert not {"text_hash", "fields_hash"} & set(top.metadata)
        scores = [d.metadata["score"] for d in docs]
        assert scores == sorted(scores, reverse=True)


def test_a_history_is_read_oldest_first(core: Retriever) -> None:
    """Comma-separated ids keep their order (recent items weigh more): the answer is the core's
    for the same list, which differs from the reversed list's."""
    retriever = XDRetrieveRetriever(retriever=core, mode="history", domain="movies", limit=3)
    history = ["book-1", "book-2", "book-3"]
    got = [d.metadata["item_id"] for d in retriever.invoke(", ".join(history))]
    assert got == [h.item_id for h in core.recommend_history(history, "movies", 3)]
    assert got != [h.item_id for h in core.recommend_history(history[::-1], "movies", 3)]


def test_a_catalog_field_named_score_does_not_replace_the_hit_s_score(
        core: Retriever, monkeypatch: pytest.MonkeyPatch) -> None:
    """metadata['score'] is the hit's: an item's own field of that name (a review score) must
    not replace it, else a chain that ranks or cuts by it reads that."""
    answer = core.recommend_history(["book-1"], "movies", 3)
    for h in answer:
        h.payload = {**h.payload, "score": 4.5}
    monkeypatch.setattr(core, "recommend_history", lambda *args: answer)
    docs = XDRetrieveRetriever(retriever=core, domain="movies", limit=3).invoke("book-1")
    assert docs[0].metadata["item_id"] == "movie-1"
    assert [d.metadata["score"] for d in docs] == [h.score for h in answer]


def test_is_a_runnable(core: Retriever) -> None:
    retriever = XDRetrieveRetriever(retriever=core, domain="books", limit=1)
    chain = retriever | RunnableLambda(lambda docs: docs[0].metadata["item_id"])
    assert chain.invoke("movie-2") == "book-2"
    assert chain.batch(["movie-0", "movie-3"]) == ["book-0", "book-3"]


def test_errors_are_xdretrieve_errors(core: Retriever) -> None:
    with pytest.raises(NotFoundError, match="unknown user 'ghost'"):
        XDRetrieveRetriever(retriever=core, mode="user", domain="movies").invoke("ghost")
    with pytest.raises(ValueError):
        XDRetrieveRetriever(retriever=core, mode="vibes", domain="movies")
    with pytest.raises(ValueError, match="limit"):  # when made, not at a chain's first query
        XDRetrieveRetriever(retriever=core, domain="movies", limit=0)


def test_the_readme_example_runs_as_printed(readme_example_output: list[str]) -> None:
    assert len(readme_example_output) == 5
    assert all(line.startswith("movie-") for line in readme_example_output)


def test_batch_runs_a_new_retriever_in_threads(core: Retriever, paired_settings, tmp_path,
                                               themes: list[str]) -> None:
    """Runnable.batch() answers from a thread pool: a retriever's first queries arrive together."""
    import shutil

    queries = [f"book-{t}" for t in range(len(themes))] * 4
    one_by_one = [[d.metadata["item_id"] for d in XDRetrieveRetriever(
        retriever=core, mode="history", domain="movies", limit=2).invoke(q)] for q in queries]
    for k in range(3):  # a copy of the store each time (`core` holds the fixture's open)
        copy = shutil.copytree(paired_settings.store, tmp_path / f"store{k}")
        with Retriever(paired_settings.model_copy(update={"store": copy})) as fresh:
            retriever = XDRetrieveRetriever(retriever=fresh, mode="history", domain="movies",
                                            limit=2)
            got = retriever.batch(queries, config={"max_concurrency": 8})
        assert [[d.metadata["item_id"] for d in docs] for docs in got] == one_by_one
