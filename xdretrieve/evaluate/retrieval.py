"""The retriever-backed methods: ``zeroshot`` and ``xdretrieve``.

Both index the catalog (item text is not user data) into a Qdrant store and answer each test
query through :meth:`Retriever.recommend_history`, the same call ``xdretrieve query --history``
makes. ``zeroshot`` is the packaged pretrained encoder with mean pooling; ``xdretrieve`` is
whatever the given settings configure (encoder or trained model, pooling).

The store is kept under ``work_dir/stores/`` and named by the encoder's fingerprint: indexing is
idempotent, so a rerun only checks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xdretrieve.evaluate.methods import Method, RetrieverMethod

RETRIEVER_METHODS = ("zeroshot", "xdretrieve")

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

    def build(view: TrainView):
        from xdretrieve.data import Dataset
        from xdretrieve.indexer import index_dataset
        from xdretrieve.retriever import Retriever

        if "retriever" not in state:
            index_dataset(Dataset(dict(view.items), []), settings, users=False, progress=True)
            state["retriever"] = Retriever(settings)
        retriever = state["retriever"]
        return lambda history, domain, limit: [
            h.item_id for h in retriever.recommend_history(history, domain, limit)]

    def close() -> None:
        if "retriever" in state:
            state.pop("retriever").close()

    return RetrieverMethod(name, build=build, close=close, config={
        "model": ref.name, "fingerprint": ref.fingerprint, "pooling": settings.pooling,
        "recency_half_life": settings.recency_half_life,
        "text_template": settings.text_template, "store": str(store_dir)})


def register_retriever_methods(settings: Settings, work_dir: Path) -> None:
    """Register ``zeroshot`` and ``xdretrieve`` for this run's settings."""
    from xdretrieve.config import DEFAULT_MODEL
    from xdretrieve.evaluate.registry import register_method

    zeroshot = settings.model_copy(update={"model": DEFAULT_MODEL, "pooling": "mean"})
    register_method("zeroshot", lambda seed=0: retriever_method("zeroshot", zeroshot, work_dir),
                    replace=True)
    register_method("xdretrieve",
                    lambda seed=0: retriever_method("xdretrieve", settings, work_dir),
                    replace=True)
