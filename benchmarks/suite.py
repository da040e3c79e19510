"""The whole performance run: every figure, at every scale, in one process on one machine.

:func:`run_suite` returns one JSON-ready dict; :mod:`benchmarks.report` turns it into tables
and plots. Ratios are taken within the run, between figures measured minutes apart.

At each scale the same queries go to: the full query path on each Edge index variant (the
layout xdretrieve ships, :data:`benchmarks.engines.SHIPPED`, and the one it shipped before,
:data:`~benchmarks.engines.PREVIOUS`), with a trained model (``Config.model``) the trained query
path with and without its re-ranker, the same filtered search by Edge's exact scan, NumPy and
qdrant-client's in-process mode, and the exact ground truth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import indexing, querypath, recall, synthetic
from benchmarks.common import Machine, load_average, median_of, throughput, timed_repeats
from benchmarks.engines import (
    PREVIOUS,
    SHIPPED,
    Catalog,
    EdgeExact,
    EdgeVariant,
    NumpyExact,
    StoreEngine,
    client_local_store,
    describe,
)
from xdretrieve.config import Settings
from xdretrieve.retriever import RESCORE_WIDTH, Retriever
from xdretrieve.store import USERS, StoreInfo, VectorStore, item_point_id, user_point_id
from xdretrieve.store.edge import EdgeStore

log = logging.getLogger("benchmarks")

Users = tuple[list[int], np.ndarray, list[dict[str, Any]]]  # point ids, vectors, payloads


@dataclass
class Config:
    """What to run and how big. The defaults are the full run; :meth:`quick` is a smoke run."""

    work: Path
    real_store: Path | None = None  # an xdretrieve store of real data (copied, never written)
    data: Path | None = None  # the dataset that built it (for the embedding and re-index runs)
    synthetic_n: int = 1_000_000
    dim: int = 384
    centres: int = 1000
    synthetic_users: int = 10_000
    queries: int = 1000
    repeats: int = 3
    threads: tuple[int, ...] = (1, 2, 4)
    candidates: int = 200
    limit: int = 10
    efs: tuple[int, ...] = (16, 64, 256, 1024)  # hnsw_ef sweep at limit 10
    # ... and with 200 candidates (Qdrant searches with ef >= the limit)
    candidate_efs: tuple[int, ...] = (200, 400, 1200, 2000)
    client_queries: int = 50  # qdrant-client local mode: queries at the real scale
    client_queries_large: int = 5  # ... and at the synthetic scale (seconds each)
    numpy_queries_large: int = 300  # NumPy brute force and Edge's full scan, synthetic scale
    previous: bool = True  # also the previous release's index layout, for comparison ...
    previous_large: bool = False  # ... at the synthetic scale too (10 more minutes at 1M)
    model: Path | None = None  # a trained model directory: the re-ranker rows
    embed_items: int = 2000
    device: str = "cpu"
    embed_batch: int = 64
    reindex_fraction: float = 0.01
    hnsw_m: int = field(default_factory=lambda: Settings().hnsw_m)
    hnsw_ef_construct: int = field(default_factory=lambda: Settings().hnsw_ef_construct)
    search_ef: int = field(default_factory=lambda: Settings().search_ef)
    hnsw_per_domain: bool = field(default_factory=lambda: Settings().hnsw_per_domain)
    quantization: str = field(default_factory=lambda: Settings().quantization)
    seed: int = 0

    @classmethod
    def quick(cls, **kwargs: Any) -> Config:
        small = dict(synthetic_n=30_000, synthetic_users=1000, queries=200, repeats=1,
                     efs=(16, 64, 256), candidate_efs=(200, 400, 1600), client_queries=20,
                     client_queries_large=5, numpy_queries_large=100, embed_items=200)
        return cls(**{**small, **kwargs})

    def index_args(self) -> dict[str, Any]:
        return dict(hnsw_m=self.hnsw_m, hnsw_ef_construct=self.hnsw_ef_construct,
                    search_ef=self.search_ef, hnsw_per_domain=self.hnsw_per_domain,
                    quantization=self.quantization)

    def settings(self, store: Path) -> Settings:
        return Settings(store=store, **self.index_args())

    def variants(self, synthetic_scale: bool = False) -> list[EdgeVariant]:
        shipped = dataclasses.replace(
            SHIPPED, name=describe(SHIPPED.store(self.work, **self.index_args())))
        previous = self.previous and (self.previous_large or not synthetic_scale)
        return [shipped] + ([PREVIOUS] if previous else [])


def run_suite(cfg: Config,
              checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every benchmark of ``cfg``; returns the figures (see ``benchmarks/README.md``).
    ``checkpoint`` is called with the figures so far after each scale."""
    cfg.work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": asdict(Machine.describe()), "load_average_start": load_average(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "scales": [], "indexing": {}}
    t0 = time.perf_counter()
    reference = None
    if cfg.real_store is not None:
        reference = _real_scale(cfg, out)
        if checkpoint:
            checkpoint(out)
    _synthetic_scale(cfg, out, reference)
    out["load_average_end"] = load_average()
    out["wall_s"] = time.perf_counter() - t0
    return out


