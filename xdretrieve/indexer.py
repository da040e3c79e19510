"""``index``: embed a dataset's items and users and bring the store up to date.

Idempotent and incremental: an item is re-embedded only when its text (as the encoder sees it)
or its domain changed, and written again with its vector when only its other fields did; a
user profile is rewritten only when its history or its items changed, and points no longer in
the input are deleted. A run cut short is finished by running it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from xdretrieve.config import Settings
from xdretrieve.data import Dataset, Item
from xdretrieve.data.records import FIELDS_HASH, TEXT_HASH, domain_problem
from xdretrieve.encoder import Encoder, ModelRef, item_text, resolve_model
from xdretrieve.errors import DataError
from xdretrieve.model import TrainedModel, check_domains, read_manifest, trained_items
from xdretrieve.store import (
    ITEMS,
    USERS,
    StoreInfo,
    VectorStore,
    item_point_id,
    open_store,
    user_point_id,
)
from xdretrieve.users import PROFILE_VECTORS, TOWER_PROFILES, profile_kind, profile_vector

log = logging.getLogger(__name__)

POPULAR_KEPT = 1000  # per domain, in the store's build info: the answer to a user with no history


@dataclass
class IndexReport:
    """What an index run did, with timings in seconds."""

    items: int = 0
    items_embedded: int = 0  # new or changed items given vectors ...
    items_from_cache: int = 0  # ... of which read from the embedding cache
    items_rewritten: int = 0  # items whose fields alone changed, written with their vectors
    items_deleted: int = 0
    users: int = 0
    user_profiles: int = 0
    profiles_written: int = 0
    profiles_deleted: int = 0
    resumed: bool = False  # the store was left incomplete by an interrupted run; now it is not
    # with a trained model: items it learned no bias for (added to the catalog since it was
    # trained), which seldom reach a user's top 10 until it is trained again with them
    items_new_to_model: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.items_embedded or self.items_rewritten or self.items_deleted
                    or self.profiles_written or self.profiles_deleted)


def _digest(*parts: object) -> int:
    """63 bits of the SHA-1 of ``parts``: stored as an integer payload value, which Qdrant
    Edge's binding converts about three times faster than a string (and the payload is most
    of an upsert's cost)."""
    digest = hashlib.sha1("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _text_hash(text: str, max_seq_length: int) -> int:
    """What decides whether an item is re-embedded: its encoder text and the cut length."""
    return _digest(text, max_seq_length)


def _item_payload(item: Item, text_hash: int) -> dict[str, Any]:
    """An item's stored fields, with ``text_hash`` (whether its vector is current) and
    ``fields_hash`` (whether the rest is: a price or a text outside the template may change
    alone)."""
    fields = {**item.extra, "item_id": item.item_id, "domain": item.domain, "title": item.title,
              "text": item.text}
    return {**fields, TEXT_HASH: text_hash, FIELDS_HASH: _digest(
        json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str))}


def _popular(dataset: Dataset) -> dict[str, list[str]]:
    """Per domain, the :data:`POPULAR_KEPT` items most users of ``dataset`` have, most first
    (ties in catalog order): the answer to a user with no history at all."""
    counts: dict[str, int] = dict.fromkeys(dataset.items, 0)
    for per_domain in dataset.histories.values():
        for history in per_domain.values():
            for iid in set(history):
                counts[iid] += 1
    out: dict[str, list[str]] = {}
    for iid in sorted(counts, key=lambda i: -counts[i]):  # stable: catalog order breaks ties
        if counts[iid]:
            kept = out.setdefault(dataset.items[iid].domain, [])
            if len(kept) < POPULAR_KEPT:
                kept.append(iid)
    return out


def _check_domain_names(domains: Iterable[str], where: str) -> None:
    """Refuse a domain name the readers would refuse in a file ('->'): items built in Python
    reach the store without a reader."""
    for domain in domains:
        problem = domain_problem(domain)
        if problem:
            raise DataError(where, None, "domain", problem)


