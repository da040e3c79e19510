"""The LlamaIndex adapter, through llama-index-core's own retrieve()."""

from __future__ import annotations

import pytest
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from xdretrieve_llamaindex import XDRetrieveRetriever

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
    retriever = XDRetrieveRetriever(core, domain="movies", mode=mode, limit=3)
    for t, theme in enumerate(themes):
        hits = retriever.retrieve(QueryBundle(query.format(t=t, theme=theme)))
        assert len(hits) == 3 and all(isinstance(h, NodeWithScore) for h in hits)
        top = hits[0]
        assert isinstance(top.node, TextNode)
        assert top.node.node_id == top.node.metadata["item_id"] == f"movie-{t}"
        assert top.node.text == f"{theme.capitalize()}: the movie"
        assert top.node.metadata["domain"] == "movies"
        assert top.node.metadata["text"] == f"a film about {theme}"
        assert not {"text_hash", "fields_hash"} & set(top.node.metadata)
        assert top.score == top.node.metadata["score"]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_a_history_is_read_oldest_first(core: Retriever) -> None:
    """Comma-separated ids keep their order (recent items weigh more): the answer is the core's
    for the same list, which differs from the reversed list's."""
    retriever = XDRetrieveRetriever(core, domain="movies", mode="history", limit=3)
    history = ["book-1", "book-2", "book-3"]
    got = [n.node.node_id for n in retriever.retrieve(",".join(history))]
    assert got == [h.item_id for h in core.recommend_history(history, "movies", 3)]
    assert got != [h.item_id for h in core.recommend_history(history[::-1], "movies", 3)]


def test_a_plain_string_and_the_other_direction(core: Retriever) -> None:
    retriever = XDRetrieveRetriever(core, domain="books", limit=1)
    assert [h.node.node_id for h in retriever.retrieve("movie-3, movie-3")] == ["book-3"]


def test_errors(core: Retriever) -> None:
    with pytest.raises(NotFoundError, match="unknown item"):
        XDRetrieveRetriever(core, domain="movies").retrieve("book-99")
    with pytest.raises(ValueError, match="mode"):
        XDRetrieveRetriever(core, domain="movies", mode="vibes")  # type: ignore[arg-type]


def test_the_readme_example_runs_as_printed(readme_example_output: list[str]) -> None:
    assert len(readme_example_output) == 5
    assert all(line.startswith("movie-") for line in readme_example_output)


def test_a_catalog_field_named_score_does_not_replace_the_hit_s_score(
        core: Retriever, monkeypatch: pytest.MonkeyPatch) -> None:
    """The metadata's 'score' is the node's score: an item's own field of that name (a review
    score) must not replace it, else a query engine that cuts by it reads that."""
    answer = core.recommend_history(["book-1"], "movies", 3)
    for h in answer:
        h.payload = {**h.payload, "score": 4.5}
    monkeypatch.setattr(core, "recommend_history", lambda *args: answer)
    hits = XDRetrieveRetriever(core, domain="movies", limit=3).retrieve("book-1")
    assert hits[0].node.node_id == "movie-1"
    assert [h.node.metadata["score"] for h in hits] == [h.score for h in hits]


def test_llamaindex_s_own_arguments_reach_its_base_retriever(core: Retriever) -> None:
    """callback_manager (like verbose) goes on to BaseRetriever: an app that traces its
    retrievals through its callback handlers sees this retriever's too."""
    from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler

    debug = LlamaDebugHandler()
    retriever = XDRetrieveRetriever(core, domain="movies", limit=1,
                                    callback_manager=CallbackManager([debug]))
    assert [h.node.node_id for h in retriever.retrieve("book-2")] == ["movie-2"]
    assert len(debug.get_event_pairs(CBEventType.RETRIEVE)) == 1
