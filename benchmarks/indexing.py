"""Indexing: embedding throughput, upsert throughput, HNSW build, incremental re-index."""

from __future__ import annotations

import dataclasses
import resource
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import peak_memory
from xdretrieve.config import Settings
from xdretrieve.store import ITEMS, USERS, StoreInfo, VectorStore
from xdretrieve.store.edge import EdgeStore


def embed_throughput(model: str, texts: Sequence[str], device: str, batch_size: int,
                     max_seq_length: int, repeats: int) -> dict[str, Any]:
    """Items/s of :class:`xdretrieve.encoder.Encoder` on ``texts`` (no cache), median over
    ``repeats`` passes after one warm-up batch."""
    import torch

    from xdretrieve.encoder import Encoder, resolve_model

    with peak_memory() as mem:
        t = time.perf_counter()
        encoder = Encoder(resolve_model(model), device=device, batch_size=batch_size,
                          max_seq_length=max_seq_length, cache_dir=None)
        load_s = time.perf_counter() - t
        encoder.encode(list(texts[:batch_size]))  # warm-up: first-call allocations, kernels
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = encoder.encode(list(texts))
            if encoder.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates.append(len(texts) / (time.perf_counter() - t))
    dtype = str(next(encoder.model.parameters()).dtype).replace("torch.", "")
    device_name = (torch.cuda.get_device_name(encoder.device) if encoder.device.startswith("cuda")
                   else f"cpu ({torch.get_num_threads()} torch threads)")
    return {"model": encoder.ref.name, "device": encoder.device, "device_name": device_name,
            "dtype": dtype, "batch_size": batch_size, "max_seq_length": max_seq_length,
            "items": len(texts), "mean_chars": float(np.mean([len(x) for x in texts])),
            "items_per_s": statistics.median(rates), "items_per_s_runs": rates,
            "load_s": load_s, "dim": int(out.shape[1]), "repeats": repeats,
            "peak_rss_mib": mem.peak_mib, "memory_method": mem.method}


def cpu_with_workers() -> float:
    """CPU seconds of this process and of its finished child processes (a large upsert
    writes from worker processes: their CPU counts)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def load_store(store: VectorStore, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[dict[str, Any]], keyword_fields: Sequence[str] = ("domain",),
               collection: str = ITEMS, build: bool = True) -> dict[str, Any]:
    """Create ``collection``, upsert the points through :meth:`VectorStore.upsert` (batches of
    :data:`xdretrieve.store.base.UPSERT_BATCH`), then build its index; timed apart."""
    if store.exists(collection):
        store.drop(collection)
    store.ensure(collection, vectors.shape[1], keyword_fields)
    with peak_memory() as mem_upsert:
        c, t = cpu_with_workers(), time.perf_counter()
        store.upsert(collection, ids, vectors, payloads)
        upsert_s, upsert_cpu_s = time.perf_counter() - t, cpu_with_workers() - c
    out: dict[str, Any] = {"points": len(ids), "upsert_s": upsert_s,
                           "points_per_s": len(ids) / upsert_s,
                           "points_per_cpu_s": len(ids) / max(upsert_cpu_s, 1e-9),
                           "upsert_peak_rss_mib": mem_upsert.peak_mib,
                           "memory_method": mem_upsert.method}
    if build:
        with peak_memory() as mem_build:
            c, t = time.process_time(), time.perf_counter()
            store.build_index(collection)
            out["build_s"] = time.perf_counter() - t
            out["build_cpu_s"] = time.process_time() - c
        out["build_peak_rss_mib"] = mem_build.peak_mib
    return out


def build_xdr_store(store: VectorStore, item_ids: Sequence[str], vectors: np.ndarray,
                    payloads: Sequence[dict[str, Any]], profile_ids: Sequence[str],
                    profile_vectors: np.ndarray, profile_payloads: Sequence[dict[str, Any]],
                    info: StoreInfo, build: bool = True) -> dict[str, Any]:
    """A whole xdretrieve store (items, user profiles, build info) from precomputed vectors
    and point ids, laid out as ``index`` lays it out, so that a :class:`Retriever` opens it."""
    items = load_store(store, list(item_ids), vectors, payloads, build=build)
    users = load_store(store, list(profile_ids), profile_vectors, profile_payloads,
                       keyword_fields=("domain", "user_id"), collection=USERS, build=build)
    store.write_info(info)
    return {"items": items, "users": users}


def copy_store(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target


def incremental_reindex(base_store: Path, data_dir: Path, work: Path, fraction: float,
                        device: str, seed: int = 0) -> dict[str, Any]:
    """``index_dataset`` on a copy of the store after ``fraction`` of the item titles changed.

    The embedding cache is a fresh folder, so the changed items are really embedded; the
    unchanged ones are not re-embedded, by design (their text hash is in the store). A no-op
    re-index of the unchanged data runs first, for comparison (after one that brings the copy
    up to date).
    """
    from xdretrieve.data import Dataset
    from xdretrieve.indexer import index_dataset

    store_dir = copy_store(base_store, work / "reindex.xdr")
    with EdgeStore(store_dir) as s:
        info = s.read_info()
    if info is None:
        raise ValueError(f"{base_store} is not an xdretrieve store")
    settings = Settings(store=store_dir, cache_dir=work / "reindex-cache", model=info.encoder,
                        device=device, text_template=info.text_template,
                        max_seq_length=info.max_seq_length, pooling=info.pooling)
    dataset = Dataset.from_dir(data_dir)
    # not timed: brings up to date a store that an older release wrote (since 395a7e2 a store
    # without the fields' hash has every item written again once), so that the no-op is one
    index_dataset(dataset, settings)
    t = time.perf_counter()
    noop = index_dataset(dataset, settings)
    noop_s = time.perf_counter() - t

    rng = np.random.default_rng(seed)
    ids = sorted(dataset.items)
    changed = rng.choice(len(ids), size=max(1, round(fraction * len(ids))), replace=False)
    items = dict(dataset.items)
    for j in changed:
        item = items[ids[j]]
        items[ids[j]] = dataclasses.replace(item, title=f"{item.title} (new edition)")
    modified = Dataset(items, dataset.interactions, dataset.splits, name=dataset.name)
    with peak_memory() as mem:
        t = time.perf_counter()
        report = index_dataset(modified, settings)
        total_s = time.perf_counter() - t
    return {"items": len(ids), "changed_items": len(changed), "fraction": fraction,
            "items_embedded": report.items_embedded,
            "profiles_written": report.profiles_written, "user_profiles": report.user_profiles,
            "total_s": total_s, "timings": dict(report.timings), "noop_s": noop_s,
            "noop_embedded": noop.items_embedded, "noop_changed": noop.changed,
            "peak_rss_mib": mem.peak_mib,
            "memory_method": mem.method, "device": device}


def item_texts(data_dir: Path, n: int, template: str, seed: int = 0) -> list[str]:
    """``n`` real item texts as the encoder sees them, drawn with a fixed seed."""
    from xdretrieve.data import read_items
    from xdretrieve.encoder import item_text

    items = list(read_items(next(p for p in sorted(Path(data_dir).glob("items.*")))).values())
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(items), size=min(n, len(items)), replace=False)
    return [item_text(items[i], template) for i in picks]
