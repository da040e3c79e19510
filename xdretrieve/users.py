"""How a history becomes a user vector: pooling of the item vectors.

``mean`` weighs every item alike; ``recency`` halves an item's weight every ``half_life`` items
back from the most recent one, so that a user's latest taste leads.
"""

from __future__ import annotations

import numpy as np

POOLINGS = ("mean", "recency")


def recency_weights(n: int, half_life: float) -> np.ndarray:
    """(n,) weights, oldest first: ``0.5 ** ((n - 1 - j) / half_life)``."""
    return np.power(0.5, (n - 1 - np.arange(n)) / half_life).astype(np.float32)


def pool(vectors: np.ndarray, method: str = "recency", half_life: float = 5.0) -> np.ndarray:
    """Pool a history's item vectors (n, dim), oldest first, into one unit vector (dim,).

    Raises:
        ValueError: empty history or unknown method.
    """
    if len(vectors) == 0:
        raise ValueError("cannot pool an empty history")
    if method == "mean":
        weights = np.ones(len(vectors), dtype=np.float32)
    elif method == "recency":
        weights = recency_weights(len(vectors), half_life)
    else:
        raise ValueError(f"unknown pooling '{method}'; expected one of {POOLINGS}")
    vector = weights @ vectors  # (dim,)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector
