"""How a history becomes a user vector: pooling of the item vectors.

``mean`` weighs every item alike; ``recency`` halves an item's weight every ``half_life`` items
back from the most recent one, so that a user's latest taste leads. A store built with a trained
two-domain model keeps the user tower's query instead (:func:`profile_vector`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

POOLINGS = ("mean", "recency")
PROFILE_VECTORS = "profile_vectors"  # the store info's record of what profiles hold
TOWER_PROFILES = "user tower"


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


def profile_vector(vectors: np.ndarray, domain: str, method: str = "recency",
                   half_life: float = 5.0, model: Any = None) -> np.ndarray:
    """The vector a store keeps for a user's history in ``domain`` (item vectors (n, dim), oldest
    first): with a trained model of two domains, the user tower's query for the other domain,
    so that a stored user's cold-start query is a lookup (the tower ran at ``index`` time);
    otherwise the pooled history."""
    target = model.profile_target(domain) if model is not None else None
    if target is None:
        return pool(vectors, method, half_life)
    if len(vectors) == 0:
        raise ValueError("cannot pool an empty history")
    return model.user_vector(vectors, target)


def profile_kind(model: Any) -> str:
    """What :func:`profile_vector` stores with ``model`` (recorded in the store's info)."""
    return TOWER_PROFILES if model is not None and any(
        model.profile_target(d) for d in model.domains) else "pooled"
