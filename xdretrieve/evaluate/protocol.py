"""The cold-start cross-domain protocol of ``shared/EVALUATION.md``: who is tested, with what
query, against what truth, and what a fitted component may see.

The protocol hands out two kinds of objects and nothing else:

- a :class:`TrainView` for fitting: the interactions of ``train`` users only (copied out of the
  dataset, which the view does not keep), plus the ``valid`` users' queries and truth, labelled
  as such, for model selection;
- an :class:`EvalTask` for scoring: the test users' queries (their source-domain history) and
  truth (their target-domain items). Only the runner holds it; methods receive the queries.

A test user's target-domain interactions therefore never reach a ``fit``: a method would have to
go around the protocol to the raw dataset to see them, and :mod:`xdretrieve.evaluate.leakcheck`
detects a method that does.

Example:
    >>> protocol = Protocol(Dataset.from_dir("data/arts-office"))         # doctest: +SKIP
    >>> direction = Direction("arts", "office")
    >>> view, task = protocol.train_view(direction), protocol.task(direction)
    >>> len(task), len(view.target_items)
    (1000, 19757)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import permutations
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from xdretrieve.data import Dataset, Item
from xdretrieve.errors import NotFoundError, XDRetrieveError

log = logging.getLogger(__name__)

TEST_FRACTION = 0.1  # without users.csv: share of users active in two domains held out as test
VALID_FRACTION = 0.05  # ... and of the others active in two domains, kept for model selection
# Without users.csv every command draws the same split (training's and the methods' seeds do not
# change it), so that what `finetune` trains on, `evaluate` never tests on.
SPLIT_SEED = 0


class Direction(NamedTuple):
    """An ordered pair of domains: queries come from ``source``, answers from ``target``."""

    source: str
    target: str

    def __str__(self) -> str:
        return f"{self.source}->{self.target}"

    @classmethod
    def parse(cls, text: str) -> Direction:
        """``"arts->office"`` -> ``Direction("arts", "office")``.

        Raises:
            XDRetrieveError: not of the form ``S->T`` with two different names.
        """
        parts = [p.strip() for p in text.split("->")]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise XDRetrieveError(f"bad direction '{text}': expected SOURCE->TARGET, "
                                  "two different domains, e.g. 'arts->office'")
        return cls(parts[0], parts[1])


@dataclass(frozen=True)
class Split:
    """Users of each split, in users.csv order (or order of first interaction without it)."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]
    from_file: bool  # True: users.csv; False: the seeded random split
    valid_drawn: bool = False  # users.csv named no valid users: drawn from its train users

    @classmethod
    def of(cls, dataset: Dataset, seed: int = SPLIT_SEED) -> Split:
        """The dataset's split: users.csv when it was given, else a seeded random
        :data:`TEST_FRACTION` of the users active in at least two domains as test, a seeded
        :data:`VALID_FRACTION` of the other such users as valid, the rest train. A users.csv
        without valid users gets them drawn the same way from its train users (model selection
        needs some; its test users stay as they are). Users absent from users.csv are in no
        split and never used.

        Computed once per dataset and seed: a command that splits its dataset in several places
        (finetune's report, finetune, the trainer) shares the one split, and its warning."""
        key = ("split", seed)
        if key not in dataset.derived:
            dataset.derived[key] = cls._draw(dataset, seed)
        return dataset.derived[key]

    @classmethod
    def _draw(cls, dataset: Dataset, seed: int) -> Split:
        rng = np.random.default_rng(seed)
        if dataset.splits is not None:
            by = {name: tuple(u for u, s in dataset.splits.items() if s == name)
                  for name in ("train", "valid", "test")}
            unlisted = sum(1 for u in dataset.histories if u not in dataset.splits)
            if unlisted:
                log.warning("%d user(s) with interactions are not in users.csv; they are not used",
                            unlisted)
            if by["valid"]:
                return cls(by["train"], by["valid"], by["test"], from_file=True)
            valid = _draw_valid(sorted(u for u in by["train"] if _active(dataset, u)), rng)
            return cls(tuple(u for u in by["train"] if u not in valid),
                       tuple(u for u in by["train"] if u in valid), by["test"],
                       from_file=True, valid_drawn=bool(valid))
        users = tuple(dataset.histories)  # order of first interaction
        active = sorted(u for u in users if _active(dataset, u))
        n_test = round(TEST_FRACTION * len(active)) if active else 0
        n_test = max(n_test, 1) if active else 0
        chosen = {active[i] for i in rng.choice(len(active), size=n_test, replace=False)}
        valid = _draw_valid([u for u in active if u not in chosen], rng,
                            round(VALID_FRACTION * len(active)))
        return cls(tuple(u for u in users if u not in chosen and u not in valid),
                   tuple(u for u in users if u in valid),
                   tuple(u for u in users if u in chosen), from_file=False)