def _store_info(ref: ModelRef, dim: int, domains: Iterable[str], settings: Settings,
                previous: StoreInfo | None, changed: bool,
                popular: dict[str, list[str]] | None = None,
                profiles: str | None = None, complete: bool = True) -> StoreInfo:
    """The build info to write after a run; creation time kept, update time only on change.
    ``profiles``: what the user profiles written by this run hold (None: none written).
    ``complete``: False for the info a first run records before it writes."""
    from xdretrieve import __version__

    now = StoreInfo(encoder=ref.name, fingerprint=ref.fingerprint, dim=dim, version=__version__,
                    domains=sorted(set(domains) | set(previous.domains if previous else [])),
                    text_template=settings.text_template,
                    max_seq_length=settings.max_seq_length, pooling=settings.pooling,
                    extra={"trained": str(ref.trained)} if ref.trained else {},
                    complete=complete)
    if popular:
        now.extra["popular"] = popular
    elif previous is not None and "popular" in previous.extra:
        now.extra["popular"] = previous.extra["popular"]  # an items-only run keeps it
    if profiles is None and previous is not None:
        profiles = previous.extra.get(PROFILE_VECTORS)
    if profiles == TOWER_PROFILES:  # the retriever looks the user tower's queries up
        now.extra[PROFILE_VECTORS] = profiles
    if previous is not None:
        now.created_at = previous.created_at
        if not changed:
            now.updated_at = previous.updated_at
    return now


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
        DataError: a domain name contains '->' (as the readers refuse it in a file).

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
    report = IndexReport(items=len(dataset.items))
    t0 = time.perf_counter()
    _check_domain_names(dataset.domains, f"dataset {dataset.name or '(in memory)'}")
    ref: ModelRef = encoder.ref if encoder is not None else resolve_model(settings.model)
    if ref.trained is not None:  # before any work: the model adapts items of its domains only
        check_domains(ref.trained, read_manifest(ref.trained)["domains"], dataset.domains)
        known = trained_items(ref.trained)
        report.items_new_to_model = sum(iid not in known for iid in dataset.items)
    info = None if recreate else store.read_info()
    if info is not None:
        info.check_encoder(ref.name, ref.fingerprint, (
            "it was changed or retrained since it built the store: add --recreate to replace "
            "the store's vectors with its own, or index into a new store"
            if ref.name == info.encoder else
            f"index with --model '{info.encoder}', add --recreate to replace what the store "
            f"holds with the new encoder's vectors, or index into a new store"))
    # Without build info (a new store, --recreate, or a store an older release left half built)
    # no stored vector is known to be this encoder's: everything is embedded, and what the
    # store holds is dropped only then, so an interrupted --recreate leaves the old store whole.
    replace = info is None
    report.resumed = info is not None and not info.complete

    # What the store has: item id -> (text hash, domain, fields hash, vector)
    stored: dict[str, tuple[int | None, str | None, int | None, np.ndarray]] = {}
    if not replace and store.exists(ITEMS):
        for p in store.scroll(ITEMS, with_vectors=True,
                              fields=["item_id", TEXT_HASH, "domain", FIELDS_HASH]):
            stored[p.payload["item_id"]] = (p.payload.get(TEXT_HASH), p.payload.get("domain"),
                                            p.payload.get(FIELDS_HASH), p.vector)
    report.timings["scan_store"] = time.perf_counter() - t0

    # Items whose text or domain changed (or are new) are embedded (a trained model adapts a
    # vector by its domain); the rest keep their vectors, and are written again with them when
    # their other fields changed.
    texts = {iid: item_text(it, settings.text_template) for iid, it in dataset.items.items()}
    hashes = {iid: _text_hash(t, settings.max_seq_length) for iid, t in texts.items()}
    payloads = {iid: _item_payload(it, hashes[iid]) for iid, it in dataset.items.items()}
    vectors: dict[str, np.ndarray] = {
        iid: v for iid, (h, domain, _, v) in stored.items()
        if iid in dataset.items and (h, domain) == (hashes[iid], dataset.items[iid].domain)}
    todo = [iid for iid in dataset.items if iid not in vectors]
    rewrite = [iid for iid in vectors if stored[iid][2] != payloads[iid][FIELDS_HASH]]
    t = time.perf_counter()
    dim = next(iter(vectors.values())).shape[0] if vectors else None
    if todo:
        if encoder is None:
            encoder = Encoder.from_settings(settings, ref)
            report.timings["load_encoder"] = time.perf_counter() - t
            t = time.perf_counter()
        dim, hits = encoder.dim, encoder.cache_hits
        embedded = encoder.encode_items([texts[i] for i in todo],
                                        [dataset.items[i].domain for i in todo],
                                        progress=progress, desc="embedding items")
        report.items_from_cache = encoder.cache_hits - hits
        vectors.update(zip(todo, embedded, strict=True))
    report.items_embedded, report.items_rewritten = len(todo), len(rewrite)
    report.timings["embed"] = time.perf_counter() - t
    if dim is None:
        raise AssertionError("no vectors and nothing to embed")  # read_items rejects empty files

    t = time.perf_counter()
    written = todo + rewrite
    if replace:  # a full disk is refused before the old store is dropped (the upsert below
        # checks again, as every upsert does: after the drop, and where nothing was dropped)
        store.check_space(dim, [payloads[i] for i in written], replacing=True)
        for collection in (ITEMS, USERS):
            if store.exists(collection):
                store.drop(collection)
    store.ensure(ITEMS, dim, ("domain",))
    if replace:  # recorded before the first point: a rerun after an interruption knows whose
        # vectors the store holds, and a query knows the store is not complete yet
        info = _store_info(ref, dim, dataset.domains, settings, None, True, complete=False)
        store.write_info(info)
    if written:
        store.upsert(ITEMS, [item_point_id(i) for i in written],
                     np.stack([vectors[i] for i in written]), [payloads[i] for i in written],
                     progress=progress)
    gone = [iid for iid in stored if iid not in dataset.items]
    store.delete(ITEMS, [item_point_id(i) for i in gone])
    report.items_deleted = len(gone)
    report.timings["upsert_items"] = time.perf_counter() - t

    profiles = None
    if users:
        model = encoder.trained if encoder is not None else (
            TrainedModel.load(ref.trained) if ref.trained else None)
        profiles = profile_kind(model)
        # what a profile's vector depends on besides its history (a change rewrites it)
        depends = (f"tower:{ref.fingerprint}" if profiles == TOWER_PROFILES
                   else f"{settings.pooling}:{settings.recency_half_life}")
        _index_users(dataset, settings, store, vectors, hashes, dim, report, progress, model,
                     depends)

    t = time.perf_counter()
    if report.changed or not info.complete:
        for collection in (ITEMS, USERS):
            if store.exists(collection):
                store.build_index(collection)
    report.timings["build_index"] = time.perf_counter() - t

    store.write_info(_store_info(ref, dim, dataset.domains, settings, info, report.changed,
                                 _popular(dataset) if users else None, profiles))
    report.timings["total"] = time.perf_counter() - t0
    return report


