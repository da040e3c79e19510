"""The query path: a user, a history or a text -> nearest target-domain items.

This is what ``xdretrieve query``, ``xdretrieve evaluate`` (method ``xdretrieve``), the HTTP
service and the plugins all call.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from xdretrieve.blas import one_blas_thread
from xdretrieve.config import Settings
from xdretrieve.data.records import INDEX_FIELDS
from xdretrieve.errors import EncoderMismatchError, NotFoundError, StoreError
from xdretrieve.rerank import candidate_union, overlap_text, row_features, tower_head
from xdretrieve.store import (
    ITEMS,
    USERS,
    StoredPoint,
    StoreInfo,
    VectorStore,
    item_point_id,
    open_store,
)
from xdretrieve.store import user_point_id as profile_id
from xdretrieve.users import PROFILE_VECTORS, TOWER_PROFILES, pool

log = logging.getLogger(__name__)

RESCORE_WIDTH = 2  # with a trained model: nearest neighbours fetched per re-ranked candidate
MAX_BIAS_SCAN = 2_000  # items by bias scored beyond the search, at most (their vectors are held)


@dataclass(slots=True)  # not frozen: that costs ~0.8 us per hit, 0.16 ms for 200 candidates
class Hit:
    """One recommended item, best first."""

    item_id: str
    domain: str
    title: str
    score: float
    payload: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # what the re-ranker saw of this item (its row of rerank.FEATURES), when one ordered the
    # answer; kept as is and explained on demand (``why``), so answering costs nothing more
    features: np.ndarray | None = field(default=None, compare=False, repr=False)
    reranker: Any = field(default=None, compare=False, repr=False)

    @property
    def fields(self) -> dict[str, Any]:
        """The item as the catalog gives it: ``item_id``, ``domain``, ``title``, ``text`` and
        its other fields (``payload`` less what the indexer keeps for itself)."""
        return {k: v for k, v in self.payload.items() if k not in INDEX_FIELDS}

    @property
    def why(self) -> dict[str, dict[str, float]] | None:
        """Why the re-ranker put the item here: its features by name (``features``; see
        :mod:`xdretrieve.rerank`) and each one's part of the score (``contributions``: weight x
        standardised value); None where no re-ranker ordered the answer."""
        if self.features is None or self.reranker is None:
            return None
        return self.reranker.explain(self.features)


def _hit(payload: Mapping[str, Any], score: float, features: np.ndarray | None = None,
         reranker: Any = None) -> Hit:
    return Hit(payload["item_id"], payload["domain"], payload.get("title", ""), score, payload,
               features, reranker)


def _text(points: Iterable[StoredPoint]) -> str:
    """Items' titles and texts in one string (the re-ranker's text of a history)."""
    return " ".join(overlap_text(p.payload.get("title", ""), p.payload.get("text", ""))
                    for p in points)


@dataclass(frozen=True, slots=True)
class Query:
    """A resolved query: the vector to search with and the items to leave out."""

    vector: np.ndarray  # (dim,) unit
    exclude: tuple[str, ...] = ()  # item ids
    source: str = ""  # what the vector came from, for people
    history: tuple[str, ...] = ()  # item ids the vector was made from (re-ranker features);
    # with a trained model, its window of the user's history
    history_text: str = ""  # their titles and texts (re-ranker features)
    popular: bool = False  # no history at all: answered with the domain's most popular items
    # a text query to a trained model: its vector is item-like, so the answer is the items
    # nearest by cosine (the model's score, scale x cosine + bias, ranks items for a user
    # tower's query: for a text it put popular items first, the text's own item nowhere)
    nearest: bool = False


class BiasHead(NamedTuple):
    """A domain's ``MAX_BIAS_SCAN`` items of highest model bias, highest first: their point ids,
    biases and unit vectors (held so that the items a search did not reach are scored in
    memory), and each point id's place among them."""

    pids: np.ndarray
    bias: np.ndarray
    vectors: np.ndarray
    place: dict[int, int]

    def cosines(self, rows: np.ndarray | slice, vector: np.ndarray) -> np.ndarray:
        """Cosines of the held items at ``rows`` with the query ``vector``."""
        return self.vectors[rows] @ (vector / np.linalg.norm(vector))


