"""The performance suite runs end to end on a tiny size and reports every figure.

No test asserts a wall-clock time: the figures are checked for presence and sanity only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import querypath, recall, report, synthetic
from benchmarks.engines import Catalog, NumpyExact
from benchmarks.suite import Config, run_suite
from xdretrieve.config import Settings
from xdretrieve.data import Dataset
from xdretrieve.indexer import index_dataset
from xdretrieve.rerank import overlap_text
from xdretrieve.retriever import RESCORE_WIDTH


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, paired_dir: Path,
               tiny_model: str) -> Path:
    from xdretrieve.config import Settings

    root = tmp_path_factory.mktemp("bench-store")
    index_dataset(Dataset.from_dir(paired_dir),
                  Settings(store=root / "store", cache_dir=root / "cache", model=tiny_model))
    return root / "store"


def write_model(directory: Path, base_model: str, dataset: Dataset, dim: int = 16,
                reranker: bool = True, seed: int = 0) -> Path:
    """A trained-model directory as ``xdretrieve finetune`` writes it, with random weights (and
    a re-ranker): what the benchmark needs to run the trained query path, not a good model."""
    from xdretrieve.encoder import resolve_model
    from xdretrieve.model import MANIFEST, WEIGHTS
    from xdretrieve.rerank import FEATURES, ItemStats, Reranker

    ref = resolve_model(base_model)
    base_dim = ref_dim(base_model)
    rng = np.random.default_rng(seed)
    domains = sorted(dataset.domains)
    ids = list(dataset.items)
    max_history = 8

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    weights = {"pos": w(max_history, dim), "logit_scale": np.float32(np.log(10.0)),
               "att_w1": w(dim, dim), "att_b1": np.zeros(dim, np.float32),
               "att_w2": w(dim), "att_b2": np.float32(0.0),
               "mlp_w1": w(dim, dim), "mlp_b1": np.zeros(dim, np.float32),
               "mlp_w2": w(dim, dim), "mlp_b2": np.zeros(dim, np.float32),
               "bias_ids": np.array(ids), "bias": w(len(ids))}
    for d in domains:
        weights |= {f"proj_w_{d}": w(base_dim, dim), f"proj_b_{d}": np.zeros(dim, np.float32),
                    f"tgt_{d}": w(dim)}
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / WEIGHTS, **weights)
    if reranker:
        histories = {u: {d: tuple(h) for d, h in per.items()}
                     for u, per in dataset.histories.items()}
        Reranker(w(len(FEATURES)), np.zeros(len(FEATURES), np.float32),
                 np.ones(len(FEATURES), np.float32),
                 ItemStats.fit(ids, histories, [dataset.items[i].domain for i in ids])
                 ).save(directory)
    (directory / MANIFEST).write_text(json.dumps({
        "format": 1, "kind": "adapter", "base_model": base_model,
        "base_fingerprint": ref.fingerprint, "dim": dim, "domains": domains,
        "max_history": max_history, "config": {}}))
    return directory


def ref_dim(model: str) -> int:
    from xdretrieve.encoder import Encoder, resolve_model

    return Encoder(resolve_model(model), device="cpu", cache_dir=None).dim


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory, paired_dir: Path,
                 tiny_model: str) -> Path:
    return write_model(tmp_path_factory.mktemp("bench-model") / "model", tiny_model,
                       Dataset.from_dir(paired_dir))


def _tiny_config(work: Path, store: Path, data: Path, model: Path | None = None) -> Config:
    return Config(work=work, real_store=store, data=data, synthetic_n=2000, dim=32, centres=20,
                  synthetic_users=60, queries=30, repeats=2, threads=(1, 2), efs=(16, 64),
                  candidate_efs=(400,), client_queries=5, client_queries_large=3,
                  numpy_queries_large=20, embed_items=16, embed_batch=8, device="cpu",
                  previous_large=True, model=model)


def test_suite_reports_every_figure(tmp_path: Path, tiny_store: Path, paired_dir: Path,
                                    tiny_trained: Path) -> None:
    results = run_suite(_tiny_config(tmp_path / "work", tiny_store, paired_dir, tiny_trained))
    text = report.write(results, tmp_path / "out")
    json.dumps(results)  # what run.py writes

    assert [s["kind"] for s in results["scales"]] == ["real", "synthetic"]
    for scale in results["scales"]:
        roles = [v["role"] for v in scale["variants"]]
        real = scale["kind"] == "real"
        # at the real scale, the trained paths again with the engine's search pool
        assert roles == ["shipped", "previous", "trained"] + (["comparison"] if real else [])
        shipped, previous, trained = scale["variants"][:3]
        assert shipped["hnsw"]["search_threads"] == 1
        assert previous["hnsw"]["search_threads"] == 0
        assert shipped["hnsw"]["per_domain"] and shipped["hnsw"]["int8"]
        assert shipped["hnsw"]["search_ef"] == Settings().search_ef
        assert shipped["hnsw"]["m"] == Settings().hnsw_m
        assert not previous["hnsw"]["per_domain"] and not previous["hnsw"]["int8"]
        assert (previous["hnsw"]["m"], previous["hnsw"]["search_ef"]) == (16, 128)
        assert trained["model"] == str(tiny_trained)
        for variant in (shipped, previous):
            rows = [r for r in scale["paths"] if r["engine"] == f"Qdrant Edge, {variant['name']}"]
            assert [r["label"] for r in rows] == [
                "full path: user lookup + ANN 200 + top 10",
                "Retriever.recommend_user(limit=10) as shipped"]
        for variant in scale["variants"][2:]:
            rows = [r for r in scale["paths"] if r["engine"] == f"Qdrant Edge, {variant['name']}"]
            assert [r["label"] for r in rows] == ["full path, trained model, re-ranker off",
                                                  "full path, trained model, with re-ranker"]
        if real:
            assert scale["variants"][3]["hnsw"]["search_threads"] == 0
        for row in scale["paths"]:
            assert not row.get("skipped")
            assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
            assert row["cpu_p50_ms"] >= 0
        assert any(r["engine"] == "qdrant-client :memory:" for r in scale["paths"])
        engines = {r["engine"] for r in scale["search"]}
        assert {"NumPy brute force (exact)", "NumPy brute force (exact) (1 BLAS thread)",
                "Qdrant Edge exact=True (full scan)"} <= engines
        assert any(e.startswith("qdrant-client") for e in engines)
        assert [(t["index"], t["threads"]) for t in scale["throughput"]] == [
            (shipped["name"], 1), (shipped["name"], 2), (trained["name"], 1),
            (trained["name"], 2)]
        assert all(t["queries_per_s"] > 0 for t in scale["throughput"])
        assert "full path: qdrant-client :memory:" in scale["ratios"]
        for variant in (shipped, previous):
            rows = [r for r in scale["recall"] if r["index"] == variant["name"]]
            assert rows[0]["production"] and rows[0]["limit"] == 200
            assert rows[0]["hnsw_ef"] == variant["hnsw"]["search_ef"]
            assert [r["hnsw_ef"] for r in rows if r["limit"] == 10] == [16, 64]
            assert [r["hnsw_ef"] for r in rows[1:] if r["limit"] == 200] == [400]
            assert all(0.0 <= r["recall@200"] <= 1.0 for r in rows if r["limit"] == 200)
            assert all(0.0 <= r["recall@10"] <= 1.0 for r in rows)
        (row,) = [r for r in scale["recall"] if r["index"] == trained["name"]]
        assert row["production"] and row["limit"] == RESCORE_WIDTH * 200 and 0 <= row["recall@10"] <= 1
    cal = results["scales"][1]["info"]["calibration"]
    assert set(cal["synthetic_nn_cosine"]) == set(cal["real_nn_cosine"])

    idx = results["indexing"]
    assert idx["embed"]["items_per_s"] > 0 and idx["embed"]["device"] == "cpu"
    for key in ("edge_real", "edge_synthetic"):
        assert idx[key]["points_per_s"] > 0 and idx[key]["points_per_cpu_s"] > 0
        assert idx[key]["build_s"] >= 0 and idx[key]["upsert_peak_rss_mib"] > 0
    assert len(idx["edge_real"]["runs"]) == 2
    reindex = idx["reindex"]
    assert reindex["changed_items"] == 1 and reindex["items_embedded"] == 1
    assert reindex["noop_embedded"] == 0 and reindex["noop_changed"] is False  # a real no-op

    for heading in ("## Targets", "## Query latency", "## Throughput", "## Recall",
                    "## Indexing", "## The synthetic catalog", "latency.png", "recall.png",
                    "full path, trained model, with re-ranker", "incremental re-index",
                    "points/s upserted", "HNSW build", "items/s embedded"):
        assert heading in text
    assert "not measured" not in text
    for name in ("performance.md", "latency.png", "recall.png", "latencies.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def _trained_rows(cfg: Config, store: Path) -> list[dict]:
    """The trained-model rows of the real scale, run alone."""
    from benchmarks import suite
    from xdretrieve.store.edge import EdgeStore

    with EdgeStore(store) as base:
        catalog = Catalog.from_store(base)
        users = suite._profiles(base)
        info = base.read_info()
        jobs, _ = suite._queries(cfg, base)
    scale = suite._new_scale("real", "real", {"items": len(catalog.ids)})
    suite._trained(cfg, scale, catalog, users, info, jobs)
    return scale["paths"]


def test_trained_rows_are_skipped_with_the_reason(tmp_path: Path, tiny_store: Path,
                                                  paired_dir: Path, tiny_model: str,
                                                  other_tiny_model: str) -> None:
    copy = tmp_path / "store"
    shutil.copytree(tiny_store, copy)
    rows = _trained_rows(_tiny_config(tmp_path / "w1", copy, paired_dir), copy)
    assert [r["label"] for r in rows] == ["full path, trained model, re-ranker off",
                                          "full path, trained model, with re-ranker"]
    assert all(r["skipped"] and "no trained model given" in r["note"] for r in rows)

    # a model trained on another encoder than the store's
    other = write_model(tmp_path / "other", other_tiny_model, Dataset.from_dir(paired_dir))
    rows = _trained_rows(_tiny_config(tmp_path / "w2", copy, paired_dir, other), copy)
    assert all(r["skipped"] and "was trained on encoder" in r["note"] for r in rows)

    # a model without a re-ranker: that row alone is skipped
    plain = write_model(tmp_path / "plain", tiny_model, Dataset.from_dir(paired_dir),
                        reranker=False)
    off, on, pooled_off = _trained_rows(_tiny_config(tmp_path / "w3", copy, paired_dir, plain),
                                        copy)
    assert not off.get("skipped") and off["p50_ms"] > 0
    assert on["skipped"] and "has no re-ranker" in on["note"]
    assert pooled_off["label"] == off["label"] and "search pool" in pooled_off["engine"]


def test_numpy_exact_matches_sorting() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"p{i}" for i in range(300)]
    domains = np.array(["a" if i % 3 else "b" for i in range(300)])
    exact = NumpyExact(Catalog(ids, vectors, domains, [{} for _ in ids]))
    q = vectors[0]
    got = exact.search(q, "a", exclude=["p1"], limit=7)
    order = sorted((i for i in range(300) if domains[i] == "a" and i != 1),
                   key=lambda i: -float(vectors[i] @ q))
    assert got == [ids[i] for i in order[:7]]
    queries = [querypath.Resolved("a", q, ("p1",)), querypath.Resolved("b", vectors[5], ())]
    truth = recall.ground_truth(exact, queries, 7)
    assert truth[0] == got
    assert recall.recall_at([got], [got], 7) == 1.0
    assert recall.recall_at([got[:3] + ["x"] * 4], [got], 7) == pytest.approx(3 / 7)


def test_synthetic_resembles_its_reference() -> None:
    rng = np.random.default_rng(0)
    reference = synthetic._fallback_reference(rng)
    cat = synthetic.generate(3000, 24, 30, reference, n_users=20, seed=1, measure_sample=300)
    assert cat.vectors.shape == (3000, 24)
    assert np.allclose(np.linalg.norm(cat.vectors, axis=1), 1.0, atol=1e-5)
    assert set(cat.domains) == set(synthetic.DOMAINS)
    cal = cat.calibration
    assert abs(cal.synthetic_nn_cosine["p50"] - cal.real_nn_cosine["p50"]) < 0.1
    assert abs(cal.synthetic_pair_cosine_mean - cal.real_pair_cosine_mean) < 0.1
    users, domains, vectors, payloads = cat.user_profiles()
    assert len(users) == 2 * 20 and vectors.shape == (40, 24)
    assert all(p["history"] for p in payloads)


def test_results_md_gets_one_performance_section(tmp_path: Path) -> None:
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Results\n\n## Cold-start quality\n\ntable\n")
    for run in ("first", "second"):
        report.update_results_md(results_md, f"# Performance results\n\n## Targets\n\n{run}\n\n"
                                 "![recall vs latency](recall.png)\n", tmp_path / "results")
    text = results_md.read_text()
    assert text.startswith("# Results\n\n## Cold-start quality\n\ntable\n")
    assert text.count(report.RESULTS_BEGIN) == 1 and text.count(report.RESULTS_END) == 1
    assert "second" in text and "first" not in text
    assert "## Performance results" in text and "### Targets" in text
    assert "](results/recall.png)" in text


def test_results_md_with_one_marker_lost_is_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A section whose begin marker an edit lost would otherwise get a second copy appended;
    run.py says so before its 40 minutes, not after."""
    results_md = tmp_path / "RESULTS.md"
    before = f"# Results\n\n## Performance results\n\nold\n{report.RESULTS_END}\n"
    results_md.write_text(before)
    with pytest.raises(SystemExit, match="one of the performance section's two markers"):
        report.update_results_md(results_md, "# Performance results\n\nnew\n", tmp_path)
    assert results_md.read_text() == before

    from benchmarks import run

    def suite(*args: object) -> None:
        raise AssertionError("the suite ran before the report was checked")

    monkeypatch.setattr(run, "run_suite", suite)
    with pytest.raises(SystemExit, match="one of the performance section's two markers"):
        run.main(["--quick", "--no-real", "--results-md", str(results_md),
                  "--out", str(tmp_path / "out")])


