"""Fitting the re-ranker a model serves, on the candidates its trained tower gives.

The re-ranker is fitted listwise on train users held out of the tower (the fold), with the
co-occurrence statistics of the other train users (as a new user meets them), then checked on
valid users with the statistics of every train user, in each direction. It is served only into
the target domains where every direction into them gains.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from xdretrieve.data import Dataset
from xdretrieve.evaluate.methods import stable_top
from xdretrieve.evaluate.protocol import Direction
from xdretrieve.rerank import (
    ItemStats,
    Reranker,
    candidate_union,
    features,
    fit_reranker,
    overlap_text,
)
from xdretrieve.train.catalog import Catalog

if TYPE_CHECKING:
    from xdretrieve.train.tower import Tower

log = logging.getLogger(__name__)

SCORE_CHUNK = 1024  # users whose scores over every target item are held at once

# Per direction: (source domain, target domain, histories as catalog rows, each user's truth as
# positions among the target domain's items)
Users = tuple[int, int, list[np.ndarray], list[np.ndarray]]


def fit_served_reranker(model: Tower, dataset: Dataset, catalog: Catalog,
                        histories: dict[str, dict[str, tuple[str, ...]]],
                        fold: list[Users], valid: list[Users], tower_users: list[str],
                        train_users: list[str], directions: list[Direction], seed: int,
                        candidates: int, progress: bool = False) -> tuple[Reranker | None, dict]:
    """The re-ranker to serve (None where no target domain gains) and the valid users' report.

    Args:
        histories: every train user's interactions by domain.
        fold: the held-out train users the re-ranker is fitted on; valid: those it is checked on.
        tower_users: the train users the tower learned from (their statistics serve the fit).
        candidates: how many the served path re-ranks (the tower's best and co-occurring items).
    """
    ids = catalog.ids
    item_domains = [dataset.items[i].domain for i in ids]
    texts = [overlap_text(dataset.items[i].title, dataset.items[i].text) for i in ids]
    names = {(catalog.domains.index(d.source), catalog.domains.index(d.target)): str(d)
             for d in directions}
    model.eval()
    fold_stats = ItemStats.fit(ids, {u: dict(histories[u]) for u in tower_users},
                               item_domains, texts)
    fit_groups = _candidate_groups(model, catalog, texts, names, fold, fold_stats, candidates)
    stats = ItemStats.fit(ids, {u: dict(histories[u]) for u in train_users}, item_domains, texts)
    reranker = fit_reranker([(x, y) for _, x, y in fit_groups], stats, seed=seed)
    report = _compare_on_valid(
        _candidate_groups(model, catalog, texts, names, valid, stats, candidates), reranker)
    reranker.domains = tuple(report["kept"])
    said = describe_rerank(report)
    log.info("%s", said)
    if progress:
        print(said, flush=True)
    return (reranker if reranker.domains else None), report


def _candidate_groups(model: Tower, catalog: Catalog, texts: list[str],
                      names: dict[tuple[int, int], str], users: list[Users], stats: ItemStats,
                      n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per user: (direction, features, labels) of the candidates the served path re-ranks (the
    tower's best and the history's co-occurring items), in the tower's order. ``stats`` must
    not have counted these users."""
    import torch

    from xdretrieve.train.tower import pad

    ids, rows_by_domain = catalog.ids, catalog.rows_by_domain
    groups = []
    with torch.no_grad():
        for s, t, hs, truths in users:
            if not hs:
                continue
            U = model.users(*pad(hs), s, t).numpy()
            V = model.domain_items(t).numpy()
            scale = float(model.logit_scale.exp())
            bias = model.bias[model.rows[t]].detach().numpy()
            # users a chunk at a time: (users, target items) scores of a large catalog would
            # not fit in memory all at once
            for lo in range(0, len(hs), SCORE_CHUNK):
                cos = U[lo:lo + SCORE_CHUNK] @ V.T  # (chunk, n_target)
                score = scale * cos + bias
                top = stable_top(score, n)  # what candidate_union reads of it
                for r, h in enumerate(hs[lo:lo + SCORE_CHUNK]):
                    history = [ids[i] for i in h]
                    co = [catalog.local_of[i]
                          for i in stats.cooccurring(history, catalog.domains[t], n)]
                    cand = np.array(candidate_union(top[r].tolist(), co, n))
                    cand = cand[np.argsort(-score[r, cand], kind="stable")]
                    x = features(stats, history, " ".join(texts[i] for i in h),
                                 [ids[rows_by_domain[t][c]] for c in cand],
                                 [texts[rows_by_domain[t][c]] for c in cand],
                                 cos[r, cand], score[r, cand])
                    groups.append((names[(s, t)], x,
                                   np.isin(cand, truths[lo + r]).astype(np.float32)))
    return groups


def _compare_on_valid(groups, reranker) -> dict:
    """ndcg@10 among the candidates of valid users who have a relevant one, in the tower's
    order and in the re-ranker's (the same users and truth for both), per direction; ``kept``:
    the target domains where every direction into them gains (the re-ranker is served there)."""
    from xdretrieve.evaluate.metrics import ndcg_at

    by_direction: dict[str, list[tuple[float, float]]] = {}
    for direction, x, y in groups:
        truth = np.flatnonzero(y)  # positions of relevant candidates
        if not len(truth):
            continue  # no candidate is relevant: the order cannot matter
        order = np.argsort(-reranker.score(x), kind="stable")
        by_direction.setdefault(direction, []).append(
            (ndcg_at(range(len(y)), truth, 10), ndcg_at(order, truth, 10)))
    report = {d: {"without": float(np.mean([b for b, _ in v])),
                  "with": float(np.mean([n for _, n in v]))} for d, v in by_direction.items()}
    gains: dict[str, bool] = {}
    for direction, r in report.items():
        target = Direction.parse(direction).target
        gains[target] = gains.get(target, True) and r["with"] > r["without"]
    report["kept"] = sorted(t for t, gain in gains.items() if gain)
    return report


def describe_rerank(report: dict) -> str:
    """:func:`_compare_on_valid`'s report (a manifest's ``reranker``) as one line for people."""
    scores = ", ".join(f"{d} {r['without']:.4f} -> {r['with']:.4f}"
                       for d, r in report.items() if isinstance(r, dict))
    kept = ", ".join(report.get("kept", ())) or "no domain (none gains)"
    return (f"re-ranker on valid users, ndcg@10 among their candidates in the user tower's order "
            f"-> re-ranked: {scores}; served into {kept}")
