"""Runs methods side by side under the protocol: the same test users, the same candidates, the
same metrics, per direction; every method timed.

Example:
    >>> results = evaluate(Dataset.from_dir("data/arts-office"), max_users=200)  # doctest: +SKIP
    >>> results.metric("arts->office", "popularity", "ndcg@10")
    0.0457
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from xdretrieve.data import Dataset
from xdretrieve.errors import NotFoundError, XDRetrieveError
from xdretrieve.evaluate.methods import Method
from xdretrieve.evaluate.metrics import METRICS
from xdretrieve.evaluate.protocol import SPLIT_SEED, Direction, EvalTask, Protocol, TrainView
from xdretrieve.evaluate.registry import BASELINES, check_known, make_method
from xdretrieve.evaluate.selection import score_task

log = logging.getLogger(__name__)


@dataclass
class MethodResult:
    """One method on one direction: mean metrics over the test users, and each user's values."""

    direction: str
    method: str
    n_users: int
    metrics: dict[str, float]
    fit_seconds: float
    rank_seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    per_user: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # (n_users,) each


@dataclass
class Results:
    """Everything one evaluation produced; :mod:`xdretrieve.evaluate.report` writes it out."""

    dataset: str
    rows: list[MethodResult]
    n_users: dict[str, int]  # direction -> test users evaluated
    config: dict[str, Any]
    version: str
    started: str  # ISO-8601, UTC
    runtime_seconds: float

    @property
    def directions(self) -> list[str]:
        return list(self.n_users)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.rows))

    def get(self, direction: str, method: str) -> MethodResult:
        for r in self.rows:
            if r.direction == direction and r.method == method:
                return r
        raise NotFoundError(f"no result for method '{method}' on {direction}")

    def metric(self, direction: str, method: str, name: str) -> float:
        """One mean metric, e.g. ``metric("arts->office", "popularity", "ndcg@10")``."""
        return self.get(direction, method).metrics[name]


def _version() -> str:
    try:
        from xdretrieve import __version__
    except ImportError:  # pragma: no cover - running from a partial copy
        return "unknown"
    return str(__version__)


def _directions(protocol: Protocol,
                directions: Sequence[str | Direction | tuple[str, str]] | None) -> list[Direction]:
    if directions is None:
        return protocol.directions()
    out = [protocol.check(Direction.parse(d) if isinstance(d, str) else Direction(*d))
           for d in directions]
    return list(dict.fromkeys(out))


def _names(methods: Sequence[str | Method]) -> list[str]:
    names = [m if isinstance(m, str) else m.name for m in methods]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise XDRetrieveError(f"method name(s) given twice: {', '.join(repeated)}")
    return names


def evaluate(
    dataset: Dataset,
    directions: Sequence[str | Direction | tuple[str, str]] | None = None,
    methods: Sequence[str | Method] | None = None,
    max_users: int | None = None,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 256,
) -> Results:
    """Evaluate methods on every requested direction of ``dataset`` (shared/EVALUATION.md).

    Args:
        dataset: the loaded dataset (users.csv gives the split; else the seeded random one
            that ``finetune`` uses too).
        directions: ``"S->T"`` strings or (source, target) pairs; None: every ordered pair.
        methods: registered names (see :data:`~xdretrieve.evaluate.registry.METHODS`) and/or
            :class:`~xdretrieve.evaluate.methods.Method` objects. A named method is built fresh
            per direction; an object is re-fitted per direction and closed at the end.
            None: the baselines.
        max_users: evaluate only the first N test users (users.csv order) of each direction.
        seed: seeds the methods.
        progress: show progress bars (stderr).
        batch_size: queries ranked at once (memory: batch_size x n_target_items int64).

    Returns:
        The results, one :class:`MethodResult` per (direction, method).

    Raises:
        XDRetrieveError: unknown method or domain, repeated method names.
    """
    from tqdm import tqdm

    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    protocol = Protocol(dataset)
    if not protocol.split.test:  # every direction would be skipped, each with its own warning
        raise XDRetrieveError(
            "users.* names no test user: nothing to evaluate (mark some users 'test', or leave "
            "users.* out for a seeded split)" if protocol.split.from_file else
            "no user has interactions in two domains: nothing to evaluate")
    chosen = _directions(protocol, directions)
    methods = list(BASELINES if methods is None else methods)
    names = _names(methods)
    for m in methods:  # fail on an unknown name before any work
        if isinstance(m, str):
            check_known(m)
    if chosen:  # and on what a method would refuse when fitted (a model from another split)
        _check_methods(methods, protocol.train_view(chosen[0]), seed)
    rows: list[MethodResult] = []
    n_users: dict[str, int] = {}
    overall = tqdm(total=len(chosen) * len(methods), desc="evaluate", unit="run",
                   disable=not progress)
    try:
        for direction in chosen:
            task = protocol.task(direction).head(max_users)
            n_users[str(direction)] = len(task)
            if not len(task):
                log.warning("%s: no test user has both %s and %s interactions; skipped",
                            direction, direction.source, direction.target)
                overall.update(len(methods))
                continue
            view = protocol.train_view(direction)
            log.info("%s: %d test users, %d train users, %d valid users, %d candidates",
                     direction, len(task), len(view.users), len(view.valid),
                     len(task.target_items))
            for spec, name in zip(methods, names, strict=True):
                overall.set_postfix_str(f"{direction} {name}")
                method = make_method(spec, seed) if isinstance(spec, str) else spec
                try:
                    rows.append(_run(method, name, view, task, batch_size, progress, tqdm))
                finally:
                    if isinstance(spec, str):
                        method.close()
                overall.update()
    finally:
        overall.close()
        for spec in methods:
            if not isinstance(spec, str):
                spec.close()
    config = {"directions": [str(d) for d in chosen], "methods": names, "max_users": max_users,
              "seed": seed, "split": "users.csv" if protocol.split.from_file else
              f"seeded random {SPLIT_SEED}", "batch_size": batch_size}
    return Results(dataset.name, rows, n_users, config, _version(),
                   started.isoformat(timespec="seconds"), time.perf_counter() - t0)


def _check_methods(methods: Sequence[str | Method], view: TrainView, seed: int) -> None:
    """Each method's :meth:`~Method.check` (a named one built, checked and closed: building one
    loads no model and indexes nothing), so that no method's error comes after another's work.
    The split, and so what is checked, is the same in every direction."""
    for spec in methods:
        method = make_method(spec, seed) if isinstance(spec, str) else spec
        try:
            method.check(view)
        finally:
            if isinstance(spec, str):
                method.close()


def _run(method: Method, name: str, view: TrainView, task: EvalTask, batch_size: int,
         progress: bool, tqdm: Any) -> MethodResult:
    direction = str(task.direction)
    t = time.perf_counter()
    method.fit(view)
    fit_seconds = time.perf_counter() - t
    t = time.perf_counter()
    with tqdm(total=len(task), desc=f"{direction} {name} ranking", unit="user",
              disable=not progress, leave=False, position=1) as bar:
        per_user = score_task(method.rank, task, batch_size, progress=bar.update)
    rank_seconds = time.perf_counter() - t
    metrics = {k: float(per_user[k].mean()) for k in METRICS}
    log.info("%s %s: ndcg@10 %.4f recall@10 %.4f (fit %.1f s, rank %.1f s)", direction, name,
             metrics["ndcg@10"], metrics["recall@10"], fit_seconds, rank_seconds)
    return MethodResult(direction, name, len(task), metrics, fit_seconds, rank_seconds,
                        _plain(method.config()), per_user)


def _plain(value: Any) -> Any:
    """JSON-ready copy of a config (numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