def test_rerank_cost_reports_both_figures(tiny_trained: Path, paired_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import rerank_cost

    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.argv", ["rerank_cost.py", "--model", str(tiny_trained), "--data",
                                     str(paired_dir), "--queries", "20", "--candidates", "5"])
    rerank_cost.main()
    out = capsys.readouterr().out
    assert "20 queries, 5 candidates" in out
    for line in ("re-ranker features + scores: p50", "co-occurrence candidates:    p50"):
        assert line in out and "p99" in out.split(line)[1].splitlines()[0]


def test_rerank_ceiling_captures_the_served_candidates_and_bounds_them(
        tmp_path: Path, paired_dir: Path, tiny_trained: Path) -> None:
    """benchmarks/rerank_ceiling.py: on the paired data, where co-occurrence names every test
    user's movie, the captured candidates are the served answer in order, the ideal order and a
    linear re-ranker fitted on the test users find every movie, and the random re-ranker does
    not."""
    from benchmarks import rerank_ceiling
    from xdretrieve.evaluate.protocol import Direction, Protocol
    from xdretrieve.retriever import Retriever

    dataset = Dataset.from_dir(paired_dir)
    settings = Settings(store=tmp_path / "store", cache_dir=tmp_path / "cache",
                        model=str(tiny_trained))
    index_dataset(Dataset(dict(dataset.items), []), settings, users=False)
    protocol = Protocol(dataset)
    task = protocol.task(Direction("books", "movies"))
    with Retriever(settings) as retriever:
        items, x = rerank_ceiling._capture(retriever, task.queries[0], "movies", 200)
        assert items == [h.item_id for h in
                         retriever.recommend_history(list(task.queries[0]), "movies", 200)]
        assert len(items) == 12 and x.shape == (12, 7)  # every movie is a candidate
        served = retriever.model.reranker.score(x)
        assert np.all(np.diff(served) <= 0)  # the features are aligned with the served order
        view = protocol.train_view(task.direction)
        vectors = rerank_ceiling._store_vectors(retriever)
        texts = {i: overlap_text(item.title, item.text) for i, item in dataset.items.items()}
        more = rerank_ceiling.MoreFeatures(view, vectors, retriever.model, texts)
        movies = [f"movie-{t}" for t in range(12)]
        extra = more(("book-3",), movies)
        assert extra.shape == (12, len(rerank_ceiling.MORE_FEATURES))
        cosines = np.array([vectors[m] @ vectors["book-3"] for m in movies])
        assert np.allclose(extra[:, 0], cosines, atol=1e-5)  # closest history item: the only one
        assert np.allclose(extra[:, 1], cosines, atol=1e-5) and np.allclose(extra[:, 2], cosines,
                                                                             atol=1e-5)
        # the two train users who read book-3 watched movie-3 and nothing else: cosine 1
        assert np.allclose(extra[:, 5], np.log1p(np.eye(12)[3]))
        assert not extra[:, 3:5].any()  # nobody has two books or two movies: no second hop
        # tower neighbours: every train user here (fewer than 400), each counting their movies
        # with the cosine of their tower query (from their books) to book-3's
        query = lambda h: retriever.model.user_vector(  # noqa: E731
            np.stack([vectors[i] for i in h]), "movies")
        near = {u: float(query(view.histories[u]["books"]) @ query(("book-3",)))
                for u in view.users}
        by_hand = [sum(c for u, c in near.items() if m in view.histories[u]["movies"])
                   for m in movies]
        assert np.allclose(extra[:, 6], np.log1p(np.maximum(by_hand, 0)), atol=1e-5)
        assert extra[3, 6] >= np.log1p(2 - 1e-5)  # book-3's two readers: cosine 1 each
        # token_to_item: every train user has the common words (idf 0); "submarines" (book-3's
        # theme) only its two readers, who watched movie-3 and nothing else: cosine 1
        assert np.allclose(extra[:, 7], np.eye(12)[3], atol=1e-6)
        # token_to_token: only the theme word pairs with itself above chance, PMI log(n / 2)
        # with n train users, 2 of them with "submarines" on each side; averaged over both
        # texts' tokens (6 each: "the submarines chronicles a novel about submarines")
        pmi = np.log(len(view.users) / 2)
        assert np.allclose(extra[:, 8], np.eye(12)[3] * pmi / 6 / 6, atol=1e-6)
        found = rerank_ceiling.analyse(task, view, retriever, 200, more)
    rows = found["rows"]
    assert "linear + closest_history_cosine, 2-fold on test" in rows
    assert found["users"] == 12 and found["truth among candidates"] == 1.0
    assert found["itemknn"] == {"ndcg@10": 1.0, "recall@10": 1.0}  # co-occurrence is the truth
    assert rows["ideal order"]["ndcg@10"] == 1.0
    assert rows["linear, fitted on all test"]["ndcg@10"] > 0.99
    assert rows["linear, fitted on all test + baseline scores"]["ndcg@10"] > 0.99
    assert rows["served"]["ndcg@10"] < 0.9  # random weights
    assert rows["served"]["ndcg@10 / itemknn"] == rows["served"]["ndcg@10"]
    for row in rows.values():
        assert row["ndcg@10"] <= rows["ideal order"]["ndcg@10"] + 1e-9


