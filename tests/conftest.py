"""Shared fixtures: small datasets whose right answer is known, and session-scoped encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ARTS_OFFICE = SHARED_DATA / "amazon-arts-office"

# Paired domains: a reader of book i likes movie i (same theme, different words around it).
THEMES = ["dragons", "cooking", "baseball", "submarines", "vampires", "astronomy", "gardening",
          "jazz", "pirates", "chess", "volcanoes", "robots"]


def write_paired_dataset(directory: Path, users_per_theme: int = 3) -> Path:
    """books/movies where book i and movie i share theme i; users like one theme each.

    User ``u{t}-{k}`` read ``book-{t}`` and watched ``movie-{t}``. Users with k == 0 are the
    test users (split in users.csv)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "items.jsonl", "w") as f:
        for t, theme in enumerate(THEMES):
            f.write(json.dumps({"item_id": f"book-{t}", "domain": "books",
                                "title": f"The {theme} chronicles",
                                "text": f"a novel about {theme}"}) + "\n")
            f.write(json.dumps({"item_id": f"movie-{t}", "domain": "movies",
                                "title": f"{theme.capitalize()}: the movie",
                                "text": f"a film about {theme}"}) + "\n")
    rows, splits = ["user_id,item_id,domain,position"], ["user_id,split"]
    for t in range(len(THEMES)):
        for k in range(users_per_theme):
            user = f"u{t}-{k}"
            rows += [f"{user},book-{t},books,0", f"{user},movie-{t},movies,1"]
            splits.append(f"{user},{'test' if k == 0 else 'train'}")
    (directory / "interactions.csv").write_text("\n".join(rows) + "\n")
    (directory / "users.csv").write_text("\n".join(splits) + "\n")
    return directory


def check_trained_model_store(model_dir: Path, dataset, settings) -> None:
    """Index the paired dataset with the trained model in ``model_dir`` and check what any
    trained model must do there: adapted 16-d vectors, the model recorded in the store, book i
    -> movie i for nearly every theme, a user's own movies left out."""
    from xdretrieve.indexer import index_dataset
    from xdretrieve.retriever import Retriever
    from xdretrieve.store import ITEMS, item_point_id, open_store

    index_dataset(dataset, settings)
    with open_store(settings) as s:
        (point,) = s.retrieve(ITEMS, [item_point_id("movie-2")], with_vectors=True)
        assert point.vector.shape == (16,)
        assert s.read_info().extra["trained"] == str(model_dir.resolve())
    with Retriever(settings) as r:
        assert r.model is not None
        assert repr(r).endswith(f"model={str(model_dir.resolve())!r})")
        right = sum(r.recommend_history([f"book-{t}"], "movies", 1)[0].item_id == f"movie-{t}"
                    for t in range(len(THEMES)))
        assert right >= len(THEMES) - 1
        hits = r.recommend_user("u3-0", "movies", 5)
        assert len(hits) == 5 and "movie-3" not in {h.item_id for h in hits}  # already watched


@pytest.fixture(scope="session")
def paired_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_paired_dataset(tmp_path_factory.mktemp("paired"))


@pytest.fixture(scope="session")
def minilm_model() -> str:
    """The packaged default encoder (loaded offline from site-packages)."""
    from xdretrieve.encoder import resolve_model

    return str(resolve_model("all-MiniLM-L6-v2").path)


def build_tiny_model(directory: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A randomly initialised 2-layer BERT as a sentence-transformers directory (no download:
    the tokenizer comes from the packaged MiniLM)."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 moved the modules
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # pragma: no cover
        from sentence_transformers import models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from xdretrieve.encoder import resolve_model

    torch.manual_seed(seed)
    base = directory / "base"
    tokenizer = BertTokenizerFast.from_pretrained(str(resolve_model("all-MiniLM-L6-v2").path))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    transformer = models.Transformer(str(base), max_seq_length=64)
    pooling = models.Pooling(hidden, pooling_mode="mean")
    out = directory / "model"
    SentenceTransformer(modules=[transformer, pooling]).save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny0"), seed=0))


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny1"), seed=1))


@pytest.fixture
def settings_for(tmp_path: Path):
    """Settings factory with the store and cache in this test's tmp_path."""
    from xdretrieve.config import Settings

    def make(**kwargs):
        kwargs.setdefault("store", tmp_path / "store")
        kwargs.setdefault("cache_dir", tmp_path / "cache")
        return Settings(**kwargs)

    return make


def require_shared_data() -> Path:
    if not ARTS_OFFICE.is_dir():
        pytest.skip(f"shared data not found at {ARTS_OFFICE} (present in CI; absent in a fresh "
                    f"clone without ../shared)")
    return ARTS_OFFICE
