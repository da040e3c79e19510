"""EMCDR: Embedding and Mapping for Cross-Domain Recommendation (Man et al., IJCAI 2017).

1. Latent factors per domain: implicit-feedback ALS (Hu, Koren and Volinsky, ICDM 2008; the
   ``implicit`` library) on each domain's train-user interactions.
2. A mapping from source user factors to target user factors, learned on the train users (all
   of whom are active in both domains here): the paper's MLP (one tanh hidden layer, squared
   error), or a ridge-regularised linear map.
3. A cold-start user's source factors are folded in from their source history: the weighted
   least-squares solution against the fixed source item factors (the ALS user step). They are
   mapped into the target space and scored against the target item factors.

The MLP (NumPy) stops early on the valid users' mapping error (their target factors are folded
in the same way); nothing else is tuned. Train users' factors on both sides are folded in too, so
that the mapping is learned on the same kind of vector it is applied to.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from xdretrieve.errors import MissingDependencyError
from xdretrieve.evaluate.methods import ScoringMethod
from xdretrieve.evaluate.protocol import TrainView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EMCDRConfig:
    """Hyper-parameters: fixed, common values for sparse implicit data (a few alternatives
    around them scored alike on the valid users of amazon-arts-office; test users never)."""

    factors: int = 64
    regularization: float = 0.1  # ALS L2 weight
    confidence: float = 20.0  # ALS alpha: an interaction counts 20x an unobserved pair
    iterations: int = 15
    mapping: str = "mlp"  # "mlp" (the paper's) | "linear"
    hidden: int = 128  # MLP hidden units (the paper uses 2 x factors)
    epochs: int = 300  # MLP full-batch Adam steps at most
    lr: float = 1e-2
    weight_decay: float = 1e-4
    patience: int = 20  # MLP steps without a better valid error before stopping
    ridge: float = 1.0  # linear mapping L2 weight


def _als_class() -> Any:
    """implicit's CPU ALS (the `eval` extra)."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "the emcdr baseline needs the 'implicit' library: pip install 'implicit>=0.7' (or "
            "leave emcdr out: --method for each method to run)") from e
    return AlternatingLeastSquares


class DomainFactors:
    """ALS item factors of one domain and the fold-in of histories against them."""

    def __init__(self, interactions: sp.csr_matrix, config: EMCDRConfig, seed: int):
        import threadpoolctl

        als = _als_class()  # imported first: the limit below covers the BLAS libraries loaded
        # A threaded BLAS under implicit slows it down (and implicit warns). One solver thread:
        # about 1 s per domain on 8,000 users; more threads were slower on 2 cores (OpenMP
        # start-up in every iteration).
        with threadpoolctl.threadpool_limits(1, "blas"):
            self.model = als(factors=config.factors, regularization=config.regularization,
                             alpha=config.confidence, iterations=config.iterations,
                             random_state=seed, num_threads=1)
            self.model.fit(interactions.astype(np.float32).tocsr(), show_progress=False)

    @property
    def items(self) -> np.ndarray:
        return np.asarray(self.model.item_factors)  # (n_items, factors)

    def fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        """(n_rows, factors): least-squares user factors of binary history rows, item factors
        fixed."""
        import threadpoolctl

        if rows.shape[0] == 0:
            return np.zeros((0, self.items.shape[1]), dtype=np.float32)
        with threadpoolctl.threadpool_limits(1, "blas"):
            return np.asarray(self.model.recalculate_user(
                np.arange(rows.shape[0]), rows.astype(np.float32).tocsr()))


