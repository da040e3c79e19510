"""Detecting a method that sees test users' target-domain interactions.

The check is an invariance test: rewrite every test user's target-domain interactions to other,
random target items, fit the method on the original and on the rewritten dataset, and rank the
same test queries. Nothing the protocol lets a method see has changed, so an honest,
deterministic method ranks identically; one that reads the held-out truth by any route (the raw
dataset, a store indexed from all users, a cache) does not.

Example:
    >>> check_no_leak(lambda ds: Popularity(), dataset,                    # doctest: +SKIP
    ...               Direction("arts", "office"))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xdretrieve.data import Dataset, Interaction
from xdretrieve.errors import XDRetrieveError
from xdretrieve.evaluate.methods import Method
from xdretrieve.evaluate.protocol import Direction, Protocol


class LeakError(XDRetrieveError):
    """A method's rankings depend on what it must not see."""


def perturb_test_targets(dataset: Dataset, direction: Direction, seed: int = 0) -> Dataset:
    """A copy of ``dataset`` in which each test user's ``direction.target`` interactions point
    at random other target items (never one of the user's own); everything else is unchanged.
    """
    protocol = Protocol(dataset, seed)
    test = set(protocol.split.test)
    targets = [i.item_id for i in dataset.items.values() if i.domain == direction.target]
    rng = np.random.default_rng(seed)
    own = {u: set(dataset.history(u, direction.target)) for u in test}
    events = []
    for x in dataset.interactions:
        if x.user_id in test and x.domain == direction.target and len(own[x.user_id]) < len(
                targets):
            while (item := targets[int(rng.integers(len(targets)))]) in own[x.user_id]:
                pass  # rejection sampling: a user owns few of the target items
            x = Interaction(x.user_id, item, x.domain, x.order, x.rating)
        events.append(x)
    splits = None if dataset.splits is None else dict(dataset.splits)
    return Dataset(dict(dataset.items), events, splits, name=dataset.name)


def check_no_leak(make: Callable[[Dataset], Method], dataset: Dataset, direction: Direction,
                  seed: int = 0, max_users: int | None = None) -> None:
    """Raise :class:`LeakError` when a method's test rankings change with the test users'
    target-domain interactions.

    Args:
        make: builds a fresh method; it is given the dataset of that run, so that a method
            wired to more than the protocol hands out (e.g. an index of the whole dataset) is
            wired to the rewritten one in the second run.
        dataset: a small dataset with test users (the method is fitted twice).
        direction: the direction to check.
        seed: seeds the split (without users.csv) and the rewrite.
        max_users: rank only the first test users.
    """
    protocol = Protocol(dataset, seed)
    direction = protocol.check(direction)
    task = protocol.task(direction).head(max_users)
    if not len(task):
        raise XDRetrieveError(f"no test users in {direction}: nothing to check")
    rankings = []
    for ds in (dataset, perturb_test_targets(dataset, direction, seed)):
        method = make(ds)
        try:
            method.fit(Protocol(ds, seed).train_view(direction))
            rankings.append(method.rank(task.queries))
        finally:
            method.close()
    changed = int((rankings[0] != rankings[1]).any(axis=1).sum())
    if changed:
        raise LeakError(f"method '{method.name}' ({direction}): the rankings of {changed} of "
                        f"{len(task)} test users changed when only test users' "
                        f"{direction.target} interactions did; it sees held-out truth")