def test_stress_variants_read_as_datasets(tmp_path: Path, paired_dir: Path) -> None:
    """benchmarks/stress_pair.py: the heavy users are train users with that many items of every
    domain, added to the original; copies repeat everything with disjoint ids and equal texts."""
    from benchmarks.stress_pair import copies, with_heavy_users

    original = Dataset.from_dir(paired_dir)
    with_heavy_users(paired_dir, tmp_path / "heavy", users=2, items=3)
    heavy = Dataset.from_dir(tmp_path / "heavy")
    assert set(heavy.histories) == set(original.histories) | {"heavy-0", "heavy-1"}
    for user in ("heavy-0", "heavy-1"):
        assert heavy.splits[user] == "train"
        assert {d: len(set(h)) for d, h in heavy.histories[user].items()} == {"books": 3, "movies": 3}
    assert all(heavy.histories[u] == h for u, h in original.histories.items())

    copies(paired_dir, tmp_path / "x3", 3)
    tripled = Dataset.from_dir(tmp_path / "x3")
    assert len(tripled.items) == 3 * len(original.items)
    assert len(tripled.histories) == 3 * len(original.histories)
    for user, h in original.histories.items():
        assert tripled.splits[f"{user}~2"] == original.splits[user]
        assert tripled.histories[f"{user}~2"] == {d: tuple(f"{i}~2" for i in ids)
                                                   for d, ids in h.items()}
    item = next(iter(original.items.values()))
    assert tripled.items[f"{item.item_id}~1"].text == item.text


@pytest.mark.slow
def test_new_items_counts_what_a_model_trained_without_them_recommends(
        tmp_path: Path, paired_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/new_items.py: half the movies left out of training, the whole catalog indexed
    with the model, and the left-out movies counted among the test users' movies (one each)."""
    from benchmarks import new_items
    from xdretrieve.config import Settings
    from xdretrieve.data import Dataset
    from xdretrieve.store import ITEMS, open_store

    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    work, out = tmp_path / "work", tmp_path / "figures.json"
    new_items.main(["--data", str(paired_dir), "--domain", "movies", "--share", "0.5",
                    "--work", str(work), "--out", str(out)])
    report = json.loads(out.read_text())
    dataset = Dataset.from_dir(paired_dir)
    held = new_items.left_out(dataset, "movies", 0.5, 0)
    movies = dataset.items_in("movies")
    assert report["left out"] == len(held) == round(len(movies) / 2) and report["of"] == len(movies)
    trained = np.load(work / "model" / "weights.npz")["bias_ids"].tolist()
    assert set(trained) == set(dataset.items) - held  # trained without them
    store = open_store(Settings(store=work / "store"))
    assert store.count(ITEMS) == len(dataset.items)  # indexed with them
    store.close()
    row = report["directions"]["books->movies"]
    assert set(report["directions"]) == {"books->movies"}
    assert row["users"] == len(movies) and row["left-out among them"] == len(held)
    for name in ("re-ranked", "re-ranker off"):
        assert 0 <= row[f"relevant left-out in top 10, {name}"] \
            <= row[f"left-out in top 10, {name}"] <= 10 * row["users"]


def test_new_items_trains_on_the_whole_datasets_split(tmp_path: Path) -> None:
    """Without users.*, the catalog less the left-out items keeps the whole dataset's split: one
    drawn on it (fewer users active in two domains) would train on users the whole one tests."""
    from benchmarks import new_items
    from tests.conftest import write_paired_dataset
    from xdretrieve.data import Dataset
    from xdretrieve.evaluate.protocol import Split

    (write_paired_dataset(tmp_path, users_per_theme=6) / "users.csv").unlink()
    dataset = Dataset.from_dir(tmp_path)
    cut = new_items.without(dataset, new_items.left_out(dataset, "movies", 0.5, 0))
    whole, kept = Split.of(dataset), Split.of(cut)
    assert whole.test and set(kept.test) == set(whole.test)
    assert set(kept.train) == set(whole.train) and set(kept.valid) == set(whole.valid)


def test_cooccurrence_order_weights_each_pair_by_its_distance_in_the_sequence() -> None:
    """benchmarks/cooccurrence_order.py: a pair's distance is the closest the two items came in
    the user's sequence over both domains (a repeat counts, every item between them counts),
    only train users are read, and with weight 1 the co-occurrence is itemknn's."""
    from benchmarks import cooccurrence_order as order
    from xdretrieve.data import Interaction, Item
    from xdretrieve.evaluate.itemknn import ItemKNN
    from xdretrieve.evaluate.protocol import Direction, Protocol

    items = {i: Item(i, d, i) for i, d in (("b0", "books"), ("b1", "books"), ("m0", "movies"),
                                           ("m1", "movies"))}
    seq = {"t1": ["b0", "m0", "b1", "b0", "m1"], "t2": ["m1", "m0", "b1"],
           "v": ["b0", "m0"], "x": ["b1", "m1"]}  # x: a test user, read by no fit
    domain = {i: it.domain for i, it in items.items()}
    events = [Interaction(u, i, domain[i], float(k)) for u, s in seq.items()
              for k, i in enumerate(s)]
    dataset = Dataset(items, events, {"t1": "train", "t2": "train", "v": "valid", "x": "test"})
    protocol = Protocol(dataset)
    ranks = order.sequence_ranks(dataset, set(protocol.split.train))
    assert set(ranks) == {"t1", "t2"} and ranks["t1"][("books", "b0")] == [0, 3]
    view = protocol.train_view(Direction("books", "movies"))
    pairs = order.pair_distances(view, ranks, ItemKNN().max_history)
    found = sorted((view.source_items[r], view.target_items[c], d)
                   for r, c, d in zip(*pairs, strict=True))
    # t1: b0-m0 1, b0-m1 1 (b0's repeat), b1-m0 1, b1-m1 2 (b0 between); t2: b1-m0 1, b1-m1 2
    assert found == [("b0", "m0", 1), ("b0", "m1", 1), ("b1", "m0", 1), ("b1", "m0", 1),
                     ("b1", "m1", 2), ("b1", "m1", 2)]
    s, t = view.item_index("books"), view.item_index("movies")
    binary, plain = order.OrderWeightedItemKNN(pairs, order.WEIGHTS["binary"]), ItemKNN()
    binary.fit(view)
    plain.fit(view)
    assert (binary._cooc != plain._cooc).nnz == 0 and plain._cooc[s["b1"], t["m1"]] == 2
    weighted = order.OrderWeightedItemKNN(pairs, order.WEIGHTS["1 / d"])
    weighted.fit(view)
    assert weighted._cooc[s["b1"], t["m1"]] == pytest.approx(1.0)  # 1/2 + 1/2
    assert weighted._cooc[s["b1"], t["m0"]] == pytest.approx(2.0)
    assert weighted._cooc[s["b0"], t["m1"]] == pytest.approx(1.0)
