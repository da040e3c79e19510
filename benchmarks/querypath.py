"""The full query path of a stored user, as the retriever runs it.

user vector lookup (``Retriever.user_query``: the user's other-domain profiles, one ``retrieve``)
-> nearest-neighbour search in the target domain with the user's items there excluded,
``candidates`` (200) of them (``Retriever.search``) -> the top ``limit`` (10). With a trained
model (:func:`trained_path`): the profile's user-tower query, 400 neighbours, re-score,
re-ranker over 200.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from xdretrieve.retriever import Hit, Retriever
from xdretrieve.store import USERS, item_point_id


@dataclass(frozen=True, slots=True)
class Job:
    """One query: a stored user asked for the items of ``domain``."""

    user_id: str
    domain: str


def pick_jobs(retriever: Retriever, n: int, seed: int = 0) -> list[Job]:
    """``n`` stored users (drawn with a fixed seed), each asked for a domain other than the
    one of a profile they have, so that the query is cross-domain."""
    profiles = [p.payload for p in retriever.store.scroll(USERS, fields=["user_id", "domain"])]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(profiles), size=n, replace=len(profiles) < n)
    domains = retriever.info.domains
    return [Job(profiles[i]["user_id"], next(d for d in domains if d != profiles[i]["domain"]))
            for i in picks]


@dataclass(frozen=True, slots=True)
class Resolved:
    """A job with its query resolved once: what the search-only engines are given."""

    domain: str
    vector: np.ndarray
    exclude: tuple[str, ...]  # point ids


def resolve(retriever: Retriever, jobs: Sequence[Job]) -> list[Resolved]:
    out = []
    for job in jobs:
        q = retriever.user_query(job.user_id, job.domain)
        out.append(Resolved(job.domain, q.vector, tuple(item_point_id(i) for i in q.exclude)))
    return out


def full_path(retriever: Retriever, candidates: int, limit: int) -> Callable[[Job], list[Hit]]:
    """The query path of a store without a trained model, as one callable ``job -> top hits``:
    the user's profile lookup, ``candidates`` nearest items of the target domain (ids and
    scores), the first ``limit`` (with their payloads)."""

    def run(job: Job) -> list[Hit]:
        query = retriever.user_query(job.user_id, job.domain)
        return retriever.search(query, job.domain, limit, candidates=candidates)

    return run


def trained_path(retriever: Retriever, limit: int) -> Callable[[Job], list[Hit]]:
    """The query path of a store built with a trained model, as ``Retriever`` runs it: the
    user's profiles, holding the user tower's query of their history (one ``retrieve``),
    ``RESCORE_WIDTH x candidates`` (400) nearest items, the model's re-score (scale * cosine +
    item bias) with the items of high bias beyond them (scored in memory), the re-ranker over
    the best ``candidates`` (200) when the model has one, the first ``limit``."""
    if retriever.model is None:
        raise ValueError("the retriever's store was not built with a trained model")

    def run(job: Job) -> list[Hit]:
        return retriever.search(retriever.user_query(job.user_id, job.domain), job.domain,
                                limit)

    return run


def without_reranker(retriever: Retriever) -> Retriever:
    """A second retriever over the same store and model, with the model's re-ranker off."""
    other = Retriever(retriever.settings, store=retriever.store)
    other.model.reranker = None
    return other


def public_api(retriever: Retriever, limit: int) -> Callable[[Job], list[Hit]]:
    """``Retriever.recommend_user`` as shipped (it searches ``limit`` candidates, not 200)."""

    def run(job: Job) -> list[Hit]:
        return retriever.recommend_user(job.user_id, job.domain, limit)

    return run