def upsert_items(items: Sequence[Item], settings: Settings, store: VectorStore,
                 encoder: Encoder) -> StoreInfo:
    """Embed items and insert or overwrite them, outside a full ``index`` run (the HTTP
    service's ``PUT /items``).

    Items are embedded as ``index`` embeds them (same text, same hash), so a later ``index`` of
    a catalog that holds them re-embeds nothing. A store that exists keeps its text template
    and cut length; an empty one is created with ``settings``'. User profiles are left as they
    are: a profile whose history holds a changed item is refreshed by the next ``index``.

    Args:
        items: the items; a later item replaces an earlier one with the same id.
        settings: configuration for a store that does not exist yet.
        store: an open store.
        encoder: the store's encoder.

    Returns:
        The store's build info after the write (with any new domain).

    Raises:
        EncoderMismatchError: the store was built by another encoder.
        DataError: a domain name contains '->' (as the readers refuse it in a file).

    Example:
        >>> info = upsert_items([Item("m-9", "movies", "Alien")], settings, store,
        ...                     encoder)                                  # doctest: +SKIP
    """
    _check_domain_names({item.domain for item in items}, "items")
    info = store.read_info()
    ref = encoder.ref
    if info is not None:
        info.check_encoder(ref.name, ref.fingerprint)
        settings = settings.model_copy(update={"text_template": info.text_template,
                                               "max_seq_length": info.max_seq_length,
                                               "pooling": info.pooling})
    unique = list({item.item_id: item for item in items}.values())
    if not unique:
        if info is None:
            raise ValueError("no items to create a store from")
        return info
    texts = [item_text(item, settings.text_template) for item in unique]
    vectors = encoder.encode_items(texts, [item.domain for item in unique])  # (len, dim)
    created = not store.exists(ITEMS)
    store.ensure(ITEMS, encoder.dim, ("domain",))
    store.upsert(ITEMS, [item_point_id(item.item_id) for item in unique], vectors,
                 [_item_payload(item, _text_hash(text, settings.max_seq_length))
                  for item, text in zip(unique, texts, strict=True)])
    if created:
        store.build_index(ITEMS)
    now = _store_info(ref, encoder.dim, (item.domain for item in unique), settings, info,
                      changed=True, complete=info is None or info.complete)
    store.write_info(now)
    return now


def delete_items(item_ids: Sequence[str], store: VectorStore) -> list[str]:
    """Delete items by id (the HTTP service's ``DELETE /items``).

    User profiles are left as they are; the next ``index`` of a catalog without these items
    deletes or rewrites them.

    Returns:
        The ids that were in the store (and are now deleted), in the order given.
    """
    if not item_ids or not store.exists(ITEMS):
        return []
    ids = list(dict.fromkeys(item_ids))
    present = {p.payload["item_id"] for p in store.retrieve(ITEMS, [item_point_id(i) for i in ids])}
    deleted = [i for i in ids if i in present]
    if deleted:
        store.delete(ITEMS, [item_point_id(i) for i in deleted])
        info = store.read_info()
        if info is not None:
            info.updated_at = datetime.now(timezone.utc).isoformat()
            store.write_info(info)  # also makes the delete durable (Edge flushes)
    return deleted


def _index_users(dataset: Dataset, settings: Settings, store: VectorStore,
                 vectors: dict[str, np.ndarray], hashes: dict[str, int], dim: int,
                 report: IndexReport, progress: bool, model: TrainedModel | None,
                 depends: str) -> None:
    t = time.perf_counter()
    store.ensure(USERS, dim, ("domain", "user_id"))
    stored_state = {p.id: p.payload.get("state", "")
                    for p in store.scroll(USERS, fields=["state"])}
    ids, vecs, payloads = [], [], []
    wanted: set[int] = set()
    for user, per_domain in dataset.histories.items():
        for domain, history in per_domain.items():
            pid = user_point_id(user, domain)
            wanted.add(pid)
            state = _digest(depends, *(f"{i}:{hashes[i]}" for i in history))
            if stored_state.get(pid) == state:
                continue
            matrix = np.stack([vectors[i] for i in history])  # (len(history), dim)
            ids.append(pid)
            vecs.append(profile_vector(matrix, domain, settings.pooling,
                                       settings.recency_half_life, model))
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