def users_digest(users: Sequence[str]) -> str:
    """A short fingerprint of a set of users (a model records its train users' so that an
    evaluation can tell whether it was trained on another split)."""
    return hashlib.sha256("\n".join(sorted(users)).encode()).hexdigest()[:16]


def _active(dataset: Dataset, user: str) -> bool:
    """Whether the user has interactions in at least two domains."""
    return sum(1 for ids in dataset.histories.get(user, {}).values() if ids) >= 2


def _draw_valid(candidates: list[str], rng: np.random.Generator,
                n: int | None = None) -> set[str]:
    """A seeded share of ``candidates`` (``n`` of them, :data:`VALID_FRACTION` by default; at
    least one, and never all: some must be left to train on)."""
    n = round(VALID_FRACTION * len(candidates)) if n is None else n
    n = min(max(n, 1), len(candidates) - 1)
    return {candidates[i] for i in rng.choice(len(candidates), size=n, replace=False)} if (
        n > 0) else set()


@dataclass(frozen=True, eq=False)
class EvalTask:
    """Queries and truth of one direction for one group of users (test, or valid).

    ``queries[u]`` is user u's source-domain history, oldest first; ``truth[u]`` the indices
    into ``target_items`` (the candidate set: every target item, items.jsonl order) of u's
    target-domain items, sorted and unique.
    """

    direction: Direction
    group: str  # "test" | "valid"
    users: tuple[str, ...]
    queries: tuple[tuple[str, ...], ...]
    truth: tuple[np.ndarray, ...]  # each (n_truth_u,) int64
    target_items: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.users)

    def head(self, n: int | None) -> EvalTask:
        """The first ``n`` users (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return EvalTask(self.direction, self.group, self.users[:n], self.queries[:n],
                        self.truth[:n], self.target_items)


def _frozen(histories: Mapping[str, Mapping[str, tuple[str, ...]]]
            ) -> Mapping[str, Mapping[str, tuple[str, ...]]]:
    return MappingProxyType({u: MappingProxyType(dict(h)) for u, h in histories.items()})


@dataclass(frozen=True, eq=False)
class TrainView:
    """Everything a method may fit on for one direction.

    Holds the catalog (``items``; item text is not user data), the histories of ``train`` users
    in every domain (``histories``, read-only copies) and, for model selection and early
    stopping only, the ``valid`` users of this direction as an :class:`EvalTask`. It holds no
    reference to the dataset, and nothing of test users.

    Matrices are cached: ``matrix(domain)`` is (n_train_users, n_domain_items) with interaction
    counts, rows in ``users`` order, columns in items.jsonl order of that domain.
    """

    direction: Direction
    items: Mapping[str, Item]
    users: tuple[str, ...]
    histories: Mapping[str, Mapping[str, tuple[str, ...]]]
    valid: EvalTask

    @property
    def source(self) -> str:
        return self.direction.source

    @property
    def target(self) -> str:
        return self.direction.target

    @cached_property
    def _catalog(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for item in self.items.values():
            out.setdefault(item.domain, []).append(item.item_id)
        return {d: tuple(ids) for d, ids in out.items()}

    def domain_items(self, domain: str) -> tuple[str, ...]:
        """The domain's item ids in items.jsonl order."""
        return self._catalog.get(domain, ())

    @property
    def source_items(self) -> tuple[str, ...]:
        return self.domain_items(self.source)

    @property
    def target_items(self) -> tuple[str, ...]:
        """The candidate set: every target item, items.jsonl order (the ranking's columns)."""
        return self.domain_items(self.target)

    @cached_property
    def _indices(self) -> dict[str, dict[str, int]]:
        return {d: {iid: i for i, iid in enumerate(ids)} for d, ids in self._catalog.items()}

    def item_index(self, domain: str) -> Mapping[str, int]:
        """Item id -> column of ``domain``."""
        return self._indices.get(domain, {})

    def matrix(self, domain: str) -> sp.csr_matrix:
        """(n_train_users, n_domain_items) float32 interaction counts of the train users."""
        cache = self.__dict__.setdefault("_matrices", {})
        if domain not in cache:
            cache[domain] = self.history_matrix(
                [self.histories[u].get(domain, ()) for u in self.users], domain, binary=False)
        return cache[domain]

    def popularity(self, domain: str) -> np.ndarray:
        """(n_domain_items,) number of train-user interactions with each item."""
        return np.asarray(self.matrix(domain).sum(axis=0), dtype=np.float64).ravel()

    def history_matrix(self, histories: Sequence[Sequence[str]], domain: str,
                       binary: bool = True) -> sp.csr_matrix:
        """(len(histories), n_domain_items) float32 rows of the given histories (e.g. queries).

        Items of other domains are ignored; ``binary`` counts an item once however often it
        occurs.
        """
        index = self.item_index(domain)
        rows: list[int] = []
        cols: list[int] = []
        for r, history in enumerate(histories):
            for iid in history:
                c = index.get(iid)
                if c is not None:
                    rows.append(r)
                    cols.append(c)
        data = np.ones(len(rows), dtype=np.float32)
        m = sp.csr_matrix((data, (rows, cols)), shape=(len(histories), len(index)),
                          dtype=np.float32)
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m