class Retriever:
    """Answers cold-start queries from a store built by ``index``.

    Args:
        settings: where the store is and which encoder to use for text queries.
        store: an open store to use instead of the one ``settings`` names.

    Raises:
        StoreError: there is no xdretrieve store there.
        EncoderMismatchError: ``settings.model`` was given and is not the store's encoder.

    Example:
        >>> r = Retriever(Settings(store="shop.xdr"))                       # doctest: +SKIP
        >>> r.recommend_user("u42", domain="movies", limit=10)[0].title
        'Alien'
    """

    def __init__(self, settings: Settings | None = None, *, store: VectorStore | None = None):
        self.settings = settings or Settings()
        self._own_store = store is None
        self.store = store or open_store(self.settings)
        info = self.store.read_info()
        where = self.settings.url or self.settings.store
        if info is None or not self.store.exists(ITEMS):
            raise StoreError(f"no xdretrieve store at {where}: run `xdretrieve index` first")
        info.check_complete(where)
        self.info: StoreInfo = info
        given = None
        if "model" in self.settings.model_fields_set:
            from xdretrieve.encoder import resolve_model

            given = resolve_model(self.settings.model)
            info.check_encoder(given.name, given.fingerprint)
        self._encoder: Any = None
        self._bias_heads: dict[str, BiasHead] = {}  # by domain (a trained model's)
        # what the first queries build (the bias heads, the text encoder) is built once when
        # threads share a retriever (a framework's thread pool; the HTTP service warms first)
        self._building = threading.Lock()
        # a store built with a trained model: its user tower and item bias answer queries
        self.model: Any = None
        if info.extra.get("trained"):
            self.model = self._load_trained(given.trained if given is not None else None)
        # the stored profiles hold the user tower's queries (computed by `index`)
        self._tower_profiles = (self.model is not None
                                and info.extra.get(PROFILE_VECTORS) == TOWER_PROFILES)

    def __repr__(self) -> str:
        # what a framework that prints its components (LangChain) shows: where and what model
        model = self.model.path if self.model is not None else self.info.encoder
        return (f"Retriever({self.settings.url or str(self.settings.store)!r}, "
                f"domains={list(self.info.domains)}, model={str(model)!r})")

    def _load_trained(self, given: Path | None) -> Any:
        """The trained model that built the store: the directory given with ``--model`` (already
        checked; the model may have moved since), else the one the store recorded, which must
        still be there and still be that model (not retrained in place: its tower would then
        answer over another model's item vectors)."""
        from xdretrieve.encoder import trained_fingerprint
        from xdretrieve.model import MANIFEST, TrainedModel, is_model_dir

        path = given if given is not None else Path(self.info.extra["trained"])
        if not is_model_dir(path):
            raise StoreError(
                f"this store was built with the trained model '{path}', which is not there any "
                f"more (no {MANIFEST}): pass --model with that model's directory where it is "
                f"now (fingerprint {self.info.fingerprint}), or re-index with another model "
                f"(`xdretrieve index --data DIR --model MODEL_DIR --recreate`)")
        model = TrainedModel.load(path)
        if given is None:
            found = trained_fingerprint(path, model.manifest["base_fingerprint"])
            if found != self.info.fingerprint:
                raise EncoderMismatchError(
                    f"the trained model at '{path}' is not the one that built this store "
                    f"(fingerprint {found}, the store's {self.info.fingerprint}): it was changed "
                    f"or retrained since; re-index with it (`xdretrieve index --data DIR --model "
                    f"{path} --recreate`), or pass --model with the directory of the model that "
                    f"built the store")
        return model

    # -- building queries ----------------------------------------------------------------------
    def check_domain(self, domain: str) -> None:
        """Refuse a domain the store does not hold, naming those it does."""
        if domain not in self.info.domains:
            raise NotFoundError(
                f"unknown domain '{domain}'; this store has: {', '.join(self.info.domains)}")

    def user_query(self, user_id: str, domain: str) -> Query:
        """The query of a stored user for ``domain``: the user's profiles in the other domains
        (weighted by history length); a user with history only in ``domain`` gets that one.
        Items the user already has in ``domain`` are excluded. In a store built with a
        two-domain trained model a profile holds the user tower's query for the other domain:
        then the query is that vector (the tower runs here only for other cases)."""
        self.check_domain(domain)
        ids = [profile_id(user_id, d) for d in self.info.domains]
        profiles = self.store.retrieve(
            USERS, ids, with_vectors=self.model is None or self._tower_profiles) if (
            self.store.exists(USERS)) else []
        if not profiles:
            raise NotFoundError(f"unknown user '{user_id}'")
        source = [p for p in profiles if p.payload["domain"] != domain] or profiles
        have = next((p.payload["history"] for p in profiles if p.payload["domain"] == domain), [])
        names = "+".join(p.payload["domain"] for p in source)
        source_text = f"user {user_id} ({names} history)"
        if self.model is not None:  # the model's window of the history, as for a given one
            history = tuple(self.model.window([i for p in source for i in p.payload["history"]]))
            if (self._tower_profiles and len(source) == 1
                    and self.model.profile_target(source[0].payload["domain"]) == domain):
                # the tower's query for this history, computed by `index`: a lookup (the
                # history's text is read only if the re-ranker needs it)
                return Query(source[0].vector, tuple(have), source_text, history)
            vectors, text = self._items(history)  # the user tower reads the history itself
            with one_blas_thread():
                vector = self.model.user_vector(vectors, domain)
            return Query(vector, tuple(have), source_text, history, text)
        weights = np.array([len(p.payload["history"]) for p in source], dtype=np.float32)
        vector = weights @ np.stack([p.vector for p in source])
        vector /= np.linalg.norm(vector) or 1.0
        return Query(vector, tuple(have), source_text)

    def _points(self, item_ids: Sequence[str], with_vectors: bool) -> dict[str, StoredPoint]:
        """The stored items by id; unknown ids are an error."""
        points = self.store.retrieve(ITEMS, [self._point_of(i) for i in item_ids],
                                     with_vectors=with_vectors) if item_ids else []
        by_id = {p.payload["item_id"]: p for p in points}
        missing = [i for i in item_ids if i not in by_id]
        if missing:
            raise NotFoundError(f"unknown item(s): {', '.join(missing[:10])}")
        return by_id

    def _items(self, item_ids: Sequence[str]) -> tuple[np.ndarray, str]:
        """(len(item_ids), dim) stored vectors in order, and the items' text; unknown ids are
        an error."""
        by_id = self._points(item_ids, with_vectors=True)
        return np.stack([by_id[i].vector for i in item_ids]), _text(by_id.values())

    def _history_text(self, item_ids: Sequence[str]) -> str:
        """The titles and texts of the stored items among ``item_ids``."""
        return _text(self.store.retrieve(ITEMS, [self._point_of(i) for i in item_ids]))

    def _point_of(self, item_id: str) -> int:
        """An item's point id (a trained model caches those of its items)."""
        return self.model.point_of_item(item_id) if self.model is not None else (
            item_point_id(item_id))

    def history_query(self, item_ids: Sequence[str], domain: str | None = None) -> Query:
        """The query of a user the store has never seen, for target ``domain``: their items'
        vectors, oldest first, pooled (or read by the trained user tower). The items themselves
        are excluded from the answer."""
        if isinstance(item_ids, str):  # it would be read as its characters
            raise TypeError(f"item_ids is a sequence of item ids, e.g. [{item_ids!r}], not one "
                            f"string")
        if not item_ids:
            return Query(np.zeros(0, dtype=np.float32), (), "no history: the most popular items",
                         popular=True)
        tower = self.model is not None and domain is not None
        if tower:
            self.check_domain(domain)
        # a trained model reads its window of the history (tower and re-ranker); older items
        # are only checked and left out of the answer
        read = tuple(self.model.window(item_ids) if tower else item_ids)
        self._points(item_ids[:len(item_ids) - len(read)], with_vectors=False)
        matrix, text = self._items(read)  # (len(read), dim)
        if tower:
            with one_blas_thread():
                vector = self.model.user_vector(matrix, domain)
        else:
            vector = pool(matrix, self.settings.pooling, self.settings.recency_half_life)
        return Query(vector, tuple(item_ids), f"history of {len(item_ids)} item(s)", read, text)

    def text_query(self, text: str, domain: str | None = None) -> Query:
        """A free-text query embedded by the store's encoder (with a trained model, mapped by
        the item adapter of ``domain``, as an item of that domain would be, and answered by the
        items nearest to it)."""
        if not text.strip():
            raise NotFoundError("the text is empty")
        if self._encoder is None:
            from xdretrieve.encoder import Encoder, resolve_model

            with self._building:
                if self._encoder is None:
                    ref = resolve_model(self.settings.model
                                        if "model" in self.settings.model_fields_set
                                        else self.info.encoder)
                    self.info.check_encoder(ref.name, ref.fingerprint)
                    self._encoder = Encoder.from_settings(self.settings, ref)
        if self.model is not None:
            if domain is None:
                raise NotFoundError("a text query to a trained model needs its target domain")
            self.check_domain(domain)
            return Query(self._encoder.encode_items([text], [domain], cache=False)[0], (), "text",
                         nearest=True)
        return Query(self._encoder.encode([text], cache=False)[0], (), "text")

    # -- answering ---------------------------------------------------------------------------------
    def search(self, query: Query, domain: str, limit: int = 10,
               candidates: int | None = None) -> list[Hit]:
        """Nearest items of ``domain`` to the query vector, best first.

        ``candidates``: how many items the answer is chosen from (default: the settings'
        ``candidates`` with a trained model, whose re-ranker orders them; ``limit`` without
        one, where the nearest are the answer)."""
        self.check_domain(domain)
        for name, value in (("limit", limit), ("candidates", candidates)):
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, np.integer))):  # 3.5 failed deep inside, as a slice index
                raise TypeError(f"{name} must be a whole number, not {value!r}")
        if limit < 1 or (candidates is not None and candidates < 1):
            raise ValueError("limit and candidates must be at least 1")
        exclude = [self._point_of(i) for i in query.exclude]
        if query.popular:
            return self.popular(domain, limit, exclude=query.exclude)
        if self.model is None or query.nearest:
            return self._nearest_hits(query.vector, domain, limit, max(limit, candidates or 0),
                                      exclude)
        width = max(limit, candidates or self.settings.candidates)
        with one_blas_thread():
            return self._model_search(query, domain, limit, width, exclude)

    def _model_search(self, query: Query, domain: str, limit: int, width: int,
                      exclude: list[int]) -> list[Hit]:
        """:meth:`search` with a trained model."""
        rerank = (self.model.reranker is not None and self.model.reranker.serves(domain)
                  and bool(query.history) and self.settings.rerank)
        # Both answers start from the model's exact best: its top `limit`, or the re-ranker's
        # tower candidates. The re-ranker is fitted on the exact best (training scores every
        # target item), and served anything else it ranks popular items it never saw missing:
        # with the cosine neighbours' best instead, on a pair where popularity carries most of
        # the signal (benchmarks/derive_pair.py, paint->sewing) it fell below popularity.
        wanted = tower_head(width) if rerank else limit
        pids, cosines, scores = self._model_top(query.vector, domain, wanted, width, exclude)
        order = _best(scores, width)  # no candidate lies beyond
        if rerank:
            return self._rerank(query, domain, limit, width, [pids[k] for k in order],
                                cosines[order], scores[order], set(exclude))
        return self._hits([pids[k] for k in order[:limit]], scores[order[:limit]].tolist())

    def _hits(self, pids: Sequence[int], scores: Sequence[float],
              features: np.ndarray | None = None, reranker: Any = None) -> list[Hit]:
        """Hits of points given by id, in order, with their payloads read from the store; a
        point deleted since it was found is left out. ``features``: the re-ranker's rows of
        them, in the same order."""
        payloads = {p.id: p.payload for p in self.store.retrieve(ITEMS, pids)}
        rows = [None] * len(pids) if features is None else features
        return [_hit(payloads[p], float(s), x, reranker)
                for p, s, x in zip(pids, scores, rows, strict=True) if p in payloads]

    def _nearest_hits(self, vector: np.ndarray, domain: str, limit: int, width: int,
                      exclude: Sequence[int]) -> list[Hit]:
        """The ``limit`` nearest of ``width`` nearest neighbours (no model); payloads are read
        for the answer only (200 payloads cost 1.2 ms of a 2.5 ms search at 38k items)."""
        if width == limit:
            hits = self.store.search(ITEMS, vector, limit, domain=domain, exclude=exclude)
            return [_hit(h.payload, h.score) for h in hits]
        pids, cosines = self.store.nearest(ITEMS, vector, width, domain=domain, exclude=exclude)
        return self._hits(pids[:limit], cosines[:limit].tolist())

    def _model_top(self, vector: np.ndarray, domain: str, wanted: int, width: int,
                   exclude: Sequence[int]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Items of ``domain`` with (at least) the ``wanted`` best model scores
        (scale * cosine + item bias), with their cosines and scores, in no order: the
        ``RESCORE_WIDTH x width`` nearest neighbours by cosine and the items beyond them that
        could be among the best.

        The engine finds nearest neighbours by cosine; the bias can lift an item from far
        outside them (measured on amazon-arts-office: 7 of the exact top 10 were not among the
        400 nearest). An item the search did not return has a cosine of at most the lowest
        returned, so it can only beat the ``wanted``-th score found if its bias is above that
        score minus scale * that cosine: those items, the first of the domain's items by bias
        (up to ``MAX_BIAS_SCAN``, whose vectors are held), are scored exactly in memory and
        added. The wide search reads no payloads."""
        model = self.model
        fetch = max(wanted, RESCORE_WIDTH * width)
        pids, cosines = self.store.nearest(ITEMS, vector, fetch, domain=domain, exclude=exclude)
        scores = model.rescore_points(pids, cosines)
        if len(pids) < fetch:  # fewer: every item of the domain was returned
            return pids, cosines, scores
        bar = np.partition(scores, len(scores) - wanted)[len(scores) - wanted]
        head = self._bias_head(domain)
        reach = int(np.searchsorted(-head.bias, -(bar - model.scale * float(cosines.min()))))
        more = np.ones(reach, dtype=bool)  # not found already, not excluded
        for p in (*pids, *exclude):
            k = head.place.get(p, reach)
            if k < reach:
                more[k] = False
        extra_cos = head.cosines(slice(0, reach), vector)[more]
        return (pids + head.pids[:reach][more].tolist(), np.concatenate([cosines, extra_cos]),
                np.concatenate([scores, model.scale * extra_cos + head.bias[:reach][more]]))

    def _score_points(self, vector: np.ndarray, pids: Sequence[int],
                      domain: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Points of ``domain`` beyond the search: (the ids still in the store, their cosines,
        their model scores). Those among the domain's items by bias are scored in memory
        (their vectors are held), the others by the engine where they lie."""
        if not pids:  # every candidate was found by the search: nothing to read
            return [], np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
        head = self._bias_head(domain)
        rows = [head.place.get(p, -1) for p in pids]
        held = [p for p, k in zip(pids, rows, strict=True) if k >= 0]
        found = self.store.similarity(
            ITEMS, vector, [p for p, k in zip(pids, rows, strict=True) if k < 0], domain)
        ids = held + list(found)
        cosines = np.concatenate([head.cosines([k for k in rows if k >= 0], vector),
                                  np.fromiter(found.values(), np.float32, len(found))])
        return ids, cosines, self.model.rescore_points(ids, cosines)

    def _bias_head(self, domain: str) -> BiasHead:
        """``domain``'s items of highest model bias (what the store held when first asked: an
        item added later has no learned bias, 0, and is found by its cosine)."""
        heads = self._bias_heads  # one read: refresh() swaps in a new dict, never mutates
        if not heads:
            with self._building:  # threads asking first wait for one build
                heads = self._bias_heads or self._read_bias_heads()
        found = heads.get(domain)
        if found is None:
            found = BiasHead(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32),
                             np.zeros((0, self.info.dim), dtype=np.float32), {})
        return found

    def _read_bias_heads(self) -> dict[str, BiasHead]:
        """Every domain's items of highest bias, with their vectors (scoring them in memory
        costs microseconds; asking the engine for the ~900 of a re-ranked query on
        amazon-arts-office cost ~3 ms), also the co-occurring candidates among them
        (:meth:`_score_points`). Ids and vectors only: no payload is read (in a new process,
        a `query`, that was 0.35 s of its 1 s). Published whole, once built."""
        heads: dict[str, BiasHead] = {}
        for d, ids in self.store.ids_by_domain(ITEMS).items():
            pids = np.array(ids, dtype=np.int64)
            bias = self.model.rescore_points(pids, np.zeros(len(pids), dtype=np.float32))
            order = np.argsort(-bias, kind="stable")[:MAX_BIAS_SCAN]
            found = {p.id: p.vector for p in self.store.retrieve(
                ITEMS, pids[order].tolist(), with_vectors=True, with_payload=False)}
            order = np.array([k for k in order if pids[k] in found], dtype=np.int64)
            vectors = np.array([found[p] for p in pids[order].tolist()],
                               dtype=np.float32).reshape(len(order), self.info.dim)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
            head = pids[order]
            heads[d] = BiasHead(head, bias[order], vectors, dict(
                zip(head.tolist(), range(len(order)), strict=True)))
        self._bias_heads = heads
        return heads

    def refresh(self, info: StoreInfo | None = None) -> None:
        """After items were written or deleted through another path (the HTTP service): take
        the store's new ``info`` and forget what was read from the items (rebuilt on use)."""
        if info is not None:
            self.info = info
        self._bias_heads = {}

    def warm(self) -> None:
        """Build now what the first queries would build (a trained model's point-id index,
        each domain's items by bias, the re-ranker's token ids), so that no request waits."""
        if self.model is not None:
            self.model.index_points()
            with self._building:
                self._read_bias_heads()
            if self.model.reranker is not None:
                self.model.reranker.stats.index_tokens()

    def _rerank(self, query: Query, domain: str, limit: int, n: int, pids: list[int],
                cosines: np.ndarray, scores: np.ndarray, exclude: set[int]) -> list[Hit]:
        """Re-rank ``n`` candidates: the union of the tower's best (``pids``, by model score,
        with their cosines and scores) and the items that co-occur most with the history in
        train users.

        The re-ranker's statistics know the items the model was trained with (id, text,
        popularity), so only the co-occurring items beyond the search and the items by bias
        (scored by the engine) and the answer (for its payloads) are read from the store."""
        model, reranker = self.model, self.model.reranker
        # query.history is the model's window of the history, as the re-ranker was fitted on it
        # (counted over a long history, co-occurrence would be far outside what it learned)
        together = reranker.stats.history_cooccurrence(query.history)
        text = query.history_text  # needed for history items the statistics do not know
        if not text and not reranker.stats.knows_texts(together):
            text = self._history_text(query.history)
        co_rows = reranker.stats.cooccurring_rows(query.history, domain, n, together)
        co = [p for p in model.row_points(co_rows).tolist() if p not in exclude]
        cos = dict(zip(pids, cosines.tolist(), strict=True))  # the tower's, then those beyond
        score = dict(zip(pids, scores.tolist(), strict=True))
        while True:  # the co-occurring items beyond the search, read from the store
            chosen = candidate_union(pids, co, n)
            beyond = [p for p in chosen if p not in cos]
            extra, extra_cos, extra_scores = self._score_points(query.vector, beyond, domain)
            cos.update(zip(extra, extra_cos.tolist(), strict=True))
            score.update(zip(extra, extra_scores.tolist(), strict=True))
            if len(extra) == len(beyond):
                break
            # deleted since training: the union again without them, so that the next
            # co-occurring item (or the tower's) takes their place and n are re-ranked
            gone = set(beyond) - set(extra)
            co = [p for p in co if p not in gone]
        # an item added after training is unknown to the statistics (row -1): no popularity,
        # co-occurrence or text for it
        x = row_features(reranker.stats, model.stats_rows(chosen), query.history, text, None,
                         np.fromiter((cos[p] for p in chosen), np.float32, len(chosen)),
                         np.fromiter((score[p] for p in chosen), np.float32, len(chosen)),
                         together)
        reranked = reranker.score(x)
        order = np.argsort(-reranked, kind="stable")
        out: list[Hit] = []
        while len(order) and len(out) < limit:  # read the answer's payloads (a point may be gone)
            batch, order = order[:limit - len(out)], order[limit - len(out):]
            out += self._hits([chosen[k] for k in batch], reranked[batch].tolist(), x[batch],
                              reranker)
        return out

    def popular(self, domain: str, limit: int = 10, exclude: Sequence[str] = ()) -> list[Hit]:
        """The most popular items of ``domain`` (by how many indexed users have them, or by
        train users' interactions for a trained model): the answer for a user with no history.
        The score is the reciprocal of the answer's rank (1.0 for the most popular, then 0.5,
        0.33, ...): popularity has no similarity to give, and an item's score must not change
        with how many items were asked for."""
        self.check_domain(domain)
        ranked: Sequence[str] = ()
        if self.model is not None and self.model.reranker is not None:
            ranked = self.model.reranker.stats.popular(domain)
        if not ranked:
            ranked = self.info.extra.get("popular", {}).get(domain, [])
        if not ranked:
            raise NotFoundError(f"no popularity for domain '{domain}': the store was indexed "
                                f"without interactions, so a query needs a history or a text")
        skip = set(exclude)
        rest = (i for i in ranked if i not in skip)
        found: list[dict[str, Any]] = []
        while len(found) < limit:
            part = list(itertools.islice(rest, limit - len(found)))
            if not part:
                break
            payloads = {p.payload["item_id"]: p.payload
                        for p in self.store.retrieve(ITEMS, [item_point_id(i) for i in part])}
            # an item deleted since indexing is left out, and the next most popular read instead
            found += [payloads[i] for i in part if i in payloads]
        return [_hit(payload, 1.0 / r) for r, payload in enumerate(found, start=1)]

    def recommend_user(self, user_id: str, domain: str, limit: int = 10) -> list[Hit]:
        """Items of ``domain`` for a stored user."""
        return self.search(self.user_query(user_id, domain), domain, limit)

    def recommend_history(self, item_ids: Sequence[str], domain: str, limit: int = 10) -> list[Hit]:
        """Items of ``domain`` for a cold-start user given by their history (item ids)."""
        return self.search(self.history_query(item_ids, domain), domain, limit)

    def search_text(self, text: str, domain: str, limit: int = 10) -> list[Hit]:
        """Items of ``domain`` for a free-text query."""
        return self.search(self.text_query(text, domain), domain, limit)

    def close(self) -> None:
        if self._own_store:
            self.store.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _best(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` highest scores, best first (ties by index)."""
    if len(scores) > n:
        # every score tied with the n-th: argpartition would keep an arbitrary few of them
        top = np.flatnonzero(scores >= np.partition(scores, len(scores) - n)[len(scores) - n])
        return top[np.lexsort((top, -scores[top]))][:n]
    return np.argsort(-scores, kind="stable")
