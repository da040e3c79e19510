"""The retriever-backed methods: ``zeroshot`` and ``xdretrieve``.

Both index the catalog (item text is not user data) into a Qdrant store and answer each test
query through :meth:`Retriever.recommend_history`, the same call ``xdretrieve query --history``
makes. ``zeroshot`` is the pretrained encoder that the evaluated pipeline starts from (the
trained model's base; the packaged one by default), with mean pooling: the pipeline without
fine-tuning. ``xdretrieve`` is whatever the given settings configure (encoder or trained model,
pooling).

The store is kept under ``work_dir/stores/`` and named by the encoder's fingerprint: indexing is
idempotent, so a rerun only checks it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xdretrieve.evaluate.methods import Method, RetrieverMethod

log = logging.getLogger(__name__)

RETRIEVER_METHODS = ("zeroshot", "xdretrieve")
SERVED = 200  # ranks answered by the retriever itself (its candidates); the tail: same score, exact


class _FullRanking:
    """``recommend(history, domain, limit)`` for the protocol's full ranking.

    The first :data:`SERVED` items are what ``Retriever.recommend_history`` returns (the served
    path: query vector, filtered HNSW search, model re-scoring). The protocol also ranks every
    other target item, which no service would be asked for: those follow by the same score,
    computed exactly over the stored vectors (a user's first relevant item beyond rank 200
    still counts in mrr)."""

    def __init__(self, retriever, target: str, index: Mapping[str, int] | None = None):
        from xdretrieve.store import ITEMS

        self.retriever = retriever
        points = [p for p in retriever.store.scroll(ITEMS, with_vectors=True,
                                                    fields=["item_id", "domain"])
                  if p.payload["domain"] == target]
        self.ids = np.array([p.payload["item_id"] for p in points], dtype=object)
        self.matrix = np.stack([p.vector for p in points])  # (n_target, dim)
        # what every query's tail reads, computed once: the ids' positions, and the model's
        # bias of each (its score is scale * cosine + that bias)
        self._position = {iid: k for k, iid in enumerate(self.ids)}
        model = retriever.model
        self._bias = None if model is None else model.rescore(
            self.ids, np.zeros(len(self.ids), dtype=np.float32))
        # ``index`` (the evaluation's item id -> column): each stored item's column, so that
        # rank_rows() answers in columns without mapping 20,000 ids a query back through a dict
        self._column = None
        if index is not None and len(index) == len(self.ids) and all(
                i in index for i in self.ids):
            self._column = np.array([index[i] for i in self.ids], dtype=np.int64)

    def _rest(self, query, served_at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store positions of every item but the served ones (``served_at``) and the query's
        own, best first by the model's score (scale x cosine + bias; ties in store order), and
        of the query's own items that were not served."""
        scores = self.matrix @ query.vector
        if self._bias is not None:
            scores = self.retriever.model.scale * scores + self._bias  # = model.rescore
        own = np.zeros(len(self.ids), dtype=bool)
        own[[self._position[i] for i in query.exclude if i in self._position]] = True
        left_out = own.copy()
        left_out[served_at] = True
        own[served_at] = False
        order = np.argsort(-scores, kind="stable")
        return order[~left_out[order]], np.flatnonzero(own)

    def _served(self, history, domain, limit: int):
        """The history's query and what the retriever serves for it (as recommend_history
        does; the query built once, for the tail too)."""
        query = self.retriever.history_query(history, domain)
        return query, [h.item_id for h in self.retriever.search(query, domain, limit)]

    def __call__(self, history, domain, limit):
        query, served = self._served(history, domain, min(limit, SERVED))
        if limit <= SERVED:
            return served
        rest, _ = self._rest(query, np.array([self._position[i] for i in served
                                              if i in self._position], dtype=np.int64))
        return served + self.ids[rest[:limit - len(served)]].tolist()

    def rank_rows(self, history, domain, n: int) -> np.ndarray | None:
        """The full ranking as columns of the evaluation's index: what :meth:`__call__`
        answers for ``limit`` n, completed as :class:`RetrieverMethod` completes it (the
        query's own items, left out, at the end in column order). None where that needs the
        general path: no index given (or one of other items than the store's), or a catalog
        the served part alone covers."""
        if self._column is None or n <= SERVED:
            return None
        query, served = self._served(history, domain, SERVED)
        served_at = np.array(list(dict.fromkeys(self._position[i] for i in served)),
                             dtype=np.int64)
        rest, own = self._rest(query, served_at)
        return np.concatenate([self._column[served_at], self._column[rest],
                               np.sort(self._column[own])])