# -- the real store ----------------------------------------------------------------------------
def _real_scale(cfg: Config, out: dict[str, Any]) -> np.ndarray:
    assert cfg.real_store is not None
    path = indexing.copy_store(cfg.real_store, cfg.work / "real.xdr")
    base = EdgeStore(path, **cfg.index_args())
    info = base.read_info()
    assert info is not None, f"{cfg.real_store} is not an xdretrieve store"
    catalog = Catalog.from_store(base)
    users = _profiles(base)
    log.info("real store: %d items, %d profiles, dim %d", len(catalog.ids), len(users[0]),
             catalog.vectors.shape[1])
    scale = _new_scale(f"real ({len(catalog.ids):,} items)", "real",
                       {"items": len(catalog.ids), "user_profiles": len(users[0]),
                        "dim": int(catalog.vectors.shape[1]), "encoder": info.encoder})
    jobs, resolved = _queries(cfg, base)
    base.close()
    shutil.rmtree(path, ignore_errors=True)
    truth = recall.ground_truth(NumpyExact(catalog), resolved, cfg.candidates)
    scale["info"]["query_scores"] = _query_scores(NumpyExact(catalog), resolved, cfg.candidates)

    runs = []  # upsert and HNSW build of the same points into a fresh store, as `index` does
    for r in range(cfg.repeats):
        log.info("real: load into a fresh Edge store (%d/%d)", r + 1, cfg.repeats)
        with EdgeStore(cfg.work / "real-reload.xdr", **cfg.index_args()) as fresh:
            runs.append(indexing.load_store(fresh, catalog.ids, catalog.vectors,
                                            catalog.payloads))
        shutil.rmtree(cfg.work / "real-reload.xdr", ignore_errors=True)
    out["indexing"]["edge_real"] = {**median_of(runs), "runs": runs,
                                    "memory_method": runs[0]["memory_method"]}

    for i, variant in enumerate(cfg.variants()):
        with _built(cfg, variant, cfg.work / "real-variant.xdr", catalog, users,
                    info) as (store, loaded):
            if i == 0:
                _engines(cfg, scale, catalog, store, resolved, cfg.queries)
            _variant(cfg, scale, variant.name, store, jobs, resolved, truth, loaded,
                     role="shipped" if i == 0 else "previous")
    _finish_scale(cfg, out, scale, catalog, users, info, jobs, resolved, cfg.client_queries)

    if cfg.data is not None:
        texts = indexing.item_texts(cfg.data, cfg.embed_items, info.text_template, cfg.seed)
        log.info("embedding %d real item texts on %s", len(texts), cfg.device)
        out["indexing"]["embed"] = indexing.embed_throughput(
            info.encoder, texts, cfg.device, cfg.embed_batch, info.max_seq_length,
            repeats=cfg.repeats)
        log.info("incremental re-index (%.0f%% of titles changed)", 100 * cfg.reindex_fraction)
        out["indexing"]["reindex"] = indexing.incremental_reindex(
            cfg.real_store, cfg.data, cfg.work, cfg.reindex_fraction, cfg.device, cfg.seed)
    return catalog.vectors


def _profiles(store: VectorStore) -> Users:
    ids, vectors, payloads = [], [], []
    for p in store.scroll(USERS, with_vectors=True):
        ids.append(p.id)
        vectors.append(p.vector)
        payloads.append(p.payload)
    return ids, np.stack(vectors).astype(np.float32), payloads


