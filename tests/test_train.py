"""Adapter training end to end on paired domains: it learns, saves, reloads identically, and the
trained model answers through the same index/query path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import THEMES, check_trained_model_store, write_paired_dataset
from xdretrieve.data import Dataset
from xdretrieve.encoder import Encoder, item_text, resolve_model
from xdretrieve.errors import NotFoundError
from xdretrieve.model import MANIFEST, WEIGHTS, TrainedModel
from xdretrieve.retriever import Query, Retriever
from xdretrieve.store import ITEMS, item_point_id, open_store
from xdretrieve.train.adapter import AdapterConfig, train_adapter


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: str):
    tmp = tmp_path_factory.mktemp("train")
    data = write_paired_dataset(tmp / "data", users_per_theme=5)
    # users u{t}-0 are test; make u{t}-1 valid so that training can select an epoch
    splits = (data / "users.csv").read_text().replace("-1,train", "-1,valid")
    (data / "users.csv").write_text(splits)
    ds = Dataset.from_dir(data)
    ref = resolve_model(tiny_model)
    from xdretrieve.config import Settings

    settings = Settings(model=tiny_model, cache_dir=tmp / "cache")
    encoder = Encoder.from_settings(settings, ref)
    base = encoder.encode([item_text(i, settings.text_template) for i in ds.items.values()])
    config = AdapterConfig(dim=16, epochs=40, patience=40, batch_size=8, lr=1e-2, seed=0)
    manifest = train_adapter(ds, base, tmp / "model", ref.name, ref.fingerprint, config)
    return tmp, ds, base, manifest


def _train_stats(ds: Dataset):
    """The re-ranker's statistics of the fixture's train users, as training fits them: for
    the tests that save a re-ranker of known weights beside a copy of the trained model."""
    from xdretrieve.config import Settings
    from xdretrieve.rerank import ItemStats

    ids = list(ds.items)
    train = [u for u, split in ds.splits.items() if split == "train"]
    return ItemStats.fit(ids, {u: dict(ds.histories[u]) for u in train},
                         [ds.items[i].domain for i in ids],
                         [item_text(ds.items[i], Settings().text_template) for i in ids])


def test_the_catalog_numbers_items_in_file_order_and_each_domain_s_items_apart() -> None:
    """Row r is item r of items.jsonl, whatever its domain (the order of the encoder's vectors,
    which the tower and the pairs index by ``row_of``); a domain's rows are its items in that
    order, and ``local_of`` is an item's place among them (its column of that domain's scores).
    The items interleave the domains, so a row taken for a column would differ."""
    from xdretrieve.data import Item
    from xdretrieve.train.catalog import Catalog

    order = [("m0", "movies"), ("b0", "books"), ("m1", "movies"), ("b1", "books"),
             ("b2", "books")]
    catalog = Catalog.of(Dataset({i: Item(i, d, i) for i, d in order}, []))
    assert catalog.domains == ["books", "movies"]
    assert catalog.ids == ["m0", "b0", "m1", "b1", "b2"]
    assert catalog.row_of == {"m0": 0, "b0": 1, "m1": 2, "b1": 3, "b2": 4}
    assert [rows.tolist() for rows in catalog.rows_by_domain] == [[1, 3, 4], [0, 2]]
    assert catalog.local_of == {"b0": 0, "b1": 1, "b2": 2, "m0": 0, "m1": 1}


def test_training_improves_its_validation_metric(trained) -> None:
    _, _, _, manifest = trained
    scores = [np.mean([v for k, v in h.items() if k.endswith("ndcg@10")])
              for h in manifest["history"]]
    assert max(scores) > scores[0] + 0.2
    assert max(scores) > 0.8  # 12 themes: the counterpart is near the top for valid users
    assert manifest["best_epoch"] == int(np.argmax(scores)) + 1


def test_training_stops_after_patience_and_saves_the_best_epoch(trained, tmp_path: Path,
                                                                monkeypatch) -> None:
    """Valid users' ndcg@10 peaks at epoch 2 of 4 (scripted here): training stops once
    ``patience`` (2) epochs pass without a gain, and the saved model is epoch 2's, not the
    last one's."""
    from xdretrieve.train import adapter

    _, ds, base, _ = trained
    script, states = iter([0.1, 0.5, 0.2, 0.3, 0.9]), []

    def validate(model, valid, directions):
        states.append(model.bias.detach().clone().numpy())
        return {"books->movies/ndcg@10": next(script)}

    monkeypatch.setattr(adapter, "_validate", validate)
    config = AdapterConfig(dim=16, epochs=10, patience=2, batch_size=8, lr=1e-2, seed=0,
                           rerank_fraction=0)
    manifest = train_adapter(ds, base, tmp_path / "model", "m", "f", config)
    assert manifest["best_epoch"] == 2 and len(manifest["history"]) == len(states) == 4
    saved = TrainedModel.load(tmp_path / "model")
    np.testing.assert_array_equal(np.array(list(saved.bias.values()), dtype=np.float32),
                                  states[1])
    assert not np.array_equal(states[1], states[3])  # the last epoch's weights differ