if TYPE_CHECKING:
    from xdretrieve.config import Settings
    from xdretrieve.evaluate.protocol import TrainView


def retriever_method(name: str, settings: Settings, work_dir: Path) -> Method:
    """A method that indexes the train view's catalog with ``settings`` and ranks by the
    retriever (asked for every target item, so the ranking is full)."""
    from xdretrieve.encoder import resolve_model

    ref = resolve_model(settings.model)
    store_dir = Path(work_dir) / "stores" / f"{name}-{ref.fingerprint}"
    settings = settings.model_copy(update={"store": store_dir, "url": None})
    state: dict = {}

    def check(view: TrainView) -> None:
        if ref.trained is not None:
            _check_trained_on(ref.trained, view.users)

    def build(view: TrainView):
        from xdretrieve.data import Dataset
        from xdretrieve.indexer import index_dataset
        from xdretrieve.retriever import Retriever

        if "retriever" not in state:
            check(view)
            index_dataset(Dataset(dict(view.items), []), settings, users=False)
            state["retriever"] = Retriever(settings)
        return _FullRanking(state["retriever"], view.target, view.item_index(view.target))

    def close() -> None:
        if "retriever" in state:
            state.pop("retriever").close()

    return RetrieverMethod(name, build=build, close=close, check=check, config={
        "model": ref.name, "fingerprint": ref.fingerprint, "pooling": settings.pooling,
        "rerank": settings.rerank, "candidates": settings.candidates,
        "recency_half_life": settings.recency_half_life,
        "text_template": settings.text_template, "store": str(store_dir)})


def _check_trained_on(model_dir: Path, train_users: Sequence[str]) -> None:
    """Refuse a model that learned from other users than this evaluation's train users: its
    training may have seen the test users' target items (a model saved before models recorded
    their split is let through with a warning)."""
    from xdretrieve.errors import XDRetrieveError
    from xdretrieve.evaluate.protocol import users_digest
    from xdretrieve.model import read_manifest

    split = read_manifest(model_dir).get("split")
    if split is None:
        log.warning("model %s does not record its train users: cannot check that it never saw "
                    "this evaluation's test users", model_dir)
    elif split["train_digest"] != users_digest(train_users):
        raise XDRetrieveError(
            f"model '{model_dir}' was trained on other users ({split['train']:,} train users, "
            f"split from {split['source']}) than this evaluation's {len(train_users):,} train "
            f"users: it may have seen the test users' target items; train it on this data "
            f"(`xdretrieve finetune --data ...`) and its split")


def register_retriever_methods(settings: Settings, work_dir: Path,
                               variants: dict[str, Settings] | None = None) -> None:
    """Register ``zeroshot`` and ``xdretrieve`` for this run's settings, and each of
    ``variants`` (name -> settings, e.g. an ablation's model) under its name."""
    from xdretrieve.evaluate.registry import register_method
    from xdretrieve.model import pretrained_base

    zeroshot = settings.model_copy(update={"model": pretrained_base(settings.model),
                                           "pooling": "mean"})
    register_method("zeroshot", lambda seed=0: retriever_method("zeroshot", zeroshot, work_dir),
                    replace=True)
    register_method("xdretrieve",
                    lambda seed=0: retriever_method("xdretrieve", settings, work_dir),
                    replace=True)
    for name, variant in (variants or {}).items():
        register_method(name, lambda seed=0, n=name, v=variant: retriever_method(n, v, work_dir),
                        replace=True)