# -- the synthetic catalog ---------------------------------------------------------------------
def _synthetic_scale(cfg: Config, out: dict[str, Any], reference: np.ndarray | None) -> None:
    log.info("generating %d synthetic vectors (dim %d, %d centres)", cfg.synthetic_n, cfg.dim,
             cfg.centres)
    names = _model_domains(cfg) or synthetic.DOMAINS  # a trained model reads its own domains
    t = time.perf_counter()
    cat = synthetic.generate(cfg.synthetic_n, cfg.dim, cfg.centres, reference,
                             cfg.synthetic_users, seed=cfg.seed, domain_names=names)
    generate_s = time.perf_counter() - t
    catalog = Catalog([item_point_id(i) for i in cat.item_ids], cat.vectors, cat.domains,
                      cat.item_payloads())
    user_ids, user_domains, user_vectors, user_payloads = cat.user_profiles()
    profile_ids = [user_point_id(u, d) for u, d in zip(user_ids, user_domains, strict=True)]
    users = (profile_ids, user_vectors, user_payloads)
    info = StoreInfo(encoder="synthetic", fingerprint="synthetic", dim=cfg.dim, version="bench",
                     domains=list(names), text_template="{title}",
                     max_seq_length=128, pooling="recency")
    scale = _new_scale(f"synthetic ({cfg.synthetic_n:,} vectors)", "synthetic",
                       {"items": cfg.synthetic_n, "user_profiles": len(users[0]), "dim": cfg.dim,
                        "centres": cfg.centres, "calibration": asdict(cat.calibration),
                        "generate_s": generate_s})
    jobs: list[querypath.Job] = []
    resolved: list[querypath.Resolved] = []
    truth: list[list[str]] = []
    for i, variant in enumerate(cfg.variants(synthetic_scale=True)):
        log.info("synthetic: upsert + HNSW build, %s", variant.name)
        with _built(cfg, variant, cfg.work / f"synthetic-{i}.xdr", catalog, users,
                    info) as (store, loaded):
            if i == 0:
                out["indexing"]["edge_synthetic"] = loaded["items"]
                jobs, resolved = _queries(cfg, store)
                log.info("synthetic: exact ground truth")
                truth = recall.ground_truth(NumpyExact(catalog), resolved, cfg.candidates)
                scale["info"]["query_scores"] = _query_scores(NumpyExact(catalog), resolved,
                                                              cfg.candidates)
                _engines(cfg, scale, catalog, store, resolved, cfg.numpy_queries_large)
            _variant(cfg, scale, variant.name, store, jobs, resolved, truth, loaded,
                     role="shipped" if i == 0 else "previous")
    _finish_scale(cfg, out, scale, catalog, users, info, jobs, resolved,
                  cfg.client_queries_large)


@contextlib.contextmanager
def _built(cfg: Config, variant: EdgeVariant, path: Path, catalog: Catalog, users: Users,
           info: StoreInfo) -> Iterator[tuple[EdgeStore, dict[str, Any]]]:
    """A complete xdretrieve store of ``catalog`` and ``users`` in ``variant``'s layout; the
    folder is removed afterwards."""
    shutil.rmtree(path, ignore_errors=True)
    store = variant.store(path, **cfg.index_args())
    try:
        loaded = indexing.build_xdr_store(store, catalog.ids, catalog.vectors, catalog.payloads,
                                          users[0], users[1], users[2], info)
        yield store, loaded
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)


def _query_scores(exact: NumpyExact, resolved: Sequence[querypath.Resolved], candidates: int,
                  n: int = 300) -> dict[str, float]:
    """How far a query's exact neighbours are: median over queries of the cosine of the
    1st, 10th and 200th nearest target-domain item, of the median item, and of the nearest
    item of the user's own (other) domain. What makes an ANN search easy or hard."""
    rows = []
    for q in resolved[:n]:
        scores = np.sort(exact.by_domain[q.domain][0] @ q.vector)[::-1]
        own = max(float(np.max(m @ q.vector)) for d, (m, _, _) in exact.by_domain.items()
                  if d != q.domain)
        k = min(candidates, len(scores)) - 1
        rows.append((scores[0], scores[min(9, k)], scores[k], np.median(scores), own))
    med = np.median(np.array(rows), axis=0)
    return dict(zip(("top1", "top10", f"top{candidates}", "median", "own_domain_top1"),
                    (float(x) for x in med), strict=True))


