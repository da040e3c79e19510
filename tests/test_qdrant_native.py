"""plugins/qdrant_native/example.py: Qdrant's own recommend query over xdretrieve's collections
(profile from the users collection via lookup_from, items filtered by domain) answers what
Retriever.recommend_user answers. Run on qdrant-client's in-process mode behind ServerStore."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import THEMES
from xdretrieve.config import Settings
from xdretrieve.data import Dataset
from xdretrieve.indexer import index_dataset
from xdretrieve.retriever import Retriever

EXAMPLE = Path(__file__).resolve().parents[1] / "plugins" / "qdrant_native" / "example.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("qdrant_native_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def indexed(paired_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A ServerStore over QdrantClient(':memory:'); test users are cold-start in movies."""
    from qdrant_client import QdrantClient

    from xdretrieve.store.server import ServerStore

    settings = Settings(url=":memory:", cache_dir=tmp_path_factory.mktemp("native") / "cache")
    client = QdrantClient(":memory:")
    store = ServerStore(client, settings.collection_prefix)
    ds = Dataset.from_dir(paired_dir)
    inter = [x for x in ds.interactions
             if not (ds.splits[x.user_id] == "test" and x.domain == "movies")]
    index_dataset(Dataset(ds.items, inter, ds.splits), settings, store=store)
    with Retriever(settings, store=store) as retriever:
        yield client, retriever
    store.close()


def _same(native, hits) -> None:
    assert [p.payload["item_id"] for p in native] == [h.item_id for h in hits]
    assert [p.score for p in native] == pytest.approx([h.score for h in hits], abs=1e-5)


@pytest.mark.parametrize("theme", range(len(THEMES)))
def test_cold_start_user_same_answer_as_the_retriever(indexed, example, theme: int) -> None:
    client, retriever = indexed
    user = f"u{theme}-0"  # known in books only
    native = example.recommend_for_user(client, user, "books", "movies", limit=len(THEMES))
    _same(native, retriever.recommend_user(user, "movies", len(THEMES)))
    assert native[0].payload["item_id"] == f"movie-{theme}"
    assert example.target_history(client, user, "movies") == []


@pytest.mark.parametrize("user, source, target", [("u5-1", "books", "movies"),
                                                  ("u2-2", "movies", "books"),
                                                  ("u7-0", "books", "books")])
def test_known_items_excluded_as_the_retriever_does(indexed, example, user: str, source: str,
                                                    target: str) -> None:
    client, retriever = indexed
    seen = example.target_history(client, user, target)
    assert seen, "these users have a history in the target domain"
    native = example.recommend_for_user(client, user, source, target, limit=5,
                                        exclude_items=seen)
    _same(native, retriever.recommend_user(user, target, 5))
    assert not set(seen) & {p.payload["item_id"] for p in native}


def test_the_command_line_prints_rank_score_id_and_title_less_the_target_history(
        indexed, example, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """main(), what a person runs: lines ranked from 1 with the item's title, and the user's
    items of the target domain left out (not those of the domain they are known in), so that
    it prints what Retriever.recommend_user answers."""
    client, retriever = indexed
    monkeypatch.setattr(example, "QdrantClient", lambda **kwargs: client)
    monkeypatch.setattr(sys, "argv", ["example.py", "--user", "u5-1", "--source", "books",
                                      "--domain", "movies", "--limit", "5"])
    example.main()
    lines = [line.split(None, 3) for line in capsys.readouterr().out.splitlines()]
    hits = retriever.recommend_user("u5-1", "movies", 5)
    assert [(int(rank), item, title) for rank, _, item, title in lines] == [
        (rank, h.item_id, h.title) for rank, h in enumerate(hits, start=1)]
    assert [float(score) for _, score, _, _ in lines] == pytest.approx(
        [h.score for h in hits], abs=1e-4)