class Protocol:
    """Splits a dataset once and hands out train views and evaluation tasks per direction.

    Args:
        dataset: the loaded dataset.
        seed: seeds the random split of a dataset without users.csv (keep the default: it is
            the split every command uses).
    """

    def __init__(self, dataset: Dataset, seed: int = SPLIT_SEED):
        self.name = dataset.name
        self.split = Split.of(dataset, seed)
        self.domains = dataset.domains
        self._items = MappingProxyType(dict(dataset.items))
        # Histories split apart at once: train users for views, the rest for tasks only.
        self._train = _frozen({u: dataset.histories.get(u, {}) for u in self.split.train})
        self._held_out = {u: dict(dataset.histories.get(u, {}))
                          for u in (*self.split.valid, *self.split.test)}

    def directions(self) -> list[Direction]:
        """Every ordered pair of the dataset's domains.

        Raises:
            XDRetrieveError: the dataset has one domain, so there is no direction.
        """
        if len(self.domains) < 2:
            raise XDRetrieveError(f"{f'dataset {self.name!r}' if self.name else 'the dataset'} "
                                  f"has one domain "
                                  f"({', '.join(self.domains)}): cross-domain recommendation "
                                  f"needs items of two domains or more")
        return [Direction(s, t) for s, t in permutations(self.domains, 2)]

    def check(self, direction: Direction) -> Direction:
        """The direction, if both its domains exist; raises :class:`NotFoundError` otherwise."""
        direction = Direction(*direction)
        for d in direction:
            if d not in self.domains:
                raise NotFoundError(f"unknown domain '{d}'; this dataset has: "
                                    f"{', '.join(self.domains)}")
        if direction.source == direction.target:
            raise XDRetrieveError(f"direction {direction}: source and target must differ")
        return direction

    def _targets(self, domain: str) -> tuple[str, ...]:
        return tuple(i.item_id for i in self._items.values() if i.domain == domain)

    def task(self, direction: Direction, group: str = "test") -> EvalTask:
        """The test (or valid) users of ``direction`` with at least one source and one target
        interaction, in users.csv order: their source history as query, target items as truth.
        """
        direction = self.check(direction)
        users = {"test": self.split.test, "valid": self.split.valid}[group]
        targets = self._targets(direction.target)
        index = {iid: i for i, iid in enumerate(targets)}
        kept, queries, truth = [], [], []
        for u in users:
            history = self._held_out.get(u, {})
            query, answer = history.get(direction.source, ()), history.get(direction.target, ())
            if query and answer:
                kept.append(u)
                queries.append(tuple(query))
                truth.append(np.unique(np.fromiter((index[i] for i in answer), dtype=np.int64)))
        return EvalTask(direction, group, tuple(kept), tuple(queries), tuple(truth), targets)

    def train_view(self, direction: Direction) -> TrainView:
        """What a method may fit on for ``direction``: train users' interactions (all domains)
        and the valid users' task."""
        direction = self.check(direction)
        return TrainView(direction, self._items, self.split.train, self._train,
                         self.task(direction, "valid"))