# -- what every scale measures -----------------------------------------------------------------
FULL_PATH = "full path: user lookup + ANN 200 + top 10"
TRAINED_NO_RERANK = "full path, trained model, re-ranker off"
TRAINED = "full path, trained model, with re-ranker"


def _new_scale(name: str, kind: str, info: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "kind": kind, "info": info, "variants": [], "paths": [],
            "search": [], "throughput": [], "recall": [], "latencies_ms": {}}


def _add(scale: dict[str, Any], table: str, label: str, engine: str, figures: dict[str, Any],
         ms: np.ndarray, note: str = "") -> None:
    scale[table].append({"label": label, "engine": engine, **figures, "note": note})
    scale["latencies_ms"][f"{engine}: {label}"] = [round(float(x), 4) for x in ms]


def _queries(cfg: Config, store: EdgeStore) -> tuple[list[querypath.Job],
                                                     list[querypath.Resolved]]:
    retriever = Retriever(Settings(store=store.path, **cfg.index_args()), store=store)
    jobs = querypath.pick_jobs(retriever, cfg.queries, cfg.seed)
    return jobs, querypath.resolve(retriever, jobs)


def _variant(cfg: Config, scale: dict[str, Any], name: str, store: EdgeStore,
             jobs: list[querypath.Job], resolved: list[querypath.Resolved],
             truth: list[list[str]], loaded: dict[str, Any] | None = None,
             role: str = "shipped") -> None:
    """Full path, throughput (of the shipped layout) and recall on one Edge index."""
    log.info("%s, %s: full path", scale["name"], name)
    retriever = Retriever(cfg.settings(store.path), store=store)
    engine = f"Qdrant Edge, {name}"
    path = querypath.full_path(retriever, cfg.candidates, cfg.limit)
    figures, ms = timed_repeats(path, jobs, cfg.repeats)
    _add(scale, "paths", FULL_PATH, engine, figures, ms, "without re-ranker (no trained model)")
    figures, ms = timed_repeats(querypath.public_api(retriever, cfg.limit), jobs, cfg.repeats)
    _add(scale, "paths", "Retriever.recommend_user(limit=10) as shipped", engine, figures, ms,
         "searches 10 candidates, not 200")
    if role == "shipped":
        _throughput(cfg, scale, name, FULL_PATH, path, jobs)
    log.info("%s, %s: recall", scale["name"], name)
    row, ms = recall.production(store, resolved, truth, cfg.candidates, cfg.limit, cfg.repeats,
                                name)
    scale["recall"].append(row)
    _add(scale, "search", "filtered search, 200 candidates", engine,
         {k: v for k, v in row.items() if k.endswith("_ms") or k in ("n", "repeats")}, ms,
         f"recall@10 {row[f'recall@{cfg.limit}']:.3f}")
    scale["recall"] += recall.ef_sweep(store, resolved, truth, cfg.candidate_efs,
                                       cfg.candidates, cfg.limit, cfg.repeats, name)
    scale["recall"] += recall.ef_sweep(store, resolved, truth, cfg.efs, cfg.limit, cfg.limit,
                                       cfg.repeats, name)
    scale["variants"].append({"name": name, "role": role, "load": loaded,
                              "hnsw": _layout(cfg, store)})


def _layout(cfg: Config, store: EdgeStore) -> dict[str, Any]:
    return {"m": store.hnsw_m, "per_domain": store.hnsw_per_domain,
            "ef_construct": store.hnsw_ef_construct, "search_ef": store.search_ef,
            "int8": store.quantization == "int8",
            "oversampling": 1.0 if store.quantization == "int8" else None,
            "search_threads": store.search_threads}


def _throughput(cfg: Config, scale: dict[str, Any], index: str, label: str,
                path: Callable[[querypath.Job], object], jobs: list[querypath.Job]) -> None:
    for threads in cfg.threads:
        rates = [throughput(path, jobs, threads) for _ in range(cfg.repeats)]
        scale["throughput"].append({"index": index, "path": label, "threads": threads,
                                    "queries_per_s": statistics.median(rates), "runs": rates})


