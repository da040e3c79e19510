"""xdretrieve: cross-domain retrieval for cold-start recommendation.

Items of two domains are embedded by one shared text encoder and stored in Qdrant; a user known
only in one domain is answered by nearest-neighbour search among the other domain's items.

Example:
    >>> from xdretrieve import Dataset, Retriever, Settings, index_dataset     # doctest: +SKIP
    >>> settings = Settings(store="shop.xdr")
    >>> index_dataset(Dataset.from_dir("data/shop"), settings, progress=True)
    >>> Retriever(settings).recommend_history(["book-1", "book-7"], domain="movies", limit=10)

Names are imported lazily so that ``import xdretrieve`` stays light (no torch, no Qdrant).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Dataset": "xdretrieve.data",
    "Item": "xdretrieve.data",
    "Interaction": "xdretrieve.data",
    "RejectLog": "xdretrieve.data",
    "Settings": "xdretrieve.config",
    "Encoder": "xdretrieve.encoder",
    "index_dataset": "xdretrieve.indexer",
    "finetune": "xdretrieve.train.finetune",
    "IndexReport": "xdretrieve.indexer",
    "Retriever": "xdretrieve.retriever",
    "Hit": "xdretrieve.retriever",
    "open_store": "xdretrieve.store",
    "XDRetrieveError": "xdretrieve.errors",
    "DataError": "xdretrieve.errors",
    "NotFoundError": "xdretrieve.errors",
    "EncoderMismatchError": "xdretrieve.errors",
    "StoreError": "xdretrieve.errors",
    "ConfigError": "xdretrieve.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from xdretrieve.config import Settings
    from xdretrieve.data import Dataset, Interaction, Item, RejectLog
    from xdretrieve.encoder import Encoder
    from xdretrieve.errors import (
        ConfigError,
        DataError,
        EncoderMismatchError,
        NotFoundError,
        StoreError,
        XDRetrieveError,
    )
    from xdretrieve.indexer import IndexReport, index_dataset
    from xdretrieve.retriever import Hit, Retriever
    from xdretrieve.store import open_store
    from xdretrieve.train.finetune import finetune


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xdretrieve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