def test_the_blocked_softmax_gives_the_whole_softmax_loss_and_gradients(monkeypatch) -> None:
    """A large target domain's logits are computed in blocks of items: the same loss and
    gradients as the whole softmax (and as the formula, computed here in numpy), and blocks are
    what the default chooses once a batch's logits pass ``LOGITS_BYTES``."""
    import torch

    from xdretrieve.train import adapter

    gen = torch.Generator().manual_seed(0)
    users0 = torch.nn.functional.normalize(torch.randn(5, 4, generator=gen), dim=1)
    items0 = torch.nn.functional.normalize(torch.randn(11, 4, generator=gen), dim=1)
    bias0, scale0 = torch.randn(11, generator=gen), torch.tensor(7.0)
    targets = [np.array([0]), np.array([3, 10]), np.array([1, 2, 5]), np.array([10]),
               np.array([4, 6])]
    logits = scale0.item() * users0.numpy() @ items0.numpy().T + bias0.numpy()
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    expected = np.mean([lse[r] - logits[r, t].mean() for r, t in enumerate(targets)])

    def run(block=None):
        leaves = [x.clone().requires_grad_() for x in (users0, items0, bias0, scale0)]
        u, v, b, s = leaves
        calls = []

        def logits(index):
            calls.append(index)
            return s * (u @ v[index].T) + b[index]

        loss = adapter.softmax_loss(logits, len(b), targets, block)
        loss.backward()
        return loss.item(), [x.grad.numpy() for x in leaves], calls

    whole, whole_grads, calls = run()
    assert len(calls) == 1  # 5 x 11 logits: one block
    assert whole == pytest.approx(expected, rel=1e-6)
    for block in (1, 3, 10):
        loss, grads, _ = run(block)
        assert loss == pytest.approx(whole, rel=1e-6)
        for g, w in zip(grads, whole_grads, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(adapter, "LOGITS_BYTES", 4 * 5 * 8)  # room for 5 x 8 logits
    loss, grads, calls = run()
    assert [c for c in calls if isinstance(c, slice)] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    assert loss == pytest.approx(whole, rel=1e-6)
    np.testing.assert_allclose(grads[1], whole_grads[1], rtol=1e-5, atol=1e-6)


def test_training_over_blocks_of_a_large_domain_learns_as_well(monkeypatch, tmp_path: Path,
                                                               trained) -> None:
    """Every step through the blocked softmax (a catalog too large for one block of logits):
    the model learns as the whole softmax's does."""
    from xdretrieve.train import adapter

    _, ds, base, reference = trained
    monkeypatch.setattr(adapter, "LOGITS_BYTES", 64)  # 16 logits: a few items per block
    config = AdapterConfig(dim=16, epochs=40, patience=40, batch_size=8, lr=1e-2, seed=0)
    manifest = train_adapter(ds, base, tmp_path / "model", "m", "f", config)
    scores = [np.mean([v for k, v in h.items() if k.endswith("ndcg@10")])
              for h in manifest["history"]]
    assert max(scores) > scores[0] + 0.2 and max(scores) > 0.8
    assert manifest["history"][0]["loss"] == pytest.approx(reference["history"][0]["loss"],
                                                           rel=1e-4)


def test_saved_model_reloads_and_gives_identical_vectors(trained) -> None:
    tmp, ds, base, _ = trained
    a, b = TrainedModel.load(tmp / "model"), TrainedModel.load(tmp / "model")
    domains = [it.domain for it in ds.items.values()]
    va, vb = a.item_vectors(base, domains), b.item_vectors(base, domains)
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_allclose(np.linalg.norm(va, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a.user_vector(va[:3], "movies"), b.user_vector(vb[:3], "movies"))
    # a history longer than the model's window is read through it: its last max_history items
    books = va[[k for k, it in enumerate(ds.items.values()) if it.domain == "books"]]
    long = books[np.arange(a.max_history + 9) % len(books)]
    np.testing.assert_allclose(a.user_vector(long, "movies"),
                               a.user_vector(long[-a.max_history:], "movies"), atol=1e-6)


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_the_saved_model_computes_what_the_trained_tower_computes(trained, tmp_path: Path,
                                                                  pooling: str) -> None:
    """What training holds in memory (the torch tower) and what index and query load (its
    saved weights, served in NumPy) give the same item vectors, user vectors and scores: a
    weight saved transposed, under another domain's name or not at all would differ here."""
    import torch

    from xdretrieve.evaluate.protocol import Split
    from xdretrieve.train.adapter import _save
    from xdretrieve.train.catalog import Catalog
    from xdretrieve.train.tower import Tower, pad

    _, ds, base, _ = trained
    catalog = Catalog.of(ds)
    config = AdapterConfig(dim=16, pooling=pooling)
    torch.manual_seed(1)
    tower = Tower(torch.from_numpy(base.astype(np.float32)), catalog.rows_by_domain, config)
    with torch.no_grad():  # every weight away from its start (zeros would hide a mix-up)
        for p in tower.parameters():
            p.add_(0.3 * torch.randn_like(p))
    tower.eval()
    _save(tower, tmp_path, catalog.domains, catalog.ids, config, "base", "f", 1, [], 0.0, None,
          {}, Split.of(ds))
    model = TrainedModel.load(tmp_path)
    vectors = model.item_vectors(base, [ds.items[i].domain for i in catalog.ids])
    with torch.no_grad():
        for t, rows in enumerate(catalog.rows_by_domain):
            np.testing.assert_allclose(vectors[rows], tower.domain_items(t).numpy(), atol=1e-5)
        for s, t in [(0, 1), (1, 0)]:
            source, target = catalog.rows_by_domain[s], catalog.rows_by_domain[t]
            histories = [source[:1], source[2:5], source[-7:]]  # lengths 1, 3 and 7
            users = tower.users(*pad(histories), s, t)
            logits = tower.user_scores(users, t).numpy()
            for h, u, row in zip(histories, users.numpy(), logits, strict=True):
                served = model.user_vector(vectors[h], catalog.domains[t])
                np.testing.assert_allclose(served, u, atol=1e-5)
                scores = model.rescore([catalog.ids[r] for r in target], vectors[target] @ served)
                np.testing.assert_allclose(scores, row, rtol=1e-4, atol=1e-4)


def test_point_id_lookups_match_the_item_id_ones(trained) -> None:
    tmp, ds, _, _ = trained
    model = TrainedModel.load(tmp / "model")
    items = list(ds.items)[:7] + ["not-in-the-model"]
    pids = [item_point_id(i) for i in items]
    cosines = np.linspace(-1, 1, len(items)).astype(np.float32)
    np.testing.assert_array_equal(model.rescore_points(pids, cosines), model.rescore(items, cosines))
    assert model.rescore_points(pids[-1:], cosines[-1:])[0] == model.scale * cosines[-1]  # no bias
    from xdretrieve.rerank import FEATURES, ItemStats, Reranker

    stats = ItemStats.fit(list(ds.items)[3:], {})  # knows some of the model's items, not all
    ones = np.ones(len(FEATURES), dtype=np.float32)
    model.reranker = Reranker(ones, ones, ones, stats)
    model.index_points()
    rows = model.stats_rows(pids)
    np.testing.assert_array_equal(rows, stats.rows_of(items))
    assert rows[0] == -1 and rows[3] == 0 and rows[-1] == -1
    assert [model.point_of_item(i) for i in items] == pids
    empty = TrainedModel(model.path, model.manifest, model.weights, {}, None)
    np.testing.assert_array_equal(empty.rescore_points(pids, cosines), model.scale * cosines)


def test_a_model_whose_base_encoder_changed_is_refused(trained, tmp_path: Path) -> None:
    """Its adapters were trained on the old encoder's vectors: over another encoder's they
    would answer nonsense without a word."""
    import json
    import shutil

    from xdretrieve.errors import XDRetrieveError
    from xdretrieve.model import MANIFEST

    tmp, *_ = trained
    model = shutil.copytree(tmp / "model", tmp_path / "model")
    assert resolve_model(str(model)).trained == model.resolve()
    manifest = json.loads((model / MANIFEST).read_text())
    (model / MANIFEST).write_text(json.dumps({**manifest, "base_fingerprint": "0" * 16}))
    with pytest.raises(XDRetrieveError, match=f"was trained on encoder .* with fingerprint "
                                              f"{'0' * 16}, but that encoder is now "
                                              f"{manifest['base_fingerprint']}"):
        resolve_model(str(model))


@pytest.mark.parametrize("damage", ["manifest-not-json", "manifest-not-an-object", "newer-format",
                                    "weights-missing", "weights-cut-short"])
def test_a_damaged_or_newer_model_directory_is_refused_naming_its_file(trained, tmp_path: Path,
                                                                       damage: str) -> None:
    """A model directory copied half, edited by hand or written by a newer xdretrieve: an
    error naming the file and what to do, not a KeyError or zipfile traceback from loading."""
    import json
    import shutil

    from xdretrieve.errors import XDRetrieveError
    from xdretrieve.model import MANIFEST, WEIGHTS, TrainedModel, trained_items

    tmp, *_ = trained
    model = shutil.copytree(tmp / "model", tmp_path / "model")
    manifest = json.loads((model / MANIFEST).read_text())
    if damage == "manifest-not-json":
        (model / MANIFEST).write_text('{"format": 1, "kind"')
        expected = f"{model / MANIFEST}: not a readable model manifest"
    elif damage == "manifest-not-an-object":  # JSON, but a list: no format to read
        (model / MANIFEST).write_text(json.dumps([manifest]))
        expected = f"{model / MANIFEST}: model format None, but this xdretrieve reads format 1"
    elif damage == "newer-format":
        (model / MANIFEST).write_text(json.dumps({**manifest, "format": 2}))
        expected = f"{model / MANIFEST}: model format 2, but this xdretrieve reads format 1"
    elif damage == "weights-missing":
        (model / WEIGHTS).unlink()
        expected = f"{model / WEIGHTS}: the model's weights cannot be read"
    else:
        (model / WEIGHTS).write_bytes((model / WEIGHTS).read_bytes()[:1000])
        expected = f"{model / WEIGHTS}: the model's weights cannot be read"
    with pytest.raises(XDRetrieveError, match=re.escape(expected)):
        TrainedModel.load(model)
    if damage.startswith("weights"):  # what `index --model` reads of them first
        with pytest.raises(XDRetrieveError, match=re.escape(expected)):
            trained_items(model)


def test_a_stored_user_without_history_is_refused_by_name_with_the_tower_too(trained) -> None:
    """With a trained model a stored user's vector is the tower's query: an empty history is
    refused as pooling refuses it, not with numpy's error from inside the tower."""
    from xdretrieve.users import profile_vector

    tmp, _, _, _ = trained
    model = TrainedModel.load(tmp / "model")
    assert model.profile_target("books") == "movies"
    dim = int(model.manifest["dim"])
    one = np.ones((1, dim), dtype=np.float32)
    assert np.array_equal(profile_vector(one, "books", model=model),
                          model.user_vector(one, "movies"))
    with pytest.raises(ValueError, match="cannot pool an empty history"):
        profile_vector(np.zeros((0, dim), dtype=np.float32), "books", model=model)


def test_the_service_counts_the_items_new_to_the_trained_model(trained, tmp_path: Path) -> None:
    """PUT /items answers how many of the items the trained model has not seen (no learned
    bias: they rank by their vectors alone until the next finetune)."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.service import Service
    from xdretrieve.service_models import ItemIn, UpsertRequest

    tmp, ds, _, _ = trained
    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache")
    index_dataset(ds, settings)
    service = Service(settings)
    try:
        known = ds.items["movie-2"]
        answer = service.upsert(UpsertRequest(items=[
            ItemIn(item_id=known.item_id, domain=known.domain, title=known.title),
            ItemIn(item_id="movie-new", domain="movies", title="A film nobody has seen"),
            ItemIn(item_id="movie-new", domain="movies", title="A film nobody has seen")]))
        model = service.info().model  # GET /info says which model serves, and how it trained
    finally:
        service.close()
    assert (answer.upserted, answer.new_to_model) == (2, 1)
    assert model["kind"] == "adapter" and model["best_epoch"] == trained[3]["best_epoch"]


def test_trained_model_through_index_and_query(trained, tmp_path: Path, tiny_model: str) -> None:
    tmp, ds, base, _ = trained
    from xdretrieve.config import Settings

    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache")
    check_trained_model_store(tmp / "model", ds, settings)
    # without the re-ranker the answer is the model's exact top by scale * cosine + bias, also
    # when the search returns fewer items than the domain has (2 x 2 here) and the bias must
    # bring in the rest
    narrow = settings.model_copy(update={"rerank": False, "candidates": 2})
    with open_store(settings) as s:
        points = [p for p in s.scroll(ITEMS, with_vectors=True) if p.payload["domain"] == "movies"]
    with Retriever(narrow) as r:
        model = r.model
        model.bias = {i: float(b) for i, b in zip(
            model.bias, np.random.default_rng(0).normal(0, 2, len(model.bias)), strict=True)}
        model.index_points()  # a spread of biases, so that nearest by cosine is not the answer
        ids = [p.payload["item_id"] for p in points]
        vectors = np.stack([p.vector for p in points])
        beyond = 0  # queries whose answer lies partly outside the 4 nearest by cosine
        for t in range(len(THEMES)):
            query = r.history_query([f"book-{t}"], "movies")
            exact = model.rescore(ids, vectors @ query.vector)
            expected = [ids[k] for k in np.argsort(-exact, kind="stable")[:5]]
            assert [h.item_id for h in r.search(query, "movies", 5)] == expected
            beyond += not set(expected) <= {ids[k] for k in np.argsort(-(vectors @ query.vector))[:4]}
        assert beyond == len(THEMES)  # (5 asked, 4 searched): the bias scan found the rest
    # the tower and the search's products run on one BLAS thread, restored after the query
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before, seen = blas_threads(), {}
    with Retriever(settings) as r:
        tower, top = r.model.user_vector, r._model_top
        r.model.user_vector = lambda *a: (seen.setdefault("tower", blas_threads()), tower(*a))[1]
        r._model_top = lambda *a, **k: (seen.setdefault("search", blas_threads()),
                                        top(*a, **k))[1]
        assert r.recommend_history(["book-3"], "movies", 3)
    assert before and seen == {"tower": [1] * len(before), "search": [1] * len(before)}
    assert blas_threads() == before
    # the base encoder is not the store's encoder any more
    from xdretrieve.errors import EncoderMismatchError

    with pytest.raises(EncoderMismatchError):
        Retriever(settings.model_copy(update={"model": tiny_model}))


def test_threads_sharing_a_new_retriever_get_the_answers_of_one_thread(trained,
                                                                       tmp_path: Path) -> None:
    """A framework's thread pool (LangChain's and LlamaIndex's async paths run the retriever in
    threads) may send a new retriever its first queries together: what those build (the store's
    lock and shards, the point-id index, the items by bias, the text encoder) is built once.
    Before, a thread got 'open in another process or object', an AttributeError, or an answer
    without the items by bias."""
    import threading

    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset

    tmp, ds, _, _ = trained
    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache")
    index_dataset(ds, settings)
    users = sorted(ds.histories)
    queries = [(kind, u) for u in users for kind in ("user", "history", "text")]

    def ask(r: Retriever, kind: str, user: str) -> list[str]:
        if kind == "user":
            hits = r.recommend_user(user, "movies", 5)
        elif kind == "history":
            hits = r.recommend_history(list(ds.histories[user].get("books", ())), "movies", 5)
        else:
            hits = r.search_text(f"a film for {user}", "movies", 5)
        return [h.item_id for h in hits]

    with Retriever(settings) as r:
        expected = {q: ask(r, *q) for q in queries}
    for _ in range(5):
        got, errors = {}, []
        with Retriever(settings) as r:
            start = threading.Barrier(8)

            def work(k: int, r: Retriever = r, got: dict = got, errors: list = errors,
                     start: threading.Barrier = start) -> None:
                start.wait()
                for q in queries[k::8]:
                    try:
                        got[q] = ask(r, *q)
                    except Exception as e:  # noqa: BLE001 - collected, then asserted empty
                        errors.append(repr(e))

            threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert errors == [] and got == expected


def test_a_text_query_to_a_trained_model_finds_the_items_nearest_to_it(trained,
                                                                       tmp_path: Path) -> None:
    """A text query's vector is item-like: an item's own text finds that item first (its
    adapted vector is the stored one), whatever the items' biases; the model's user score
    would rank the items of high bias first."""
    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset

    tmp, ds, _, _ = trained
    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache")
    index_dataset(ds, settings)
    movies = [i for i in ds.items.values() if i.domain == "movies"]
    with Retriever(settings) as r:
        model = r.model
        model.bias = {i: float(b) for i, b in zip(
            model.bias, np.random.default_rng(1).normal(0, 2, len(model.bias)), strict=True)}
        model.index_points()
        for item in movies:
            hits = r.search_text(item_text(item, settings.text_template), "movies", 3)
            assert hits[0].item_id == item.item_id
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)  # a cosine
        with pytest.raises(NotFoundError, match="a text query to a trained model needs its "
                                                "target domain"):
            r.text_query("a film")  # an item-like vector needs the domain's adapter


def test_a_trained_model_on_a_qdrant_server_answers_as_on_the_embedded_store(
        trained, tmp_path: Path, monkeypatch) -> None:
    """The server code path (qdrant-client; its in-process mode speaks the server API) with a
    trained model: index, stored users, histories, texts and the re-ranker give the answers of
    the embedded store."""
    from qdrant_client import QdrantClient

    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.rerank import FEATURES, Reranker
    from xdretrieve.store.server import ServerStore

    tmp, ds, _, _ = trained
    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache", candidates=4)
    stats = _train_stats(ds)
    ones = np.ones(len(FEATURES), dtype=np.float32)
    n = len(THEMES)

    def answers(r: Retriever) -> list[list[tuple[str, float]]]:
        # a re-ranker over every feature, and biases wide enough that the best items lie
        # beyond the searched ones; the engine scores those beyond the 2 held in memory
        r.model.reranker = Reranker(ones, 0 * ones, ones, stats)
        r.model.bias = {i: float(b) for i, b in zip(r.model.bias, np.random.default_rng(2).normal(
            0, r.model.scale, len(r.model.bias)), strict=True)}
        r.model.index_points()
        hits = ([r.recommend_history([f"book-{t}"], "movies", 5) for t in range(n)]
                + [r.recommend_user(f"u{t}-0", "books", 5) for t in range(n)]
                + [r.search_text(item_text(ds.items[f"movie-{t}"], settings.text_template),
                                 "movies", 3) for t in range(n)])
        return [[(h.item_id, h.score) for h in found] for found in hits]

    monkeypatch.setattr("xdretrieve.retriever.MAX_BIAS_SCAN", 2)
    index_dataset(ds, settings)
    with Retriever(settings) as r:
        embedded = answers(r)
    server = ServerStore(QdrantClient(":memory:"), prefix="t_")
    try:
        index_dataset(ds, settings, store=server)
        with Retriever(settings, store=server) as r:
            served = answers(r)
    finally:
        server.close()
    for a, b in zip(embedded, served, strict=True):
        assert [i for i, _ in a] == [i for i, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-5)
    assert [found[0][0] for found in served[2 * n:]] == [f"movie-{t}" for t in range(n)]


def test_the_reranker_serves_only_the_target_domains_it_was_kept_for(trained,
                                                                     tmp_path: Path) -> None:
    """A re-ranker kept for movies re-ranks answers in movies, as one kept for every domain
    does; answers in books are then the model's own, as with the re-ranker off."""
    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.rerank import FEATURES, Reranker

    tmp, ds, _, _ = trained
    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache", candidates=6)
    index_dataset(ds, settings)
    stats = _train_stats(ds)
    weights = -np.ones(len(FEATURES), dtype=np.float32)  # far from the model's own order

    def answers(domains: tuple[str, ...] | None, rerank: bool = True) -> dict[str, list]:
        with Retriever(settings.model_copy(update={"rerank": rerank})) as r:
            r.model.reranker = Reranker(weights, 0 * weights, 1 - 0 * weights, stats,
                                        domains=domains)
            r.model.index_points()
            return {target: [[h.item_id for h in r.recommend_history([f"{source}-{t}"], target,
                                                                       4)]
                             for t in range(len(THEMES))]
                    for source, target in (("book", "movies"), ("movie", "books"))}

    everywhere, movies_only, off = answers(None), answers(("movies",)), answers(None, False)
    assert everywhere["movies"] != off["movies"] and everywhere["books"] != off["books"]
    assert movies_only["movies"] == everywhere["movies"]
    assert movies_only["books"] == off["books"]


def test_the_reranker_reads_a_long_history_as_it_was_fitted(trained, tmp_path: Path) -> None:
    """Training fits the re-ranker on the tower's window of a history (its last ``max_history``
    items); a longer history at query time is read the same way: items before the window
    change neither the candidates nor their features (counted over the whole history, the old
    items' co-occurrence would put their counterparts among them)."""
    import json
    import shutil

    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.model import MANIFEST, WEIGHTS
    from xdretrieve.rerank import FEATURES, Reranker

    tmp, ds, _, _ = trained
    model = tmp_path / "model"  # the trained model with a window of 2 items
    shutil.copytree(tmp / "model", model)
    manifest = json.loads((model / MANIFEST).read_text())
    manifest["max_history"] = 2
    (model / MANIFEST).write_text(json.dumps(manifest))
    weights = dict(np.load(model / WEIGHTS))
    weights["pos"] = weights["pos"][-2:]  # the positions of a history's last two items
    np.savez(model / WEIGHTS, **weights)
    stats = _train_stats(ds)
    weights = np.arange(1, len(FEATURES) + 1, dtype=np.float32)  # co-occurrence counts
    Reranker(weights, np.zeros_like(weights), np.ones_like(weights), stats).save(model)
    settings = Settings(store=tmp_path / "store", model=str(model), cache_dir=tmp / "cache")
    index_dataset(ds, settings)
    with Retriever(settings) as r:
        window = r.recommend_history(["book-2", "book-3"], "movies", 6)
        longer = r.recommend_history(["book-1", "book-7", "book-2", "book-3"], "movies", 6)
        with pytest.raises(NotFoundError, match="nope"):  # items before the window are checked
            r.recommend_history(["nope", "book-1", "book-2", "book-3"], "movies", 6)
        # and left out of the answer, as every item of a history is
        seen = window[0].item_id
        mixed = r.recommend_history([seen, "book-1", "book-2", "book-3"], "movies", 6)
        assert seen not in [h.item_id for h in mixed] and len(mixed) == 6
    assert [h.item_id for h in longer] == [h.item_id for h in window]
    for a, b in zip(longer, window, strict=True):
        assert a.why["features"] == pytest.approx(b.why["features"], abs=1e-6)
    # the older items do co-occur with items of the answer's domain: counted, they would matter
    ids = list(ds.items)
    assert stats.cooc[ids.index("book-1"), ids.index("movie-1")] > 0


def test_a_reranked_answer_says_why(trained, tmp_path: Path) -> None:
    """Each re-ranked hit carries what the re-ranker saw of it (``why``: the features, by hand
    here, and each one's part of the score, which sum to it); a text query's answer, which no
    re-ranker orders, has none. ``query --explain`` and the service's ``explain`` say the same."""
    import json
    import shutil

    from click.testing import CliRunner

    from xdretrieve.cli import main
    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.rerank import FEATURES, ItemStats, Reranker

    tmp, ds, _, _ = trained
    model = tmp_path / "model"  # the trained model with a re-ranker of known weights
    shutil.copytree(tmp / "model", model)
    ids = list(ds.items)
    train = [u for u, split in ds.splits.items() if split == "train"]
    texts = [item_text(ds.items[i], Settings().text_template) for i in ids]
    stats = ItemStats.fit(ids, {u: dict(ds.histories[u]) for u in train},
                          [ds.items[i].domain for i in ids], texts)
    weights = np.arange(1, len(FEATURES) + 1, dtype=np.float32)
    Reranker(weights, np.full_like(weights, 0.5), np.full_like(weights, 2.0), stats).save(model)
    settings = Settings(store=tmp_path / "store", model=str(model), cache_dir=tmp / "cache")
    index_dataset(ds, settings)
    with Retriever(settings) as r:
        hits = r.recommend_history(["book-3"], "movies", 4)
        for h in hits:
            f, parts = h.why["features"], h.why["contributions"]
            both = sum("book-3" in ds.histories[u].get("books", ())
                       and h.item_id in ds.histories[u].get("movies", ()) for u in train)
            pop = sum(ds.histories[u].get("movies", ()).count(h.item_id) for u in train)
            assert f["cooccurrence"] == pytest.approx(np.log1p(both), abs=1e-5)
            assert f["log_popularity"] == pytest.approx(np.log1p(pop), abs=1e-5)
            assert parts == pytest.approx({n: (f[n] - 0.5) / 2 * w
                                           for n, w in zip(FEATURES, weights, strict=True)},
                                          abs=1e-4)
            assert sum(parts.values()) == pytest.approx(h.score, abs=1e-4)
        assert hits[0].item_id == "movie-3" and hits[0].why["features"]["cooccurrence"] > 0
        assert all(h.why is None for h in r.search_text("volcanoes", "movies", 3))
    runner = CliRunner()
    ask = ["query", "--store", str(settings.store), "--domain", "movies", "--limit", "3"]
    out = runner.invoke(main, [*ask, "--history", "book-3", "--explain"])
    assert out.exit_code == 0, out.output
    assert "co-bought" in out.output and "counted most" in out.output
    out = runner.invoke(main, [*ask, "--history", "book-3", "--explain", "--json"])
    for hit in json.loads(out.output)["hits"]:
        assert set(hit["why"]["features"]) == set(FEATURES)
        assert sum(hit["why"]["contributions"].values()) == pytest.approx(hit["score"], abs=1e-4)
    out = runner.invoke(main, [*ask, "--text", "volcanoes", "--explain"])
    assert out.exit_code == 0 and "no re-ranker ordered this answer" in out.output
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from xdretrieve.service import create_app

    with TestClient(create_app(settings)) as c:
        body = {"item_ids": ["book-3"], "domain": "movies", "limit": 3}
        plain = c.post("/recommend/history", json=body).json()["hits"]
        told = c.post("/recommend/history", json={**body, "explain": True}).json()["hits"]
    assert [h["why"] for h in plain] == [None] * 3
    assert [h["item_id"] for h in told] == [h["item_id"] for h in plain]
    assert all(sum(h["why"]["contributions"].values()) == pytest.approx(h["score"], abs=1e-4)
               for h in told)


def test_the_http_service_serves_a_trained_store(trained, tmp_path: Path) -> None:
    """The HTTP service over a store built with a trained model: histories through the tower,
    texts by their nearest items, a new item adapted, found and counted as new to the model,
    an item of a domain the model has no adapter for refused with 400 and the store left as it
    was."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    httpx = pytest.importorskip("httpx")
    import json

    from tests.test_service import LiveServer
    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.model import model_summary
    from xdretrieve.service import create_app

    tmp, ds, _, manifest = trained
    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache")
    index_dataset(ds, settings)
    with LiveServer(create_app(settings)) as live, httpx.Client(base_url=live.url,
                                                                 timeout=60) as c:
        right = 0
        for t in range(len(THEMES)):
            r = c.post("/recommend/history", json={"item_ids": [f"book-{t}"], "domain": "movies",
                                                   "limit": 3})
            assert r.status_code == 200, r.text
            right += r.json()["hits"][0]["item_id"] == f"movie-{t}"
            text = item_text(ds.items[f"movie-{t}"], settings.text_template)
            hits = c.post("/search/text", json={"text": text, "domain": "movies"}).json()["hits"]
            assert hits[0]["item_id"] == f"movie-{t}" and hits[0]["score"] == pytest.approx(1, abs=1e-4)
        assert right >= len(THEMES) - 1
        new = {"item_id": "movie-new", "domain": "movies", "title": "Volcanoes again",
               "text": "a documentary about volcanoes and lava"}
        known = {"item_id": "movie-0", "domain": "movies", "title": "Retitled"}  # trained on
        r = c.put("/items", json={"items": [new, known]})
        # the answer counts the item the model learned no bias for (it seldom reaches a top 10)
        assert r.status_code == 200 and r.json()["new_to_model"] == 1, r.text
        hits = c.post("/search/text", json={"text": "Volcanoes again. a documentary about "
                                            "volcanoes and lava", "domain": "movies"}).json()
        assert hits["hits"][0]["item_id"] == "movie-new"
        song = {"item_id": "song-1", "domain": "music", "title": "A song"}
        r = c.put("/items", json={"items": [song]})
        assert r.status_code == 400 and "not music" in r.json()["detail"]
        info = c.get("/info").json()
        assert info["domains"] == ["books", "movies"]
        assert info["model"] == json.loads(json.dumps(model_summary(tmp / "model")))
        assert info["model"]["best_epoch"] == manifest["best_epoch"]  # as `info` shows it


def test_a_domain_the_model_was_not_trained_on_is_refused_before_any_work(
        trained, tmp_path: Path) -> None:
    """Items of a domain without an item adapter: a clear error (not a KeyError traceback),
    from index before it embeds or writes anything, and from the model itself (the service's
    item upserts go through it)."""
    import json

    from xdretrieve.config import Settings
    from xdretrieve.errors import XDRetrieveError
    from xdretrieve.indexer import index_dataset

    tmp, _, base, _ = trained
    data = write_paired_dataset(tmp_path / "data")
    with open(data / "items.jsonl", "a") as f:
        f.write(json.dumps({"item_id": "song-1", "domain": "music", "title": "A song"}) + "\n")
    store = tmp_path / "store"
    settings = Settings(store=store, model=str(tmp / "model"), cache_dir=tmp_path / "cache")
    with pytest.raises(XDRetrieveError, match="knows the domains books, movies, not music"):
        index_dataset(Dataset.from_dir(data), settings)
    assert not (tmp_path / "cache").exists()  # nothing embedded
    with open_store(settings) as s:
        assert s.read_info() is None and not s.exists(ITEMS)
    with pytest.raises(XDRetrieveError, match="not music"):
        TrainedModel.load(tmp / "model").item_vectors(base[:2], ["movies", "music"])


def test_a_moved_or_changed_trained_model_is_found_or_refused(trained, tmp_path: Path) -> None:
    """The store records where its trained model was: moved, it is refused with a message
    until ``--model`` says where it is now (then the same answers), and re-indexing there
    records the new place; changed in place (retrained), it is refused, not served over the
    old model's item vectors."""
    import shutil

    from xdretrieve.config import Settings
    from xdretrieve.errors import EncoderMismatchError, StoreError
    from xdretrieve.indexer import index_dataset

    tmp, ds, _, _ = trained
    model_dir, moved = tmp_path / "model", tmp_path / "moved"
    shutil.copytree(tmp / "model", model_dir)
    plain = Settings(store=tmp_path / "store", cache_dir=tmp / "cache")  # no --model
    index_dataset(ds, plain.model_copy(update={"model": str(model_dir)}))

    def answers(settings: Settings) -> list[tuple[str, float]]:
        with Retriever(settings) as r:
            hits = [h for t in range(len(THEMES))
                    for h in r.recommend_history([f"book-{t}"], "movies", 3)]
            # a text query loads the encoder: from where the model is now, not where it was
            hits += r.search(r.text_query("dragons", "movies"), "movies", 3)
            return [(h.item_id, h.score) for h in hits]

    expected = answers(plain)
    model_dir.rename(moved)
    with pytest.raises(StoreError, match=f"trained model '{model_dir}', which is not there.*"
                                         r"another model \(`xdretrieve index --data DIR --model "
                                         r"MODEL_DIR --recreate`\)"):
        Retriever(plain)
    given = plain.model_copy(update={"model": str(moved)})
    assert answers(given) == expected
    index_dataset(ds, given)  # nothing to re-embed; the store now records the new place
    assert answers(plain) == expected
    with np.load(moved / "weights.npz") as z:
        weights = dict(z)
    weights["bias"] = weights["bias"] + 1.0  # as if retrained in place
    np.savez(moved / "weights.npz", **weights)
    with pytest.raises(EncoderMismatchError, match="changed or retrained since; re-index with "
                       rf"it \(`xdretrieve index --data DIR --model {moved} --recreate`\)"):
        Retriever(plain)
    # what it says works (before, it said `index --model` alone, which index then refused,
    # telling to index with --model and the very same directory)
    with pytest.raises(EncoderMismatchError, match="changed or retrained since it built the "
                                                   "store: add --recreate"):
        index_dataset(ds, given)
    index_dataset(ds, given, recreate=True)
    with Retriever(plain) as r:
        assert r.recommend_history(["book-1"], "movies", 1)


def test_the_reranker_is_served_the_towers_exact_best(trained, tmp_path: Path) -> None:
    """The re-ranker is fitted on the tower's exact best candidates; served, it must get those
    too, also the items that the bias lifts from outside the nearest neighbours by cosine."""
    tmp, ds, _, _ = trained
    from xdretrieve.config import Settings
    from xdretrieve.rerank import FEATURES, ItemStats, Reranker

    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache", candidates=2)  # 1 from the tower, 4 searched
    check_trained_model_store(tmp / "model", ds, settings)
    with open_store(settings) as s:
        points = [p for p in s.scroll(ITEMS, with_vectors=True) if p.payload["domain"] == "movies"]
    ids = [p.payload["item_id"] for p in points]
    vectors = np.stack([p.vector for p in points])
    by_score = np.eye(len(FEATURES), dtype=np.float32)[FEATURES.index("score")]
    ones = np.ones(len(FEATURES), dtype=np.float32)
    with Retriever(settings) as r:
        model = r.model
        # no co-occurrence: every candidate comes from the tower; ranked by the tower's score
        model.reranker = Reranker(by_score, 0 * ones, ones, ItemStats.fit(ids, {}))
        model.bias = {i: float(b) for i, b in zip(
            model.bias, np.random.default_rng(1).normal(0, model.scale, len(model.bias)),
            strict=True)}  # as wide as the cosine's part: the best is not always near
        model.index_points()
        plain = Retriever(settings.model_copy(update={"rerank": False}), store=r.store)
        plain.model = model
        beyond = 0  # queries whose best lies outside the 4 nearest by cosine
        for t in range(len(THEMES)):
            query = r.history_query([f"book-{t}"], "movies")
            exact = model.rescore(ids, vectors @ query.vector)
            expected = [ids[k] for k in np.argsort(-exact, kind="stable")[:1]]
            assert [h.item_id for h in r.search(query, "movies", 1)] == expected
            # the model's own top 3 (re-ranker off): each item once, also one that both the
            # search and the scan by bias found
            top3 = [ids[k] for k in np.argsort(-exact, kind="stable")[:3]]
            assert [h.item_id for h in plain.search(query, "movies", 3)] == top3
            nearest = {ids[k] for k in np.argsort(-(vectors @ query.vector))[:4]}
            beyond += not set(expected) <= nearest
        assert beyond > 0  # the case that approximate candidates got wrong was tested


def test_stored_users_look_the_user_tower_query_up(trained, tmp_path: Path) -> None:
    """A store built with a two-domain model keeps each profile's user-tower query: a stored
    user's query reads no item vectors and runs no tower, and gives the vector and the answer
    (re-ranked) that running the tower on the history at query time gives."""
    tmp, ds, _, _ = trained
    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.rerank import FEATURES, ItemStats, Reranker, overlap_text
    from xdretrieve.users import PROFILE_VECTORS, TOWER_PROFILES

    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache")
    index_dataset(ds, settings)
    index_dataset(ds, settings, users=False)  # an items-only run keeps what the profiles hold
    with open_store(settings) as s:
        assert s.read_info().extra[PROFILE_VECTORS] == TOWER_PROFILES
    ids = list(ds.items)
    stats = ItemStats.fit(ids, ds.histories, [ds.items[i].domain for i in ids],
                          [overlap_text(ds.items[i].title, ds.items[i].text) for i in ids])
    ones = np.ones(len(FEATURES), dtype=np.float32)
    reranker = Reranker(np.linspace(1, 2, len(FEATURES), dtype=np.float32), 0 * ones, ones, stats)
    reads: list[tuple[str, bool]] = []
    with Retriever(settings) as looked_up:
        # as a store an older release built answers: its info does not say the profiles hold
        # the tower's queries (they held pooled vectors), so the tower runs on the history
        info = looked_up.store.read_info()
        del info.extra[PROFILE_VECTORS]
        with pytest.MonkeyPatch.context() as m:
            m.setattr(looked_up.store, "read_info", lambda: info)
            computed = Retriever(settings, store=looked_up.store)
        assert looked_up._tower_profiles and not computed._tower_profiles
        for r in (looked_up, computed):
            r.model.reranker = reranker
            r.model.index_points()
        retrieve = looked_up.store.retrieve
        looked_up.store.retrieve = lambda c, ids, with_vectors=False: (
            reads.append((c, with_vectors)), retrieve(c, ids, with_vectors))[1]
        tower = looked_up.model.user_vector

        def answer(r: Retriever, user: str, domain: str, no_text: bool = False):
            reads.clear()
            r.model.user_vector = (lambda *a: pytest.fail("the tower ran")) if (
                r is looked_up) else tower
            stats.knows_texts = (lambda *a: False) if no_text else (
                lambda *a: ItemStats.knows_texts(stats, *a))
            query = r.user_query(user, domain)
            return query, [h.item_id for h in r.search(query, domain, 5)], list(reads)

        for user in list(ds.histories)[:12]:
            for domain in ("books", "movies"):
                a, hits, seen = answer(looked_up, user, domain)
                b, expected, _ = answer(computed, user, domain)
                np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)
                assert (a.history, a.exclude, hits) == (b.history, b.exclude, expected)
                assert seen and (ITEMS, True) not in seen  # no item vectors read
        # history items the re-ranker's statistics have no text for: their text is read
        a, hits, with_text = answer(looked_up, user, domain, no_text=True)
        b, expected, _ = answer(computed, user, domain, no_text=True)
        assert a.history_text == "" and b.history_text and hits == expected
        assert with_text.count((ITEMS, False)) == seen.count((ITEMS, False)) + 1