# -- the trained model ---------------------------------------------------------------------------
def _model_domains(cfg: Config) -> tuple[str, str] | None:
    if cfg.model is None:
        return None
    from xdretrieve.model import TrainedModel

    domains = TrainedModel.load(cfg.model).domains
    return (domains[0], domains[1]) if len(domains) >= 2 else None


def _skip_trained(scale: dict[str, Any], why: str) -> None:
    for label in (TRAINED_NO_RERANK, TRAINED):
        scale["paths"].append({"label": label, "engine": "Qdrant Edge, trained model",
                               "skipped": True, "note": why})


def _trained(cfg: Config, scale: dict[str, Any], catalog: Catalog, users: Users,
             info: StoreInfo, jobs: list[querypath.Job]) -> None:
    """The query path of a store built with the trained model ``cfg.model``, with and without
    its re-ranker; rows marked skipped, with the reason, when there is no model to run.

    The store is what ``xdretrieve index --model`` writes, built from the catalog's encoder
    vectors without embedding again: the items through the model's item adapter, the profiles
    the user tower's queries from the adapted items. On the synthetic catalog (a stand-in for encoder vectors)
    the re-ranker reads popularity and co-occurrence of the synthetic users, so that its
    features cost what they cost on real data.
    """
    if cfg.model is None:
        _skip_trained(scale, "no trained model given (`run.py --model DIR`, a directory of "
                      "`xdretrieve finetune`): the re-ranker belongs to a trained model")
        return
    from xdretrieve.encoder import resolve_model
    from xdretrieve.model import TrainedModel
    from xdretrieve.rerank import ItemStats
    from xdretrieve.users import PROFILE_VECTORS, profile_kind, profile_vector

    ref = resolve_model(str(cfg.model))
    model = TrainedModel.load(cfg.model)
    synthetic_scale = info.encoder == "synthetic"
    if not synthetic_scale and info.fingerprint != ref.base_fingerprint:
        _skip_trained(scale, f"the model {cfg.model} was trained on encoder "
                      f"{model.manifest['base_model']} ({ref.base_fingerprint}), the store "
                      f"holds vectors of {info.encoder} ({info.fingerprint})")
        return
    unknown = sorted(set(catalog.domains.tolist()) - set(model.domains))
    base_dim = model.weights[f"proj_w_{model.domains[0]}"].shape[0]
    if unknown or catalog.vectors.shape[1] != base_dim:
        _skip_trained(scale, f"the model {cfg.model} (domains {', '.join(model.domains)}, "
                      f"input dimension {base_dim}) cannot read this catalog (domains "
                      f"{', '.join(sorted(set(catalog.domains.tolist())))}, dimension "
                      f"{catalog.vectors.shape[1]})")
        return
    log.info("%s: trained model %s, adapting %d item vectors", scale["name"], cfg.model,
             len(catalog.ids))
    vectors = model.item_vectors(catalog.vectors, catalog.domains.tolist())
    row_of = {p["item_id"]: r for r, p in enumerate(catalog.payloads)}
    half_life = Settings().recency_half_life
    profiles = np.stack([profile_vector(vectors[[row_of[i] for i in p["history"]]],
                                        p["domain"], info.pooling, half_life, model)
                         for p in users[2]]).astype(np.float32)
    trained_info = dataclasses.replace(info, encoder=ref.name, fingerprint=ref.fingerprint,
                                       dim=int(vectors.shape[1]),
                                       extra={"trained": str(ref.trained),
                                              PROFILE_VECTORS: profile_kind(model)})
    adapted = Catalog(catalog.ids, vectors, catalog.domains, catalog.payloads)
    name = f"trained model (dim {vectors.shape[1]}), {describe(SHIPPED.store(cfg.work, **cfg.index_args()))}"
    engine = f"Qdrant Edge, {name}"
    with _built(cfg, SHIPPED, cfg.work / "trained.xdr", adapted, (users[0], profiles, users[2]),
                trained_info) as (store, loaded):
        retriever = Retriever(cfg.settings(store.path), store=store)
        if synthetic_scale and retriever.model.reranker is not None:
            histories: dict[str, dict[str, tuple[str, ...]]] = {}
            for p in users[2]:
                histories.setdefault(p["user_id"], {})[p["domain"]] = tuple(p["history"])
            stats = ItemStats.fit([p["item_id"] for p in catalog.payloads], histories,
                                  catalog.domains.tolist())
            retriever.model.reranker = dataclasses.replace(retriever.model.reranker, stats=stats)
            # and knows them as it knows the items it was trained with (no learned bias)
            retriever.model.bias = dict.fromkeys(stats.ids, 0.0)
        retriever.warm()  # once, before the clock starts
        plain = querypath.without_reranker(retriever)
        fetch = RESCORE_WIDTH * cfg.candidates
        log.info("%s, %s: query path", scale["name"], name)
        figures, ms = timed_repeats(querypath.trained_path(plain, cfg.limit), jobs, cfg.repeats)
        _add(scale, "paths", TRAINED_NO_RERANK, engine, figures, ms,
             f"user tower, {fetch} neighbours + items by bias, exact top {cfg.limit}; "
             "re-ranker off")
        if retriever.model.reranker is None:
            scale["paths"].append({"label": TRAINED, "engine": engine, "skipped": True,
                                   "note": f"the model {cfg.model} has no re-ranker (training "
                                   "did not keep one)"})
        else:
            path = querypath.trained_path(retriever, cfg.limit)
            figures, ms = timed_repeats(path, jobs, cfg.repeats)
            _add(scale, "paths", TRAINED, engine, figures, ms,
                 f"user tower, {fetch} neighbours + items by bias, re-ranker over {cfg.candidates}")
            _throughput(cfg, scale, name, TRAINED, path, jobs)
        # the recall of the trained path's own search (its neighbours by cosine)
        resolved = querypath.resolve(retriever, jobs)
        truth = recall.ground_truth(NumpyExact(adapted), resolved, fetch)
        row, ms = recall.production(store, resolved, truth, fetch, cfg.limit, cfg.repeats, name,
                                    with_payload=False)
        scale["recall"].append(row)
        _add(scale, "search", f"filtered search, {fetch} candidates, no payloads (trained model)",
             engine,
             {k: v for k, v in row.items() if k.endswith("_ms") or k in ("n", "repeats")}, ms,
             f"recall@10 {row[f'recall@{cfg.limit}']:.3f}")
        scale["variants"].append({"name": name, "role": "trained", "load": loaded,
                                  "hnsw": _layout(cfg, store), "model": str(cfg.model)})
    if not synthetic_scale:  # the same paths with the engine's search pool, side by side
        pooled = dataclasses.replace(SHIPPED, search_threads=0)
        name = (f"trained model (dim {vectors.shape[1]}), "
                f"{describe(pooled.store(cfg.work, **cfg.index_args()))}")
        with _built(cfg, pooled, cfg.work / "trained-pooled.xdr", adapted,
                    (users[0], profiles, users[2]), trained_info) as (store, loaded):
            retriever = Retriever(cfg.settings(store.path), store=store)
            retriever.warm()
            log.info("%s, %s: query path", scale["name"], name)
            note = "the engine's default search pool, for comparison"
            figures, ms = timed_repeats(
                querypath.trained_path(querypath.without_reranker(retriever), cfg.limit), jobs,
                cfg.repeats)
            _add(scale, "paths", TRAINED_NO_RERANK, f"Qdrant Edge, {name}", figures, ms, note)
            if retriever.model.reranker is not None:
                figures, ms = timed_repeats(querypath.trained_path(retriever, cfg.limit), jobs,
                                            cfg.repeats)
                _add(scale, "paths", TRAINED, f"Qdrant Edge, {name}", figures, ms, note)
            scale["variants"].append({"name": name, "role": "comparison", "load": loaded,
                                      "hnsw": _layout(cfg, store), "model": str(cfg.model)})