def _fit_mlp(x: np.ndarray, y: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
             config: EMCDRConfig, seed: int) -> Any:
    """The paper's mapping: x (n, k_s) -> y (n, k_t) by one tanh hidden layer, squared error,
    full-batch Adam, early stopping on the valid users' error (or a fixed number of steps
    without them). NumPy with hand-written gradients: the net is tiny, and torch's start-up
    and per-op overhead would dominate."""
    rng = np.random.default_rng(seed)
    x, y = x.astype(np.float64), y.astype(np.float64)
    x_valid, y_valid = x_valid.astype(np.float64), y_valid.astype(np.float64)

    def init(fan_in: int, shape: tuple[int, ...]) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=shape) / np.sqrt(fan_in)  # torch's Linear default

    k_in, k_out, h = x.shape[1], y.shape[1], config.hidden
    params = [init(k_in, (k_in, h)), init(k_in, (h,)), init(h, (h, k_out)), init(h, (k_out,))]

    def forward(p: list[np.ndarray], z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden = np.tanh(z @ p[0] + p[1])  # (n, h)
        return hidden, hidden @ p[2] + p[3]  # (n, k_out)

    def error(p: list[np.ndarray], z: np.ndarray, target: np.ndarray) -> float:
        return float(((forward(p, z)[1] - target) ** 2).sum(axis=1).mean())

    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    best, best_params, since = float("inf"), [p.copy() for p in params], 0
    for step in range(1, config.epochs + 1):
        hidden, out = forward(params, x)
        d_out = 2.0 * (out - y) / len(x)  # d loss / d out, loss = mean squared error per user
        d_pre = (d_out @ params[2].T) * (1.0 - hidden ** 2)  # (n, h) through tanh
        grads = [x.T @ d_pre, d_pre.sum(axis=0), hidden.T @ d_out, d_out.sum(axis=0)]
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            g = g + config.weight_decay * p  # L2, as torch's Adam(weight_decay=...)
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            p -= config.lr * (m[i] / (1 - beta1 ** step)) / (
                np.sqrt(v[i] / (1 - beta2 ** step)) + eps)
        if len(x_valid):
            current = error(params, x_valid, y_valid)
            if current < best - 1e-7:
                best, best_params, since = current, [p.copy() for p in params], 0
            else:
                since += 1
                if since >= config.patience:
                    break
        else:
            best_params = params
    log.info("emcdr mapping: %d steps, valid squared error %.4f", step, best)

    def apply(z: np.ndarray) -> np.ndarray:
        return forward(best_params, z.astype(np.float64))[1].astype(np.float32)

    return apply


def _fit_linear(x: np.ndarray, y: np.ndarray, ridge: float) -> Any:
    """Ridge regression y ~ [x, 1] W, closed form."""
    xb = np.hstack([x, np.ones((len(x), 1), dtype=x.dtype)]).astype(np.float64)
    w = np.linalg.solve(xb.T @ xb + ridge * np.eye(xb.shape[1]), xb.T @ y)  # (k_s + 1, k_t)

    def apply(z: np.ndarray) -> np.ndarray:
        return (np.hstack([z, np.ones((len(z), 1), dtype=z.dtype)]) @ w).astype(np.float32)

    return apply


class EMCDR(ScoringMethod):
    """Embedding-and-mapping cold-start baseline (Man et al., IJCAI 2017).

    Args:
        config: hyper-parameters.
        seed: seeds the ALS initialisation and the MLP.
    """

    name = "emcdr"

    def __init__(self, config: EMCDRConfig | None = None, seed: int = 0):
        self.params = config or EMCDRConfig()
        if self.params.mapping not in ("mlp", "linear"):
            raise ValueError(f"unknown mapping '{self.params.mapping}'; expected mlp or linear")
        self.seed = seed
        self._view: TrainView | None = None

    def check(self, view: TrainView) -> None:
        _als_class()  # a missing library fails before any method's work, not at this one's turn

    def fit(self, view: TrainView) -> None:
        import threadpoolctl  # comes with implicit

        self._view = view
        source_rows = view.matrix(view.source).astype(bool).astype(np.float32)  # (n_users, n_s)
        target_rows = view.matrix(view.target).astype(bool).astype(np.float32)  # (n_users, n_t)
        self._source = DomainFactors(source_rows, self.params, self.seed)
        self._target = DomainFactors(target_rows, self.params, self.seed + 1)
        # only users with history on both sides teach the mapping
        both = np.flatnonzero((source_rows.getnnz(axis=1) > 0) & (target_rows.getnnz(axis=1) > 0))
        x = self._source.fold_in(source_rows[both])  # (n_both, k)
        y = self._target.fold_in(target_rows[both])  # (n_both, k)
        valid = view.valid
        x_valid = self._source.fold_in(view.history_matrix(valid.queries, view.source))
        y_valid = self._target.fold_in(view.history_matrix(
            [[valid.target_items[i] for i in t] for t in valid.truth], view.target))
        # one BLAS thread: OpenBLAS's threaded path for (k x n_users) @ (n_users x h) products
        # is ~20x slower than its single-threaded one on a 2-core machine
        with threadpoolctl.threadpool_limits(1, "blas"):
            if self.params.mapping == "mlp":
                self._map = _fit_mlp(x, y, x_valid, y_valid, self.params, self.seed)
            else:
                self._map = _fit_linear(x, y, self.params.ridge)
        self.tiebreak = view.popularity(view.target)

    def score(self, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
        if self._view is None:
            raise RuntimeError("score() before fit()")
        q = self._view.history_matrix(queries, self._view.source)  # (n_q, n_s) binary
        mapped = self._map(self._source.fold_in(q))  # (n_q, k) predicted target user factors
        return mapped @ self._target.items.T  # (n_q, n_t)

    def config(self) -> dict[str, Any]:
        return {**asdict(self.params), "seed": self.seed}