def test_evaluate_runs_ablation_rows_side_by_side(trained, tmp_path: Path,
                                                  tiny_model: str) -> None:
    """`evaluate --no-rerank-row --compare NAME=DIR`: each variant is its own row, run through
    the retriever with its own model and re-ranker setting."""
    import json

    from click.testing import CliRunner

    from xdretrieve.evaluate.cli import evaluate

    tmp, _, _, _ = trained
    result = CliRunner().invoke(evaluate, [
        "--data", str(tmp / "data"), "--direction", "books->movies", "--method", "xdretrieve",
        "--method", "zeroshot", "--method", "xdretrieve-base",  # asked for by name too: once
        "--model", str(tmp / "model"), "--no-rerank-row", "--compare", f" base = {tiny_model} ",
        "--pooling", "mean", "--out", str(tmp_path / "out"), "-q"],
        env={"XDR_CACHE_DIR": str(tmp / "cache")})
    assert result.exit_code == 0, result.output
    assert "note:" not in result.output  # a trained --model: its row is the pipeline
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    text = json.dumps(rows)
    for name in ("xdretrieve", "xdretrieve-no-rerank", "xdretrieve-base", "zeroshot"):
        assert f"books->movies  {name} " in result.output
    assert '"rerank": false' in text and str((tmp / "model").resolve()) in text
    by_name = {m["method"]: m["config"] for m in rows["directions"][0]["methods"]}
    assert list(by_name) == ["xdretrieve", "zeroshot", "xdretrieve-base", "xdretrieve-no-rerank"]
    # the no-rerank row is --model's pipeline, re-ranker off; the --pooling asked for recorded
    trained_row, no_rerank = by_name["xdretrieve"], by_name["xdretrieve-no-rerank"]
    assert (no_rerank["fingerprint"], no_rerank["rerank"]) == (trained_row["fingerprint"], False)
    assert trained_row["rerank"] and trained_row["pooling"] == "mean"
    # the no-fine-tuning row is the encoder this model was trained over, not the packaged one
    zeroshot = next(m for m in rows["directions"][0]["methods"] if m["method"] == "zeroshot")
    assert zeroshot["config"]["model"] == resolve_model(tiny_model).name
    # a variant of a pretrained encoder pools as --pooling says, as the xdretrieve row would
    base = next(m for m in rows["directions"][0]["methods"] if m["method"] == "xdretrieve-base")
    assert base["config"]["pooling"] == "mean"
    for spec in ("nothing", "=dir", "name= "):
        bad = CliRunner().invoke(evaluate, ["--data", str(tmp / "data"), "--compare", spec])
        assert bad.exit_code == 2 and f"'{spec}' is not NAME=DIR" in bad.output