def _finish_scale(cfg: Config, out: dict[str, Any], scale: dict[str, Any], catalog: Catalog,
                  users: Users, info: StoreInfo, jobs: list[querypath.Job],
                  resolved: list[querypath.Resolved], client_queries: int) -> None:
    """What every scale ends with: the trained model's path, qdrant-client's local mode, the
    ratios; then the scale joins the results."""
    _trained(cfg, scale, catalog, users, info, jobs)
    _client_local(cfg, scale, catalog, users, info, jobs, resolved, client_queries)
    _ratios(scale)
    out["scales"].append(scale)


@contextlib.contextmanager
def _blas_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(n, user_api="blas"):
        yield


def _engines(cfg: Config, scale: dict[str, Any], catalog: Catalog, edge: EdgeStore,
             resolved: Sequence[querypath.Resolved], n_exact: int) -> None:
    """The same filtered search (200 candidates) by Edge's full scan and by NumPy."""
    exact = NumpyExact(catalog)
    queries = resolved[:n_exact]
    note = "" if len(queries) == len(resolved) else f"first {len(queries)} queries"
    runs: list[tuple[Any, str, int | None]] = [
        (EdgeExact(edge), note, None),
        (exact, "ids and scores only; 1 BLAS thread" + (f"; {note}" if note else ""), 1),
        (exact, "ids and scores only; BLAS threads: default" + (f"; {note}" if note else ""),
         None)]
    for engine, why, blas in runs:
        log.info("%s: search by %s (%d queries)", scale["name"], engine.name, len(queries))
        with _blas_threads(blas):
            figures, ms, _ = recall.measure(engine, queries, cfg.candidates, cfg.repeats)
        label = engine.name + (" (1 BLAS thread)" if blas == 1 else "")
        _add(scale, "search", "filtered search, 200 candidates", label, figures, ms, why)


