"""Popularity: every cold-start user gets the target items most interacted with by train users.

The reference baseline of ``shared/EVALUATION.md``: score = number of train-user interactions
with the item (repeats count); ties keep items.jsonl order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xdretrieve.evaluate.methods import Method, stable_rank
from xdretrieve.evaluate.protocol import TrainView


class Popularity(Method):
    """Ranks target items by their train-user interaction count, the same for every query."""

    name = "popularity"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None  # (n_target_items,)
        self._ranking: np.ndarray | None = None  # (n_target_items,)

    def fit(self, view: TrainView) -> None:
        self.counts = view.popularity(view.target)
        self._ranking = stable_rank(self.counts[None, :])[0]

    def rank(self, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
        if self._ranking is None:
            raise RuntimeError("rank() before fit()")
        return np.tile(self._ranking, (len(queries), 1))

    def config(self) -> dict[str, Any]:
        return {"counts": "train-user interactions in the target domain"}