def test_finetune_refuses_a_trained_model_as_its_base_before_reading_data(
        trained, tmp_path: Path) -> None:
    """Before: the data was read (and a bad row in it reported first), then the refusal."""
    from click.testing import CliRunner

    from xdretrieve.cli import main

    tmp, _, _, _ = trained
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.jsonl").write_text('{"item_id": "x", "domain": "books", "title": ""}\n')
    (data / "interactions.csv").write_text("user_id,item_id\nu,x\n")
    r = CliRunner().invoke(main, ["finetune", "--data", str(data), "--out", str(tmp_path / "m"),
                                  "--model", str(tmp / "model")])
    assert r.exit_code == 2 and "a model directory `xdretrieve finetune` wrote cannot be " \
        "trained again: give the encoder it started from" in r.output
    assert "title" not in r.output and not (tmp_path / "m").exists()


def test_info_summarises_the_trained_model_of_a_store(trained, tmp_path: Path) -> None:
    """Before, `info` named the model's folder and nothing it had learned."""
    import json
    import shutil
    from datetime import datetime, timedelta

    from click.testing import CliRunner

    from xdretrieve.cli import main
    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset

    tmp, ds, _, manifest = trained
    model = tmp_path / "model"
    shutil.copytree(tmp / "model", model)
    store = tmp_path / "store"
    index_dataset(ds, Settings(store=store, model=str(model), cache_dir=tmp / "cache"))
    out = json.loads(CliRunner().invoke(main, ["info", "--store", str(store)]).output)["model"]
    best = manifest["history"][manifest["best_epoch"] - 1]
    assert out["kind"] == "adapter" and out["best_epoch"] == manifest["best_epoch"]
    assert out["users"] == manifest["split"] and out["epochs"] == len(manifest["history"])
    assert out["trained_at"] == manifest["created_at"]  # when: which of two models it is
    # said with its offset (UTC): a time without one reads differently on another machine
    assert datetime.fromisoformat(manifest["created_at"]).utcoffset() == timedelta(0)
    assert out["valid"] == {k: round(v, 4) for k, v in best.items() if "/" in k}
    kept = manifest["reranker"]["kept"]
    assert out["reranker"] == (f"served into {', '.join(kept)}" if kept else
                               "served nowhere (no target domain gained on valid users)")
    # the summary is of the manifest: an earlier best epoch's figures (not the last's), and
    # the re-ranker's domains, both ways
    for best_epoch, kept in ((1, ["movies", "books"]), (len(manifest["history"]), [])):
        edited = {**manifest, "best_epoch": best_epoch,
                  "reranker": {**manifest["reranker"], "kept": kept}}
        (model / MANIFEST).write_text(json.dumps(edited))
        out = json.loads(CliRunner().invoke(main, ["info", "--store", str(store)]).output)
        best = manifest["history"][best_epoch - 1]
        assert out["model"]["valid"] == {k: round(v, 4) for k, v in best.items() if "/" in k}
        assert out["model"]["reranker"] == ("served into movies, books" if kept else
                                            "served nowhere (no target domain gained on valid "
                                            "users)")
    first, last = ({k: v for k, v in h.items() if "/" in k}
                   for h in (manifest["history"][0], manifest["history"][-1]))
    assert first != last  # so that the figures tell the two epochs apart
    shutil.rmtree(model)
    out = json.loads(CliRunner().invoke(main, ["info", "--store", str(store)]).output)["model"]
    assert out == f"not found at {model.resolve()} (moved? give --model where it is now)"


def test_no_history_gets_the_items_popular_among_the_model_s_train_users(
        trained, tmp_path: Path) -> None:
    """With a trained model, a user with no history gets the train users' most popular items
    (the statistics the model learned from), not those of whoever the store was indexed with:
    here one fan of one movie."""
    import shutil

    from xdretrieve.config import Settings
    from xdretrieve.data import Interaction
    from xdretrieve.indexer import index_dataset
    from xdretrieve.rerank import FEATURES, Reranker

    tmp, ds, _, _ = trained
    model = tmp_path / "model"  # the trained model with a re-ranker and its statistics
    shutil.copytree(tmp / "model", model)
    stats = _train_stats(ds)
    ones = np.ones(len(FEATURES), dtype=np.float32)
    Reranker(ones, np.zeros_like(ones), ones, stats).save(model)
    settings = Settings(store=tmp_path / "store", model=str(model), cache_dir=tmp / "cache")
    index_dataset(Dataset(ds.items, [Interaction("fan", "movie-11", "movies", 0.0)]), settings)
    with Retriever(settings) as r:
        assert r.info.extra["popular"]["movies"] == ["movie-11"]
        learned = r.model.reranker.stats.popular("movies")[:3]
        assert [h.item_id for h in r.recommend_history([], "movies", 3)] == learned


def test_items_by_bias_beyond_the_search_are_scored_in_memory(trained, tmp_path: Path,
                                                              monkeypatch) -> None:
    """Items beyond the search (the re-ranker's co-occurring candidates) are scored exactly as
    the engine scores them; the engine is asked only for those whose vectors are not held."""
    tmp, ds, _, _ = trained
    import xdretrieve.retriever as retriever_module
    from xdretrieve.config import Settings

    monkeypatch.setattr(retriever_module, "MAX_BIAS_SCAN", 3)  # 3 of each domain's items held
    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache")
    check_trained_model_store(tmp / "model", ds, settings)
    with Retriever(settings) as r:
        pids = [p.id for p in r.store.scroll(ITEMS, fields=["domain"])
                if p.payload["domain"] == "movies"]
        query = r.history_query(["book-0", "book-1"], "movies")
        engine = r.store.similarity(ITEMS, query.vector, pids, "movies")
        asked: list[int] = []
        similarity = r.store.similarity
        monkeypatch.setattr(r.store, "similarity",
                            lambda c, v, ids, d=None: asked.extend(ids) or similarity(c, v, ids, d))
        got, cosines, scores = r._score_points(query.vector, pids, "movies")
        held = set(r._bias_head("movies").pids.tolist())
        assert len(held) == 3 and sorted(asked) == sorted(set(pids) - held)
        assert sorted(got) == sorted(engine)
        expected = np.array([engine[p] for p in got], dtype=np.float32)
        np.testing.assert_allclose(cosines, expected, atol=1e-5)
        np.testing.assert_allclose(scores, r.model.rescore_points(got, expected), atol=1e-4)