def _client_local(cfg: Config, scale: dict[str, Any], catalog: Catalog, users: Users,
                  info: StoreInfo, jobs: list[querypath.Job],
                  resolved: list[querypath.Resolved], n: int) -> None:
    """qdrant-client's in-process mode with the same points, through xdretrieve's server
    backend: the full path and the search, on the first ``n`` queries."""
    if n <= 0:
        return
    log.info("%s: qdrant-client local mode: loading %d points", scale["name"], len(catalog.ids))
    repeats = cfg.repeats if n >= 20 else 1
    note = f"first {min(n, len(jobs))} of the {len(jobs)} queries" + (
        ", 1 run" if repeats == 1 else "")
    with warnings.catch_warnings():  # it warns that it is brute force above 20,000 points
        warnings.simplefilter("ignore")
        client = client_local_store()
        try:
            loaded = indexing.build_xdr_store(client, catalog.ids, catalog.vectors,
                                              catalog.payloads, users[0], users[1], users[2],
                                              info, build=False)
            scale["client_local_load"] = loaded
            local = Retriever(Settings(), store=client)
            log.info("%s: qdrant-client local mode: %d queries", scale["name"], n)
            figures, ms = timed_repeats(querypath.full_path(local, cfg.candidates, cfg.limit),
                                        jobs[:n], repeats, warmup=1)
            _add(scale, "paths", "full path: user lookup + ANN 200 + top 10",
                 "qdrant-client :memory:", figures, ms, note)
            engine = StoreEngine(client, "qdrant-client :memory: (exact, in Python)")
            figures, ms, _ = recall.measure(engine, resolved[:n], cfg.candidates, repeats,
                                            warmup=1)
            _add(scale, "search", "filtered search, 200 candidates", engine.name, figures, ms,
                 note)
        finally:
            client.close()


def _ratios(scale: dict[str, Any]) -> None:
    """p50 of each other engine over p50 of Edge as `index` builds it, within this scale; the
    search ratios compare with that index's own 200-candidate search (its recall row)."""
    edge_path = next(r for r in scale["paths"] if r["engine"].startswith("Qdrant Edge")
                     and r["label"].startswith("full path:"))
    edge_search = scale["recall"][0]
    ratios = {}
    for r in scale["paths"]:
        if r["engine"].startswith("qdrant-client") and r["label"].startswith("full path:"):
            ratios[f"full path: {r['engine']}"] = r["p50_ms"] / edge_path["p50_ms"]
    for r in scale["search"]:
        ratios[f"search: {r['engine']}"] = r["p50_ms"] / edge_search["p50_ms"]
    scale["ratios"] = ratios
