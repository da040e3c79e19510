"""``index``: embed a dataset's items and users and bring the store up to date.

Idempotent and incremental: an item is re-embedded only when its text (as the encoder sees it)
changed, a user profile is rewritten only when its history or its items changed, and points no
longer in the input are deleted. A run cut short is finished by running it again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from xdretrieve.config import Settings
from xdretrieve.data import Dataset
from xdretrieve.encoder import Encoder, ModelRef, item_text, resolve_model
from xdretrieve.store import (
    ITEMS,
    USERS,
    StoreInfo,
    VectorStore,
    item_point_id,
    open_store,
    user_point_id,
)
from xdretrieve.users import pool

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What an index run did, with timings in seconds."""

    items: int = 0
    items_embedded: int = 0
    items_deleted: int = 0
    users: int = 0
    user_profiles: int = 0
    profiles_written: int = 0
    profiles_deleted: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.items_embedded or self.items_deleted or self.profiles_written
                    or self.profiles_deleted)


def _digest(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:20]


def index_dataset(dataset: Dataset, settings: Settings | None = None, *,
                  store: VectorStore | None = None, encoder: Encoder | None = None,
                  users: bool = True, recreate: bool = False,
                  progress: bool = False) -> IndexReport:
    """Embed and store every item of ``dataset`` and, with ``users``, a profile vector per user
    and domain (pooled from that domain's history).

    Args:
        dataset: validated items and interactions.
        settings: configuration (store location, encoder, pooling, HNSW).
        store: an open store to use instead of the one ``settings`` names.
        encoder: a loaded encoder to use instead of loading ``settings.model``.
        users: also store user profiles.
        recreate: drop what the store holds first (needed to change the encoder).
        progress: show progress bars.

    Raises:
        EncoderMismatchError: the store was built by another encoder and ``recreate`` is off.

    Example:
        >>> ds = Dataset.from_dir("data/shop")                                 # doctest: +SKIP
        >>> report = index_dataset(ds, Settings(store="shop.xdr"), progress=True)
    """
    settings = settings or Settings()
    own_store = store is None
    store = store or open_store(settings)
    try:
        return _index(dataset, settings, store, encoder, users, recreate, progress)
    finally:
        if own_store:
            store.close()


def _index(dataset: Dataset, settings: Settings, store: VectorStore, encoder: Encoder | None,
           users: bool, recreate: bool, progress: bool) -> IndexReport:
    from xdretrieve import __version__

    report = IndexReport(items=len(dataset.items))
    t0 = time.perf_counter()
    ref: ModelRef = encoder.ref if encoder is not None else resolve_model(settings.model)
    info = store.read_info()
    if recreate:
        for collection in (ITEMS, USERS):
            if store.exists(collection):
                store.drop(collection)
        info = None
    elif info is not None:
        info.check_encoder(ref.name, ref.fingerprint)

    # What the store has: item id -> (text hash, vector)
    stored: dict[str, tuple[str, np.ndarray]] = {}
    if store.exists(ITEMS):
        for p in store.scroll(ITEMS, with_vectors=True, fields=["item_id", "text_hash"]):
            stored[p.payload["item_id"]] = (p.payload.get("text_hash", ""), p.vector)
    report.timings["scan_store"] = time.perf_counter() - t0

    # Items whose text changed (or are new) are embedded; the rest keep their vectors.
    texts = {iid: item_text(it, settings.text_template) for iid, it in dataset.items.items()}
    hashes = {iid: _digest(t, str(settings.max_seq_length)) for iid, t in texts.items()}
    todo = [iid for iid in dataset.items if stored.get(iid, ("",))[0] != hashes[iid]]
    t = time.perf_counter()
    vectors: dict[str, np.ndarray] = {iid: v for iid, (h, v) in stored.items()
                                      if iid in dataset.items and h == hashes[iid]}
    dim = next(iter(vectors.values())).shape[0] if vectors else None
    if todo:
        if encoder is None:
            encoder = Encoder.from_settings(settings, ref)
            report.timings["load_encoder"] = time.perf_counter() - t
            t = time.perf_counter()
        dim = encoder.dim
        embedded = encoder.encode([texts[i] for i in todo], progress=progress,
                                  desc="embedding items")
        vectors.update(zip(todo, embedded))
    report.items_embedded = len(todo)
    report.timings["embed"] = time.perf_counter() - t
    if dim is None:
        raise AssertionError("no vectors and nothing to embed")  # read_items rejects empty files

    t = time.perf_counter()
    store.ensure(ITEMS, dim, ("domain",))
    if todo:
        payloads = []
        for iid in todo:
            item = dataset.items[iid]
            payloads.append({**item.extra, "item_id": iid, "domain": item.domain,
                             "title": item.title, "text": item.text, "text_hash": hashes[iid]})
        store.upsert(ITEMS, [item_point_id(i) for i in todo], np.stack([vectors[i] for i in todo]),
                     payloads, progress=progress)
    gone = [iid for iid in stored if iid not in dataset.items]
    store.delete(ITEMS, [item_point_id(i) for i in gone])
    report.items_deleted = len(gone)
    report.timings["upsert_items"] = time.perf_counter() - t

    if users:
        _index_users(dataset, settings, store, vectors, hashes, dim, report, progress)

    t = time.perf_counter()
    if report.changed or info is None:
        for collection in (ITEMS, USERS):
            if store.exists(collection):
                store.build_index(collection)
    report.timings["build_index"] = time.perf_counter() - t

    now = StoreInfo(encoder=ref.name, fingerprint=ref.fingerprint, dim=dim, version=__version__,
                    domains=sorted(set(dataset.domains) | set(info.domains if info else [])),
                    text_template=settings.text_template,
                    max_seq_length=settings.max_seq_length, pooling=settings.pooling)
    if info is not None:
        now.created_at = info.created_at
        if not report.changed:
            now.updated_at = info.updated_at
    store.write_info(now)
    report.timings["total"] = time.perf_counter() - t0
    return report


def _index_users(dataset: Dataset, settings: Settings, store: VectorStore,
                 vectors: dict[str, np.ndarray], hashes: dict[str, str], dim: int,
                 report: IndexReport, progress: bool) -> None:
    t = time.perf_counter()
    store.ensure(USERS, dim, ("domain", "user_id"))
    stored_state = {p.id: p.payload.get("state", "")
                    for p in store.scroll(USERS, fields=["state"])}
    pooling = f"{settings.pooling}:{settings.recency_half_life}"
    ids, vecs, payloads = [], [], []
    wanted: set[str] = set()
    for user, per_domain in dataset.histories.items():
        for domain, history in per_domain.items():
            pid = user_point_id(user, domain)
            wanted.add(pid)
            state = _digest(pooling, *(f"{i}:{hashes[i]}" for i in history))
            if stored_state.get(pid) == state:
                continue
            matrix = np.stack([vectors[i] for i in history])  # (len(history), dim)
            ids.append(pid)
            vecs.append(pool(matrix, settings.pooling, settings.recency_half_life))
            payloads.append({"user_id": user, "domain": domain, "history": list(history),
                             "state": state})
    if ids:
        store.upsert(USERS, ids, np.stack(vecs), payloads, progress=progress)
    gone = [pid for pid in stored_state if pid not in wanted]
    store.delete(USERS, gone)
    report.users = len(dataset.histories)
    report.user_profiles = len(wanted)
    report.profiles_written = len(ids)
    report.profiles_deleted = len(gone)
    report.timings["users"] = time.perf_counter() - t