def test_cli_finetune_writes_its_model_directory_whole_or_not_at_all(tiny_model: str,
                                                                     tmp_path: Path,
                                                                     monkeypatch) -> None:
    """`finetune --out` replaces a model only once the new one is complete: an interrupted run
    leaves the earlier model byte for byte and nothing beside it; a folder that is not a model
    directory is refused untouched."""
    import json

    from click.testing import CliRunner

    from xdretrieve.cli import main
    from xdretrieve.model import MANIFEST, WEIGHTS

    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    data = write_paired_dataset(tmp_path / "data", users_per_theme=5)
    splits = (data / "users.csv").read_text().replace("-1,train", "-1,valid")
    (data / "users.csv").write_text(splits)
    out = tmp_path / "model"
    args = ["finetune", "--data", str(data), "--out", str(out), "--model", tiny_model,
            "--dim", "8", "--epochs", "2", "-q"]

    def finetune(*extra: str) -> object:
        return CliRunner().invoke(main, [*args, *extra])

    first = finetune()
    assert first.exit_code == 0 and (out / MANIFEST).is_file()
    assert "users: 36 train, 12 valid, 12 test (users.*)\n" in first.output  # as it names them
    # under 10 s (a tiny training takes about 1), said to a tenth (before: 'trained in 0 s')
    seconds = json.loads((out / MANIFEST).read_text())["train_seconds"]
    said = f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"
    assert f"trained in {said} s; best epoch" in first.output
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def interrupted(dataset, base, out_dir, *rest, **options):
        (Path(out_dir) / WEIGHTS).write_bytes(b"half")  # what was written when it stopped
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("xdretrieve.train.adapter.train_adapter", interrupted)
        assert finetune("--seed", "1").exit_code != 0
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "model"]
    assert finetune("--seed", "1").exit_code == 0  # a complete run replaces it
    assert (out / WEIGHTS).read_bytes() != before[WEIGHTS]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "model"]
    listing = sorted(p.name for p in data.iterdir())
    refused = CliRunner().invoke(main, [*args[:3], "--out", str(data), *args[5:]])
    # a usage error, before the data is read
    assert refused.exit_code == 2 and "is not an xdretrieve model directory" in refused.output
    assert sorted(p.name for p in data.iterdir()) == listing
    # the current folder, even empty, is refused (publishing renames it; before: a traceback,
    # "PosixPath('.') has an empty name"); a name that leads elsewhere is where it leads
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    refused = CliRunner().invoke(main, [*args[:3], "--out", ".", *args[5:]])
    assert refused.exit_code == 2 and ". is the current folder" in refused.output
    assert finetune().exit_code == 0 and sorted(p.name for p in here.iterdir()) == []
    (here / "sub").mkdir()
    monkeypatch.chdir(here / "sub")
    moved = CliRunner().invoke(main, [*args[:3], "--out", "../../model2", *args[5:]])
    assert moved.exit_code == 0 and (tmp_path / "model2" / MANIFEST).is_file()


