"""Scoring a ranking function on a task in batches, and choosing hyper-parameters on valid users.

Model selection may only look at ``view.valid`` (the valid users' task), never at test users:
methods call :func:`choose` with that task inside their ``fit``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from xdretrieve.evaluate.metrics import score_rankings
from xdretrieve.evaluate.protocol import EvalTask

log = logging.getLogger(__name__)

RankFn = Callable[[Sequence[tuple[str, ...]]], np.ndarray]  # queries -> (n, n_items) rankings


def score_task(rank: RankFn, task: EvalTask, batch_size: int = 256,
               progress: Callable[[int], Any] | None = None) -> dict[str, np.ndarray]:
    """Every metric for every user of ``task``: name -> (len(task),) float64.

    Queries go to ``rank`` in batches of ``batch_size`` (a full ranking is n_items int64 per
    query); ``progress(n_done_in_batch)`` is called after each batch.
    """
    parts: list[dict[str, np.ndarray]] = []
    n_items = len(task.target_items)
    for start in range(0, len(task), batch_size):
        queries = task.queries[start:start + batch_size]
        rankings = rank(queries)
        if rankings.shape != (len(queries), n_items):
            raise ValueError(f"rank() returned shape {rankings.shape}, expected "
                             f"({len(queries)}, {n_items}): a full ranking per query")
        parts.append(score_rankings(rankings, task.truth[start:start + batch_size], n_items))
        if progress is not None:
            progress(len(queries))
    if not parts:
        return {}
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def choose(candidates: Sequence[Mapping[str, Any]],
           rank_with: Callable[[Mapping[str, Any], Sequence[tuple[str, ...]]], np.ndarray],
           valid: EvalTask, metric: str = "ndcg@10",
           ) -> tuple[dict[str, Any], list[tuple[dict[str, Any], float]]]:
    """The candidate with the best mean ``metric`` on the valid users (the first one on ties,
    and the first one when there are no valid users).

    Args:
        candidates: hyper-parameter settings, the default first.
        rank_with: ``rank_with(params, queries)`` -> rankings.
        valid: the valid users' task (``view.valid``).
        metric: what to maximise.

    Returns:
        The chosen settings, and (settings, mean metric) for every candidate.
    """
    if valid.group != "valid":
        raise ValueError(f"model selection must use valid users, not {valid.group} users")
    if not candidates:
        raise ValueError("no candidates")
    if len(valid) == 0 or len(candidates) == 1:
        return dict(candidates[0]), []
    table: list[tuple[dict[str, Any], float]] = []
    for params in candidates:
        scores = score_task(lambda q, p=params: rank_with(p, q), valid)
        table.append((dict(params), float(scores[metric].mean())))
        log.info("valid %s %s = %.4f", dict(params), metric, table[-1][1])
    best = max(range(len(table)), key=lambda i: (table[i][1], -i))
    return dict(table[best][0]), table