def test_a_model_is_written_beside_its_out_folder_made_for_it_and_never_over_a_file(
        tmp_path: Path) -> None:
    """The model is written in a hidden sibling of ``out`` and published by a rename on that
    one file system (from a temporary folder elsewhere, /tmp on a file system of its own, the
    rename fails once training is done); ``out`` may name folders that do not exist yet; a file
    there (a typo) is refused with the reason, from Python too (the CLI's --out takes folders
    only), not with a traceback from listing it as a folder."""
    from xdretrieve.errors import XDRetrieveError
    from xdretrieve.model import StagedModelDir, is_model_dir

    out = tmp_path / "models" / "2026" / "shop.model"
    with StagedModelDir(out) as stage:
        assert stage.path.parent == out.parent and stage.path.name.startswith(".shop.model.")
        (stage.path / MANIFEST).write_text("{}")
        stage.publish()
    assert is_model_dir(out) and [p.name for p in out.parent.iterdir()] == ["shop.model"]
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(XDRetrieveError, match="notes.txt exists and is not an xdretrieve model"):
        StagedModelDir(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # a folder made for it beforehand (`mkdir shop.model`) is taken while empty, and refused
    # once something else is in it
    made = tmp_path / "made.model"
    made.mkdir()
    with StagedModelDir(made) as stage:
        (stage.path / MANIFEST).write_text("{}")
        stage.publish()
    assert is_model_dir(made)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(XDRetrieveError, match="other exists and is not an xdretrieve model"):
        StagedModelDir(tmp_path / "other")


def test_hyper_parameters_out_of_range_are_refused_by_name(tmp_path: Path) -> None:
    """A config out of range stops when it is made, naming every bad field (epochs=0 used to
    end in a traceback from torch after the data was read; dim=0 trained a space of no
    dimension and said nothing); the CLI refuses such an option before any work."""
    from click.testing import CliRunner

    from xdretrieve import ConfigError  # exported beside the other errors
    from xdretrieve.cli import main
    from xdretrieve.train.full import FullConfig

    with pytest.raises(ConfigError, match=r"AdapterConfig: dim=0 \(allowed: >= 1\); "
                                          r"lr=-1 \(allowed: > 0\)$"):
        AdapterConfig(dim=0, lr=-1)
    with pytest.raises(ValueError, match="epochs=0"):  # a bad value, as Python says it
        AdapterConfig(epochs=0)
    for bad in ({"epochs": 0}, {"pooling": "max"}, {"dropout": 1.0}, {"time_budget_s": -1},
                {"seed": -1}, {"batch_size": "8"}, {"patience": 0}, {"max_history": 0},
                {"coral": -0.5}, {"weight_decay": -1}, {"rerank_fraction": 1.0},
                {"rerank_candidates": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            AdapterConfig(**bad)
    for bad in ({"batch_size": 0}, {"max_pairs": 0}, {"hard_negative_ranks": (3, 3)},
                {"warmup": -0.1}, {"num_workers": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            FullConfig(**bad)
    AdapterConfig(dim=8, epochs=1, coral=0, rerank_fraction=0)  # the edges that are allowed
    FullConfig(max_pairs=None, hard_negatives=0, hard_negative_ranks=(0, 3), time_budget_s=None)
    for option, value in (("--epochs", "0"), ("--dim", "0"), ("--time-budget", "-5"),
                          ("--seed", "-3")):
        out = CliRunner().invoke(main, ["finetune", "--data", str(tmp_path), "--out",
                                        str(tmp_path / "m"), option, value])
        assert out.exit_code == 2 and f"Invalid value for '{option}'" in out.output
    assert not (tmp_path / "m").exists()
    # --pooling offers exactly the poolings the config accepts
    from xdretrieve.train.cli import finetune
    offered = next(p.type.choices for p in finetune.params if p.name == "pooling")
    assert set(offered) == {"attention", "mean"}
    for pooling in offered:
        assert AdapterConfig(pooling=pooling).pooling == pooling


def test_cli_finetune_without_users_csv_trains_on_the_split_evaluate_uses(tiny_model: str,
                                                                          tmp_path: Path,
                                                                          monkeypatch) -> None:
    """A shop's data without users.csv trains on the seeded split that `evaluate` draws too
    (whatever --seed the training gets): its statistics count the train users of that split
    and nothing of its valid or test users."""
    from click.testing import CliRunner

    from xdretrieve.cli import main
    from xdretrieve.evaluate.protocol import Protocol
    from xdretrieve.rerank import ItemStats

    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    data = write_paired_dataset(tmp_path / "data", users_per_theme=5)
    (data / "users.csv").unlink()
    out = tmp_path / "model"
    result = CliRunner().invoke(main, ["finetune", "--data", str(data), "--out", str(out),
                                       "--model", tiny_model, "--dim", "8", "--epochs", "2",
                                       "--seed", "7", "--pooling", "mean", "--coral", "0.5",
                                       "--time-budget", "500", "-q"])
    assert result.exit_code == 0, result.output
    assert "epoch 1:" not in result.output  # -q: no per-epoch lines
    # each option reaches the training (a dropped one would train with its default, silently)
    manifest = json.loads((out / MANIFEST).read_text())
    assert {k: manifest["config"][k] for k in ("dim", "epochs", "seed", "pooling", "coral",
                                               "time_budget_s")} == {
        "dim": 8, "epochs": 2, "seed": 7, "pooling": "mean", "coral": 0.5, "time_budget_s": 500}
    with np.load(out / WEIGHTS) as weights:
        assert weights["proj_w_books"].shape[1] == 8
    # what it says of the model is its best epoch's figures (the one kept), not the last's
    best = manifest["history"][manifest["best_epoch"] - 1]
    said = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if "/" in k)
    assert f"best epoch {manifest['best_epoch']} on valid users: {said}\n" in result.output
    split = Protocol(Dataset.from_dir(data)).split
    assert (len(split.train), len(split.valid), len(split.test)) == (51, 3, 6)
    assert "users: 51 train, 3 valid, 6 test (no users.*: a seeded split" in result.output
    stats = ItemStats.load(out / "item_stats.npz")
    counted = {i: 0.0 for i in stats.ids}
    ds = Dataset.from_dir(data)
    for u in split.train:
        for items in ds.histories[u].values():
            for i in items:
                counted[i] += 1
    assert stats.popularity.tolist() == [counted[i] for i in stats.ids]


def test_three_domains_train_index_and_answer_every_direction(tiny_model: str,
                                                              tmp_path: Path) -> None:
    """A dataset of three domains (the checked pair may have more than two): the adapter trains
    every direction, index stores pooled profiles (no single other domain), and a stored user
    is answered in each domain from their other two, their own items there left out."""
    import json

    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset

    data = write_paired_dataset(tmp_path / "data", users_per_theme=5)
    splits = (data / "users.csv").read_text().replace("-1,train", "-1,valid")
    (data / "users.csv").write_text(splits)
    with open(data / "items.jsonl", "a") as f:
        for t, theme in enumerate(THEMES):
            f.write(json.dumps({"item_id": f"song-{t}", "domain": "songs",
                                "title": f"Songs of {theme}", "text": f"an album about {theme}"})
                    + "\n")
    rows = [f"u{t}-{k},song-{t},songs,2" for t in range(len(THEMES)) for k in range(5)]
    with open(data / "interactions.csv", "a") as f:
        f.write("\n".join(rows) + "\n")
    ds = Dataset.from_dir(data)
    assert list(ds.domains) == ["books", "movies", "songs"]
    settings = Settings(store=tmp_path / "store", model=tiny_model, cache_dir=tmp_path / "cache")
    ref = resolve_model(tiny_model)
    base = Encoder.from_settings(settings, ref).encode(
        [item_text(i, settings.text_template) for i in ds.items.values()])
    config = AdapterConfig(dim=16, epochs=40, patience=40, batch_size=8, lr=1e-2, seed=0)
    manifest = train_adapter(ds, base, tmp_path / "model", ref.name, ref.fingerprint, config)
    assert {k.split("/")[0] for k in manifest["history"][0] if "/" in k} == {
        f"{s}->{t}" for s in ds.domains for t in ds.domains if s != t}
    trained_settings = settings.model_copy(update={"model": str(tmp_path / "model")})
    index_dataset(ds, trained_settings)
    with Retriever(trained_settings) as r:
        assert "profile_vectors" not in r.info.extra  # pooled: only tower queries are noted
        for target, prefix in (("books", "book"), ("movies", "movie"), ("songs", "song")):
            query = r.user_query("u3-1", target)
            assert query.source == f"user u3-1 ({'+'.join(d for d in ds.domains if d != target)}"\
                                   " history)"
            hits = r.recommend_user("u3-1", target, 3)
            assert len(hits) == 3 and f"{prefix}-3" not in {h.item_id for h in hits}
        right = sum(r.recommend_history([f"book-{t}", f"movie-{t}"], "songs", 1)[0].item_id
                    == f"song-{t}" for t in range(len(THEMES)))
        assert right >= len(THEMES) - 2


def test_domain_names_with_spaces_and_signs_go_through_every_command(tiny_model: str,
                                                                     tmp_path: Path,
                                                                     monkeypatch) -> None:
    """A shop names its catalogs as people do ('Books & Comics/Manga', 'Films (vidéo)'):
    finetune, index, query --domain and evaluate take such names as given, and the answer
    comes from the named domain."""
    import json

    from click.testing import CliRunner

    from xdretrieve.cli import main

    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    books, films = "Books & Comics/Manga", "Films (vidéo)"
    data = write_paired_dataset(tmp_path / "data", users_per_theme=5)
    for name in ("items.jsonl", "interactions.csv"):
        text = (data / name).read_text().replace('"books"', json.dumps(books))
        text = text.replace('"movies"', json.dumps(films))
        (data / name).write_text(text.replace(",books,", f",{books},")
                                 .replace(",movies,", f",{films},"))
    splits = (data / "users.csv").read_text().replace("-1,train", "-1,valid")
    (data / "users.csv").write_text(splits)
    assert sorted(Dataset.from_dir(data).domains) == sorted([books, films])

    def cli(*args: str) -> str:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    model, store = str(tmp_path / "model"), str(tmp_path / "store")
    cli("finetune", "--data", str(data), "--out", model, "--model", tiny_model, "--dim", "8",
        "--epochs", "2", "-q")
    assert "new to the trained model" not in cli("index", "--data", str(data), "--model",
                                                  model, "--store", store, "-q")
    # an item added to the catalog since: indexed, and said to be unknown to the model
    with open(data / "items.jsonl", "a") as f:
        f.write(json.dumps({"item_id": "movie-new", "domain": films, "title": "Brand new"})
                + "\n")
    said = cli("index", "--data", str(data), "--model", model, "--store", store, "-q")
    n_items = len(Dataset.from_dir(data).items)
    assert f"note: 1 of the {n_items} items are new to the trained model" in said
    hits = json.loads(cli("query", "--store", store, "--history", "book-3", "--domain", films,
                          "-k", "3", "--json"))["hits"]
    assert len(hits) == 3 and all(h["item_id"].startswith("movie-") for h in hits)
    out = tmp_path / "results"
    said = cli("evaluate", "--data", str(data), "--model", model, "--method", "popularity",
               "--method", "xdretrieve", "--out", str(out), "-q")
    assert "untrained" not in said  # the trained pipeline: no note that it is not
    results = json.loads((out / "results.json").read_text())
    assert sorted(d["direction"] for d in results["directions"]) == sorted(
        [f"{books}->{films}", f"{films}->{books}"])
    assert all({m["method"] for m in d["methods"]} == {"popularity", "xdretrieve"}
               for d in results["directions"])


def test_users_missing_from_users_csv_are_reported_once(tiny_model: str, tmp_path: Path,
                                                        caplog) -> None:
    """Training splits its dataset more than once (finetune, then the trainer; the CLI also
    reports the split): the warning that some users are in no split came as many times."""
    import logging

    from xdretrieve.config import Settings
    from xdretrieve.train.finetune import finetune

    data = write_paired_dataset(tmp_path / "data", users_per_theme=5)
    rows = (data / "users.csv").read_text().replace("-1,train", "-1,valid").splitlines()
    (data / "users.csv").write_text("\n".join(rows[:-3]) + "\n")  # 3 users left out
    ds = Dataset.from_dir(data)
    with caplog.at_level(logging.WARNING):
        finetune(ds, tmp_path / "model", Settings(model=tiny_model, cache_dir=tmp_path / "c"),
                 AdapterConfig(dim=8, epochs=1, batch_size=8, seed=0))
    said = [r.getMessage() for r in caplog.records if "not in users.csv" in r.getMessage()]
    assert said == ["3 user(s) with interactions are not in users.csv; they are not used"]


def test_a_domain_nobody_bought_from_is_left_out_of_training(tiny_model: str, tmp_path: Path,
                                                             caplog) -> None:
    """Items of a domain without a single interaction (a catalog not yet sold) do not stop
    training: the directions nobody took are named in a warning and not trained, the others
    are."""
    import json
    import logging

    from xdretrieve.config import Settings

    data = write_paired_dataset(tmp_path / "data", users_per_theme=5)
    splits = (data / "users.csv").read_text().replace("-1,train", "-1,valid")
    (data / "users.csv").write_text(splits)
    with open(data / "items.jsonl", "a") as f:
        for k in range(3):
            f.write(json.dumps({"item_id": f"song-{k}", "domain": "songs",
                                "title": f"Song {k}"}) + "\n")
    ds = Dataset.from_dir(data)
    settings = Settings(model=tiny_model, cache_dir=tmp_path / "cache")
    ref = resolve_model(tiny_model)
    base = Encoder.from_settings(settings, ref).encode(
        [item_text(i, settings.text_template) for i in ds.items.values()])
    config = AdapterConfig(dim=8, epochs=2, batch_size=8, seed=0)
    with caplog.at_level(logging.WARNING, logger="xdretrieve.train.adapter"):
        manifest = train_adapter(ds, base, tmp_path / "model", ref.name, ref.fingerprint, config)
    assert "those directions are not trained" in caplog.text and "books->songs" in caplog.text
    assert {k.split("/")[0] for k in manifest["history"][0] if "/" in k} == {
        "books->movies", "movies->books"}


def test_coral_compares_every_pair_of_domains() -> None:
    """The CORAL term is zero between domains of one distribution and sees a third domain that
    differs (not only the first two); for two domains it is CORAL's own formula."""
    import torch

    from xdretrieve.train.adapter import coral_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g)
    wide = 3 * torch.randn(500, 4, generator=g)
    assert float(coral_distance([a, a])) == 0.0
    assert float(coral_distance([a, a, wide])) > 0.1
    cov = [torch.cov(x.T) for x in (a, b)]
    assert torch.allclose(coral_distance([a, b]), ((cov[0] - cov[1]) ** 2).sum() / (4 * 16))


def test_finetune_from_python_writes_what_index_loads(trained, tiny_model: str,
                                                      tmp_path: Path) -> None:
    """`xdretrieve.finetune`, what the CLI runs, for a stack that trains its own models: a model
    directory that index loads; a trained model as the base encoder, or an unknown mode, is
    refused before any work."""
    import xdretrieve
    from xdretrieve.config import Settings
    from xdretrieve.errors import XDRetrieveError
    from xdretrieve.model import is_model_dir

    tmp, ds, _, _ = trained
    settings = Settings(model=tiny_model, cache_dir=tmp / "cache")
    config = AdapterConfig(dim=8, epochs=2, batch_size=8, lr=1e-2)
    manifest = xdretrieve.finetune(ds, tmp_path / "m", settings, config)
    assert manifest["kind"] == "adapter" and manifest["dim"] == 8 and is_model_dir(tmp_path / "m")
    store = Settings(store=tmp_path / "store", model=str(tmp_path / "m"), cache_dir=tmp / "cache")
    xdretrieve.index_dataset(ds, store)
    with Retriever(store) as r:
        assert r.model is not None and len(r.recommend_history(["book-1"], "movies", 3)) == 3
    # full mode without a FullConfig: its defaults, with the adapter config's seed
    config = AdapterConfig(dim=8, epochs=1, batch_size=8, seed=3)
    manifest = xdretrieve.finetune(ds, tmp_path / "f", settings, config, mode="full")
    assert manifest["kind"] == "full" and manifest["finetune"]["config"]["seed"] == 3
    with pytest.raises(XDRetrieveError, match="not a trained model directory"):
        xdretrieve.finetune(ds, tmp_path / "m2", Settings(model=str(tmp / "model")), config)
    with pytest.raises(XDRetrieveError, match="unknown mode 'partial'"):
        xdretrieve.finetune(ds, tmp_path / "m2", settings, config, mode="partial")
    assert not (tmp_path / "m2").exists()


def test_finetune_embeds_with_the_settings_template_and_shows_its_epochs(
        tiny_model: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """Adapter mode trains over the items as the settings' template writes them (the text that
    index embeds with the same settings), and ``progress`` prints each epoch."""
    import xdretrieve
    from xdretrieve.config import Settings

    seen: list[str] = []
    encode = Encoder.encode

    def spy(self, texts, *args, **kwargs):
        seen.extend(texts)
        return encode(self, texts, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", spy)
    ds = Dataset.from_dir(write_paired_dataset(tmp_path / "data"))
    settings = Settings(model=tiny_model, cache_dir=tmp_path / "cache",
                        text_template="{domain}: {title}")
    xdretrieve.finetune(ds, tmp_path / "m", settings, AdapterConfig(dim=8, epochs=2, batch_size=8),
                        progress=True)
    assert "books: The dragons chronicles" in seen and "movies: Jazz: the movie" in seen
    assert re.search(r"^epoch 2: loss \d", capsys.readouterr().out, re.M)


def test_finetune_refuses_a_dataset_of_one_domain_saying_so(tmp_path: Path) -> None:
    """One domain has no direction to learn: said as such, before anything is embedded (not
    as a lack of valid users, the first check it would fail later)."""
    import xdretrieve
    from xdretrieve.errors import XDRetrieveError

    data = write_paired_dataset(tmp_path / "data")
    for name in ("items.jsonl", "interactions.csv"):
        lines = (data / name).read_text().splitlines(keepends=True)
        (data / name).write_text("".join(line for line in lines if "movie" not in line))
    ds = Dataset.from_dir(data)
    with pytest.raises(XDRetrieveError, match=r"has one domain \(books\): cross-domain"):
        xdretrieve.finetune(ds, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_cli_finetune_draws_valid_users_when_users_csv_names_none(tiny_model: str,
                                                                 tmp_path: Path,
                                                                 monkeypatch) -> None:
    """A users.csv of train and test users only (a common shape) trains: valid users are
    drawn from its train users, said so, and its test users stay out of training."""
    from click.testing import CliRunner

    from xdretrieve.cli import main
    from xdretrieve.evaluate.protocol import Protocol
    from xdretrieve.rerank import ItemStats

    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    data = write_paired_dataset(tmp_path / "data", users_per_theme=5)  # train and test only
    out = tmp_path / "model"
    result = CliRunner().invoke(main, ["finetune", "--data", str(data), "--out", str(out),
                                       "--model", tiny_model, "--dim", "8", "--epochs", "2",
                                       "-q"])
    assert result.exit_code == 0, result.output
    assert ("users: 46 train, 2 valid, 12 test (users.*, which names no valid users: drawn "
            "from its train users") in result.output
    split = Protocol(Dataset.from_dir(data)).split
    assert all(u.endswith("-0") for u in split.test)  # as users.csv lists them
    recorded = json.loads((out / MANIFEST).read_text())["split"]  # what `info` says of it
    assert {k: recorded[k] for k in ("source", "train", "valid", "test")} == {
        "source": "users.*, valid drawn from its train users", "train": 46, "valid": 2,
        "test": 12}
    stats = ItemStats.load(out / "item_stats.npz")
    assert stats.popularity.sum() == 2 * len(split.train)  # a book and a movie each
    # one of test users only: said so (before: 'no valid users ... too few train users')
    users = (data / "users.csv").read_text()
    (data / "users.csv").write_text(users.replace(",train", ",test"))
    result = CliRunner().invoke(main, ["finetune", "--data", str(data), "--out",
                                       str(tmp_path / "m2"), "--model", tiny_model, "-q"])
    assert result.exit_code == 1
    assert "no train users to learn from (users.* marks none 'train')" in result.output
    # one train user: none can be drawn as valid (one is left to train on), refused as such
    one = users.replace(",train", ",test").replace("u0-1,test", "u0-1,train")
    (data / "users.csv").write_text(one)
    result = CliRunner().invoke(main, ["finetune", "--data", str(data), "--out",
                                       str(tmp_path / "m2"), "--model", tiny_model, "-q"])
    assert result.exit_code == 1 and not (tmp_path / "m2").exists()
    assert "no valid users to select the model with (too few train users are active in two " \
        "domains to draw any)" in result.output


def test_evaluate_refuses_a_model_trained_on_another_split(
        trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model records which users it learned from; an evaluation whose split differs (here
    a train user made a test user, whose target items the model saw) is refused, not scored,
    and before any method runs, as is a model that is not there."""
    import shutil

    from click.testing import CliRunner

    import xdretrieve.evaluate.runner as runner
    from xdretrieve.evaluate.cli import evaluate

    ran: list[str] = []
    run_method = runner._run
    monkeypatch.setattr(runner, "_run", lambda method, name, *a: ran.append(name)
                        or run_method(method, name, *a))
    tmp, _, _, manifest = trained
    assert manifest["split"]["source"] == "users.*" and manifest["split"]["train"] == 36
    data = tmp_path / "data"
    shutil.copytree(tmp / "data", data)
    users = (data / "users.csv").read_text()
    assert "u0-2,train" in users
    (data / "users.csv").write_text(users.replace("u0-2,train", "u0-2,test"))
    args = ["--direction", "books->movies", "--method", "popularity", "--method", "xdretrieve",
            "--model", str(tmp / "model"), "--out", str(tmp_path / "out"), "-q"]
    env = {"XDR_CACHE_DIR": str(tmp / "cache")}
    refused = CliRunner().invoke(evaluate, ["--data", str(data), *args], env=env)
    assert refused.exit_code == 1, refused.output
    assert "was trained on other users (36 train users, split from users.*)" in refused.output
    assert "than this evaluation's 35 train users" in refused.output
    assert ran == []  # not after popularity's run
    missing = CliRunner().invoke(evaluate, ["--data", str(tmp / "data"), *args, "--compare",
                                            f"gone={tmp_path / 'gone'}"], env=env)
    assert missing.exit_code == 1 and "gone' is not a local" in missing.output
    assert ran == []
    same = CliRunner().invoke(evaluate, ["--data", str(tmp / "data"), *args], env=env)
    assert same.exit_code == 0, same.output
    assert ran == ["popularity", "xdretrieve"]


def test_evaluate_full_ranking_serves_the_head_and_ranks_the_rest_by_the_model(
        trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retriever-backed row ranks every target item: the first SERVED as the retriever answers,
    then every other item by the model's exact score (scale x cosine + bias), ties in store order,
    the served and the history's own items left out."""
    from xdretrieve.config import Settings
    from xdretrieve.evaluate import retrieval
    from xdretrieve.indexer import index_dataset

    tmp, ds, _, _ = trained
    monkeypatch.setattr(retrieval, "SERVED", 3)  # 12 movies: a head of 3 and a tail of 9
    settings = Settings(model=str(tmp / "model"), store=tmp_path / "store",
                        cache_dir=tmp / "cache")
    index_dataset(Dataset(dict(ds.items), []), settings, users=False)
    with Retriever(settings) as r:
        ranking = retrieval._FullRanking(r, "movies")
        history = ("book-2", "movie-5")  # an item of the target domain is held out
        got = ranking(history, "movies", 12)
        head = [h.item_id for h in r.recommend_history(list(history), "movies", 3)]
        query = r.history_query(list(history), "movies")
        scores = r.model.rescore(ranking.ids, ranking.matrix @ query.vector)
        rest = [ranking.ids[k] for k in np.argsort(-scores, kind="stable")
                if ranking.ids[k] not in {*head, "movie-5"}]
        assert ranking(history, "movies", 2) == head[:2]
        # rank_rows (what evaluate asks when the evaluation's index is given): the same
        # ranking as columns, the held-out item last, as RetrieverMethod completes the ids
        index = {f"movie-{k}": 11 - k for k in range(12)}  # columns in another order
        by_columns = retrieval._FullRanking(r, "movies", index)
        rows = by_columns.rank_rows(history, "movies", 12)
        assert retrieval._FullRanking(r, "movies").rank_rows(history, "movies", 12) is None
    assert got[:3] == head and got[3:] == rest
    assert len(got) == 11 and len(set(got)) == 11 and "movie-5" not in got
    assert rows.tolist() == [index[i] for i in got] + [index["movie-5"]]
    # evaluate's row asks by columns: not one query goes through the ids
    from xdretrieve.evaluate.protocol import Direction, Protocol

    view = Protocol(ds).train_view(Direction("books", "movies"))
    method = retrieval.retriever_method("xdretrieve", settings, tmp_path / "work")
    method.fit(view)
    expected = [view.item_index("movies")[i] for i in got] + [
        view.item_index("movies")["movie-5"]]
    monkeypatch.setattr(retrieval._FullRanking, "__call__", None)
    assert method.rank([history]).tolist() == [expected]
    method.close()


def test_an_item_deleted_through_the_service_leaves_its_answers(trained, tmp_path: Path) -> None:
    """DELETE /items makes the retriever forget the items it holds by bias (their vectors,
    read once): a deleted item of high bias, the best answer before, is not scored from that
    copy again, where it would take the answer's place and then be dropped (an empty answer)."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.service import Service
    from xdretrieve.service_models import DeleteRequest

    tmp, ds, _, _ = trained
    # one candidate: the search reads the 2 nearest items, the held items by bias the rest
    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache", candidates=1, rerank=False)
    index_dataset(ds, settings)
    service = Service(settings)
    try:
        r = service.retriever()
        r.model.bias = {i: 100.0 if i == "movie-5" else 0.0 for i in r.model.bias}
        r.model.index_points()
        r.refresh()  # the items by bias, read again with these biases
        assert [h.item_id for h in r.recommend_history(["book-0"], "movies", 1)] == ["movie-5"]
        assert service.delete(DeleteRequest(item_ids=["movie-5"])).deleted == ["movie-5"]
        (hit,) = r.recommend_history(["book-0"], "movies", 1)
        assert hit.item_id != "movie-5"
    finally:
        service.close()


def test_an_excluded_item_of_high_bias_stays_out_of_the_answer(trained, tmp_path: Path) -> None:
    """The items the search did not reach are scored by bias in memory: a history's items and
    a stored user's own items are left out there as the search leaves them out (the scan by
    bias would bring back an item of high bias, the user's own)."""
    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset

    tmp, ds, _, _ = trained
    # one candidate: the search reads the 6 nearest items, the held items by bias the rest
    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache", candidates=1, rerank=False)
    index_dataset(ds, settings)
    with Retriever(settings) as r:
        r.model.bias = {i: 100.0 if i == "movie-5" else 0.0 for i in r.model.bias}
        r.model.index_points()
        r.refresh()  # the items by bias, read again with these biases
        assert [h.item_id for h in r.recommend_history(["book-0"], "movies", 3)][0] == "movie-5"
        for hits in (r.recommend_history(["book-0", "movie-5"], "movies", 3),
                     r.recommend_user("u5-2", "movies", 3)):  # a train user who has movie-5
            assert len(hits) == 3 and "movie-5" not in {h.item_id for h in hits}
        # a target domain the store does not hold: refused before the tower reads the history
        with pytest.raises(NotFoundError, match="unknown domain 'music'; this store has"):
            r.recommend_history(["book-0"], "music")


def test_a_cooccurring_item_deleted_through_the_service_leaves_a_reranked_answer(
        trained, tmp_path: Path) -> None:
    """The re-ranker's statistics still know an item deleted through the service, and offer
    it as a co-occurring candidate: it is left out of the answer (its score is nowhere to be
    read), not a KeyError."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import shutil

    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.rerank import FEATURES, Reranker
    from xdretrieve.service import Service
    from xdretrieve.service_models import DeleteRequest

    tmp, ds, _, _ = trained
    model = tmp_path / "model"  # the trained model with a re-ranker and its statistics
    shutil.copytree(tmp / "model", model)
    ones = np.ones(len(FEATURES), dtype=np.float32)
    Reranker(ones, np.zeros_like(ones), ones, _train_stats(ds)).save(model)
    settings = Settings(store=tmp_path / "store", model=str(model), cache_dir=tmp / "cache",
                        candidates=6)  # 3 of the tower's best, then the co-occurring items
    index_dataset(ds, settings)
    service = Service(settings)
    try:
        r = service.retriever()
        assert "movie-3" in {h.item_id for h in r.recommend_history(["book-3"], "movies", 3)}
        assert service.delete(DeleteRequest(item_ids=["movie-3"])).deleted == ["movie-3"]
        hits = r.recommend_history(["book-3"], "movies", 3)
        assert len(hits) == 3 and "movie-3" not in {h.item_id for h in hits}
        # as many as asked for also when the candidates are no more than the answer: the next
        # candidate takes the deleted one's place (the answer used to come back one short)
        narrow = r.search(r.history_query(["book-3"], "movies"), "movies", 3, candidates=2)
        assert len({h.item_id for h in narrow}) == 3 and "movie-3" not in {
            h.item_id for h in narrow}
        # an answer item deleted between the re-ranking and the read of its payload (a DELETE
        # beside the query): the next re-ranked item takes its place
        query = r.history_query(["book-5"], "movies")
        full = [h.item_id for h in r.search(query, "movies", 4)]
        real, dropped = r.store.retrieve, []

        def deleted_meanwhile(collection, ids, **kwargs):
            points = real(collection, ids, **kwargs)
            if kwargs.get("with_vectors") or dropped:  # the payloads of the answer, once
                return points
            dropped.append(points[0].payload["item_id"])
            return points[1:]

        r.store.retrieve = deleted_meanwhile
        try:
            raced = [h.item_id for h in r.search(query, "movies", 3)]
        finally:
            del r.store.retrieve
        assert dropped == full[:1] and raced == full[1:4]
        # a query of a bare vector has no history to re-rank by: the model's own best
        tower = r.search(Query(query.vector), "movies", 3)
        assert all(h.why is None for h in tower)
        assert [h.score for h in tower] == sorted((h.score for h in tower), reverse=True)
    finally:
        service.close()


def test_history_items_without_statistics_text_are_read_by_title_and_text(trained,
                                                                           tmp_path: Path) -> None:
    """Where the re-ranker's statistics have no text for a history's items (items new to the
    model), the history's own titles and texts stand in: the text overlap is then the one the
    statistics' texts (title and text) give, not that of the titles alone."""
    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.rerank import FEATURES, ItemStats, Reranker, overlap_text

    tmp, ds, _, _ = trained
    settings = Settings(store=tmp_path / "store", model=str(tmp / "model"),
                        cache_dir=tmp / "cache")
    index_dataset(ds, settings)
    ids = list(ds.items)
    stats = ItemStats.fit(ids, ds.histories, [ds.items[i].domain for i in ids],
                          [overlap_text(ds.items[i].title, ds.items[i].text) for i in ids])
    ones = np.ones(len(FEATURES), dtype=np.float32)
    with Retriever(settings) as r:
        r.model.reranker = Reranker(ones, 0 * ones, ones, stats)
        r.model.index_points()
        known = r.recommend_history(["book-3"], "movies", 4)
        stats.knows_texts = lambda *a: False  # as for items the statistics do not know
        read = r.recommend_history(["book-3"], "movies", 4)
    assert [h.item_id for h in read] == [h.item_id for h in known]
    assert known[0].why["features"]["text_overlap"] > 0
    for a, b in zip(read, known, strict=True):
        assert a.why["features"] == pytest.approx(b.why["features"], abs=1e-6)


def _long_histories(directory: Path) -> Dataset:
    """The paired dataset where user u{t}-k read books t+5, t+1 and t (in that order) before
    movie t; users u{t}-1 are valid."""
    data = write_paired_dataset(directory, users_per_theme=5)
    rows = ["user_id,item_id,domain,position"]
    for t in range(len(THEMES)):
        for k in range(5):
            rows += [f"u{t}-{k},book-{(t + j) % len(THEMES)},books,{p}"
                     for p, j in enumerate((5, 1, 0))]
            rows.append(f"u{t}-{k},movie-{t},movies,3")
    (data / "interactions.csv").write_text("\n".join(rows) + "\n")
    splits = (data / "users.csv").read_text().replace("-1,train", "-1,valid")
    (data / "users.csv").write_text(splits)
    return Dataset.from_dir(data)


class _Stop(Exception):
    pass


def test_the_tower_learns_from_recent_history_of_its_own_users(tmp_path: Path,
                                                                monkeypatch) -> None:
    """What the tower is given: each user's latest ``max_history`` items (train and valid
    users alike, as the served model reads a history), the train users less the re-ranker's
    fold, and an item bias that starts at the log popularity among those users (a user of the
    fold taught the tower, the oldest items read, or a bias at zero would pass unnoticed)."""
    from xdretrieve.train import adapter
    from xdretrieve.train.catalog import Catalog

    ds = _long_histories(tmp_path / "data")
    catalog = Catalog.of(ds)
    base = np.random.default_rng(0).normal(size=(len(ds.items), 6)).astype(np.float32)
    seen = {}

    def fit(model, train, valid, *rest):
        seen.update(bias=model.bias.detach().numpy().copy(), train=train, valid=valid)
        raise _Stop

    monkeypatch.setattr(adapter, "_fit_tower", fit)
    config = AdapterConfig(dim=8, max_history=2, rerank_fraction=0)
    with pytest.raises(_Stop):
        train_adapter(ds, base, tmp_path / "m", "m", "f", config)
    train_users = sorted(u for u, s in ds.splits.items() if s == "train")
    books = [ex for ex in seen["train"] if catalog.domains[ex.source] == "books"]
    assert sorted([catalog.ids[r] for r in h] for h in books[0].histories) == sorted(
        list(ds.histories[u]["books"][-2:]) for u in train_users)
    for _, _, histories, _ in seen["valid"]:
        assert all(len(h) <= 2 for h in histories)
    (_, _, valid_books, _), = [v for v in seen["valid"] if catalog.domains[v[0]] == "books"]
    valid_users = sorted(u for u, s in ds.splits.items() if s == "valid")
    assert sorted([catalog.ids[r] for r in h] for h in valid_books) == sorted(
        list(ds.histories[u]["books"][-2:]) for u in valid_users)
    counts = {i: 0 for i in ds.items}
    for u in train_users:
        for items in ds.histories[u].values():
            for i in set(items):
                counts[i] += 1
    np.testing.assert_allclose(seen["bias"], np.log1p([counts[i] for i in catalog.ids]),
                               rtol=1e-6)
    # with the default fold: its users are held out of the tower's examples
    monkeypatch.setattr(adapter, "_fit_tower", fit)
    with pytest.raises(_Stop):
        train_adapter(ds, base, tmp_path / "m", "m", "f", AdapterConfig(dim=8))
    fold = int(AdapterConfig().rerank_fraction * len(train_users))
    assert fold > 0
    assert [len(ex.histories) for ex in seen["train"]] == [len(train_users) - fold] * 2


def test_epochs_are_selected_by_a_strict_gain_within_the_budget(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Valid users' ndcg@10 is scripted: a tie is no gain (the earlier epoch is kept and the
    tie counts toward patience), a gain starts patience over, a model no valid user is helped
    by (ndcg 0 throughout) keeps its first epoch, a time budget of 0 stops after one epoch, and
    each epoch's recorded loss is the mean of its steps' losses, numbered from 1."""
    from xdretrieve.train import adapter

    ds = _long_histories(tmp_path / "data")
    base = np.random.default_rng(0).normal(size=(len(ds.items), 6)).astype(np.float32)
    losses: list[list[float]] = [[]]
    softmax_loss = adapter.softmax_loss

    def recorded(*args, **kwargs):
        loss = softmax_loss(*args, **kwargs)
        losses[-1].append(loss.item())
        return loss

    def train(scores, **options):
        script = iter(scores)
        losses[:] = [[]]

        def validate(model, valid, directions):
            losses.append([])
            return {"books->movies/ndcg@10": next(script)}

        monkeypatch.setattr(adapter, "_validate", validate)
        config = AdapterConfig(dim=8, batch_size=8, seed=0, rerank_fraction=0, **options)
        return train_adapter(ds, base, tmp_path / "m", "m", "f", config)

    monkeypatch.setattr(adapter, "softmax_loss", recorded)
    tied = train([0.3, 0.5, 0.5, 0.5, 0.9], epochs=10, patience=2)
    assert tied["best_epoch"] == 2 and len(tied["history"]) == 4
    assert [h["epoch"] for h in tied["history"]] == [1, 2, 3, 4]
    assert len(losses[0]) > 1  # several steps an epoch
    for h, steps in zip(tied["history"], losses, strict=False):
        assert h["loss"] == pytest.approx(np.mean(steps), rel=1e-6)
    # epoch 2 is no gain, epoch 3 is: patience counts again from there (2 more epochs)
    late = train([0.3, 0.2, 0.5, 0.4, 0.4, 0.9], epochs=10, patience=2)
    assert late["best_epoch"] == 3 and len(late["history"]) == 5
    nothing = train([0.0, 0.0, 0.0], epochs=3, patience=5)
    assert nothing["best_epoch"] == 1 and len(nothing["history"]) == 3
    budget = train([0.1, 0.2, 0.3], epochs=3, patience=5, time_budget_s=0)
    assert budget["best_epoch"] == 1 and len(budget["history"]) == 1


def test_validation_leaves_the_tower_training_with_dropout(tmp_path: Path) -> None:
    """Each epoch ends with the valid users scored in eval mode (no dropout); the next epoch
    trains with dropout again (before it is left in eval mode, every epoch after the first
    would train without it)."""
    import torch

    from xdretrieve.evaluate.protocol import Protocol
    from xdretrieve.train import adapter
    from xdretrieve.train.catalog import Catalog
    from xdretrieve.train.tower import Tower, pad

    ds = _long_histories(tmp_path / "data")
    catalog = Catalog.of(ds)
    torch.manual_seed(0)
    base = torch.randn(len(ds.items), 6)
    tower = Tower(base, catalog.rows_by_domain, AdapterConfig(dim=8, dropout=0.5))
    directions = Protocol(ds).directions()
    X, M = pad([catalog.rows_by_domain[0][:3]] * 4)
    valid = [(0, 1, [catalog.rows_by_domain[0][:2]], [np.array([0])]), (1, 0, [], [])]
    assert tower.training
    adapter._validate(tower, valid, directions)
    assert tower.training
    a, b = tower.users(X, M, 0, 1), tower.users(X, M, 0, 1)
    assert not torch.allclose(a, b)  # dropout draws anew
    tower.eval()
    np.testing.assert_array_equal(tower.users(X, M, 0, 1).detach().numpy(),
                                  tower.users(X, M, 0, 1).detach().numpy())


def test_every_full_mode_option_is_refused_in_adapter_mode(tmp_path: Path) -> None:
    """Each option of encoder fine-tuning given without --mode full is named in a usage error
    before any work (one left out of the check would be accepted and silently ignored)."""
    from click.testing import CliRunner

    from xdretrieve.cli import main

    for option in (["--batch-size", "8"], ["--lr", "1e-3"], ["--ft-epochs", "2"],
                   ["--max-pairs", "9"], ["--hard-negatives", "0"], ["--workers", "0"],
                   ["--gradient-checkpointing"], ["--no-gradient-checkpointing"]):
        out = CliRunner().invoke(main, ["finetune", "--data", str(tmp_path), "--out",
                                        str(tmp_path / "m"), *option])
        name = "--[no-]gradient-checkpointing" if "checkpointing" in option[0] else option[0]
        assert out.exit_code == 2 and f"{name}: only with --mode full" in out.output
    assert not (tmp_path / "m").exists()


def test_coral_samples_items_from_the_whole_domain() -> None:
    """CORAL's statistics of a domain are those of items drawn from all of it, ``n`` of them
    (not its first ``n`` items in catalog order: a catalog sorted by category would align one
    category only)."""
    import torch

    from xdretrieve.train.tower import Tower

    torch.manual_seed(0)
    rows = [np.arange(0, 30), np.arange(30, 35)]
    tower = Tower(torch.randn(35, 6), rows, AdapterConfig(dim=4))
    sample = tower.item_sample(10)
    assert [len(s) for s in sample] == [10, 10]  # a domain of 5 items too
    with torch.no_grad():
        first = tower.domain_items(0, slice(0, 10))
        beyond = [not torch.isclose(first, v, atol=1e-6).all(1).any() for v in sample[0]]
        small = tower.domain_items(1)
        drawn = {int(torch.isclose(small, v, atol=1e-6).all(1).nonzero()[0, 0])
                 for v in tower.item_sample(200)[1]}
    assert any(beyond)
    assert drawn == set(range(5))  # every item of a domain can be drawn, its last one too


def test_the_coral_term_is_added_weighted_by_its_coefficient(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Each step's loss is the softmax loss plus ``coral`` times CORAL's distance of the
    domains' item samples (a constant 2 here, which moves no weight, so both runs take the
    same steps): the epoch's loss is higher by exactly coral x 2; with coral 0 the distance is
    not computed at all."""
    import torch

    from xdretrieve.train import adapter
    from xdretrieve.train.tower import Tower

    ds = _long_histories(tmp_path / "data")
    base = np.random.default_rng(0).normal(size=(len(ds.items), 6)).astype(np.float32)
    given: list = []
    monkeypatch.setattr(Tower, "item_sample", lambda self, n=2048: ["the sample"])
    monkeypatch.setattr(adapter, "coral_distance",
                        lambda samples: given.append(samples) or torch.tensor(2.0))

    def loss(coral: float) -> float:
        config = AdapterConfig(dim=8, epochs=1, batch_size=8, seed=0, coral=coral,
                               rerank_fraction=0)
        return train_adapter(ds, base, tmp_path / "m", "m", "f", config)["history"][0]["loss"]

    plain = loss(0.0)
    assert given == []
    assert loss(0.5) == pytest.approx(plain + 0.5 * 2.0, abs=1e-5)
    assert given and all(s == ["the sample"] for s in given)


def test_an_item_bought_twice_is_one_target_of_its_user(tmp_path: Path, monkeypatch) -> None:
    """A user's label is spread evenly over the distinct items they took in the target
    domain: an item bought twice is one target (counted twice, the whole softmax would give
    that user less than a whole label, and the blocked one more weight to the repeated item)."""
    from xdretrieve.train import adapter
    from xdretrieve.train.catalog import Catalog

    _long_histories(tmp_path / "data")
    with open(tmp_path / "data" / "interactions.csv", "a") as f:  # u2-2 is a train user
        f.write("u2-2,movie-2,movies,4\nu2-2,movie-3,movies,5\n")
    ds = Dataset.from_dir(tmp_path / "data")
    assert ds.histories["u2-2"]["movies"] == ("movie-2", "movie-2", "movie-3")
    catalog = Catalog.of(ds)
    base = np.random.default_rng(0).normal(size=(len(ds.items), 6)).astype(np.float32)
    seen = {}

    def fit(model, train, *rest):
        seen.update(train=train)
        raise _Stop

    monkeypatch.setattr(adapter, "_fit_tower", fit)
    with pytest.raises(_Stop):
        train_adapter(ds, base, tmp_path / "m", "m", "f", AdapterConfig(dim=8, rerank_fraction=0))
    (movies,) = [ex for ex in seen["train"] if catalog.domains[ex.target] == "movies"]
    bought = [sorted(catalog.ids[catalog.rows_by_domain[movies.target][i]] for i in t)
              for t in movies.targets]
    assert ["movie-2", "movie-3"] in bought
    assert all(len(b) == len(set(b)) for b in bought)


def test_the_reranker_is_fitted_on_the_fold_the_tower_never_saw(tmp_path: Path,
                                                                monkeypatch) -> None:
    """The re-ranker learns from the tower's candidates for the held-out fold of train users
    (their latest histories and their target items), with statistics of the tower's users and
    the configured number of candidates: fitted on users the tower learned from, it would
    learn to trust candidates the tower had memorised."""
    from xdretrieve.train import adapter
    from xdretrieve.train.catalog import Catalog

    ds = _long_histories(tmp_path / "data")
    catalog = Catalog.of(ds)
    base = np.random.default_rng(0).normal(size=(len(ds.items), 6)).astype(np.float32)
    seen = {}

    def fit(model, dataset, catalog, histories, fold, valid, tower_users, train_users,
            directions, seed, candidates, progress):
        seen.update(fold=fold, tower=tower_users, train=train_users, candidates=candidates)
        return None, {}

    monkeypatch.setattr(adapter, "fit_served_reranker", fit)
    config = AdapterConfig(dim=8, epochs=1, max_history=2, rerank_candidates=7)
    train_adapter(ds, base, tmp_path / "m", "m", "f", config)
    train_users = sorted(u for u, s in ds.splits.items() if s == "train")
    held = sorted(set(train_users) - set(seen["tower"]))
    assert sorted(seen["train"]) == train_users and seen["candidates"] == 7
    assert len(held) == int(config.rerank_fraction * len(train_users)) > 0
    assert len(seen["fold"]) == 2
    for source, target, histories, targets in seen["fold"]:
        s, t = catalog.domains[source], catalog.domains[target]
        assert sorted([catalog.ids[r] for r in h] for h in histories) == sorted(
            list(ds.histories[u][s][-2:]) for u in held)
        assert sorted(sorted(catalog.ids[catalog.rows_by_domain[target][i]] for i in x)
                      for x in targets) == sorted(sorted(set(ds.histories[u][t])) for u in held)


def test_valid_metrics_read_the_whole_ranking_of_the_target_domain(tmp_path: Path) -> None:
    """Each epoch's valid figures are ndcg@10 and recall@10 of the tower's ranking of every
    target item: a valid user whose item the tower ranks 7th counts recall@10 1 and ndcg@10
    1/log2(8) (a ranking cut at 5, or recall reported as ndcg, would say otherwise)."""
    import torch

    from xdretrieve.evaluate.protocol import Protocol
    from xdretrieve.train import adapter
    from xdretrieve.train.catalog import Catalog
    from xdretrieve.train.tower import Tower

    ds = _long_histories(tmp_path / "data")
    catalog = Catalog.of(ds)
    torch.manual_seed(0)
    tower = Tower(torch.randn(len(ds.items), 6), catalog.rows_by_domain, AdapterConfig(dim=8))
    with torch.no_grad():  # the score is the bias: item k of a domain ranks (k + 1)th
        tower.logit_scale.fill_(-30.0)
        for rows in catalog.rows_by_domain:
            tower.bias[torch.from_numpy(rows)] = -torch.arange(len(rows), dtype=torch.float32)
    directions = Protocol(ds).directions()
    truth = {0: np.array([6]), 1: np.array([0])}
    valid = []
    for d in directions:
        s, t = catalog.domains.index(d.source), catalog.domains.index(d.target)
        valid.append((s, t, [catalog.rows_by_domain[s][:3]], [truth[len(valid)]]))
    got = adapter._validate(tower, valid, directions)
    first, second = (str(d) for d in directions)
    assert got == pytest.approx({f"{first}/ndcg@10": 1 / 3, f"{first}/recall@10": 1.0,
                                 f"{second}/ndcg@10": 1.0, f"{second}/recall@10": 1.0})


def test_the_steps_of_an_epoch_mix_the_directions(tmp_path: Path, monkeypatch) -> None:
    """An epoch's batches of both directions come shuffled together, not every batch of one
    direction and then every batch of the other (the weights of each epoch would lean to the
    direction trained last)."""
    from xdretrieve.train.tower import Tower

    ds = _long_histories(tmp_path / "data")
    base = np.random.default_rng(0).normal(size=(len(ds.items), 6)).astype(np.float32)
    sources: list[int] = []
    users = Tower.users

    def recorded(self, X, M, s, t):
        if self.training:
            sources.append(s)
        return users(self, X, M, s, t)

    monkeypatch.setattr(Tower, "users", recorded)
    config = AdapterConfig(dim=8, epochs=3, patience=3, batch_size=8, seed=0,
                           rerank_fraction=0)
    train_adapter(ds, base, tmp_path / "m", "m", "f", config)
    steps = len(sources) // 3
    epochs = [sources[k * steps:(k + 1) * steps] for k in range(3)]
    assert steps > 2 and all(sorted(e) == sorted(epochs[0]) for e in epochs)
    assert any(e not in (sorted(e), sorted(e, reverse=True)) for e in epochs)
