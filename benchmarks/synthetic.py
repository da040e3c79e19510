"""A clustered stand-in for a large catalog of real sentence embeddings.

Real MiniLM item vectors are neither uniform on the sphere (where HNSW is at its worst and every
nearest neighbour is nearly orthogonal) nor one tight blob: each item has close neighbours
(median nearest-neighbour cosine about 0.9 on amazon-arts-office), all vectors share a common
direction (mean pairwise cosine about 0.33), they vary along far fewer directions than their 384
dimensions, and a user's cross-domain query finds target-domain items clearly nearer than the
rest (exact top-10 cosine about 0.06 above the 200th). The generator reproduces these, measured
on the real vectors and queries it is compared with:

* a Gaussian mixture: ``n_centres`` clusters, points ``x = normalise(c_k + sigma_k * z)``. The
  centres and most of the noise ``z`` (90% of its variance) lie in a random 32-dimensional
  subspace, the rest is isotropic. Centres are ``normalise(alpha * mu + sqrt(1 - alpha^2) * u_k)``
  with ``mu`` shared: ``alpha`` sets the mean pairwise cosine.
* each cluster's spread ``sigma_k`` is chosen so that its nearest-neighbour cosine at this
  cluster size is a draw from the real nearest-neighbour cosine distribution (quantile matching
  through a simulated spread -> cosine curve), tails included.
* two domains: topic ``t`` has cluster ``2t`` in domain ``a`` and ``2t + 1`` in ``b``, their
  directions correlated (0.4), as "pens" exist in arts and in office. Users like 1-5 topics and
  have items of them in both domains; asked for the other domain, their query comes from the
  region of one domain and is answered from the other, as real cross-domain queries are.

Without the low-dimensional subspace (isotropic noise in 384 dimensions) every item of a cluster
is at the same distance from an outside query, the top 200 are within 0.02 of each other, and
HNSW recall collapses (0.5 at 200k): that data would measure the noise, not the index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xdretrieve.users import pool

DOMAINS = ("a", "b")
SIBLING_RHO = 0.4  # correlation of the directions of a topic's two clusters
USER_TOPICS = 5  # a user likes 1..USER_TOPICS topics
LATENT_DIM = 32  # directions the centres and most of the noise lie in
AMBIENT = 0.1  # share of the noise variance outside them
_CHUNK = 65_536


def nn_cosines(vectors: np.ndarray, rows: np.ndarray, block: int = 256) -> np.ndarray:
    """Exact nearest-neighbour cosine of ``vectors[rows]`` among all other rows (unit vectors)."""
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), block):
        idx = rows[start:start + block]
        sims = vectors[idx] @ vectors.T  # (block, n)
        sims[np.arange(len(idx)), idx] = -np.inf
        out[start:start + block] = sims.max(axis=1)
    return out


def pair_cosines(vectors: np.ndarray, rng: np.random.Generator, pairs: int = 20_000) -> np.ndarray:
    i = rng.integers(len(vectors), size=pairs)
    j = rng.integers(len(vectors), size=pairs)
    keep = i != j
    return np.einsum("ij,ij->i", vectors[i[keep]], vectors[j[keep]])


def _normalise(m: np.ndarray) -> np.ndarray:
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m


def _orthonormal(dim: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(dim, k) random orthonormal basis."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, k)))
    return q.astype(np.float32)


def _noise(rows: int, basis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(rows, dim) unit-variance noise: mostly inside the latent subspace, a little outside."""
    dim, k = basis.shape
    inside = rng.standard_normal((rows, k), dtype=np.float32) @ basis.T / np.float32(np.sqrt(k))
    outside = rng.standard_normal((rows, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    return np.float32(np.sqrt(1 - AMBIENT)) * inside + np.float32(np.sqrt(AMBIENT)) * outside


def spread_curve(basis: np.ndarray, cluster_size: int, sigmas: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Median nearest-neighbour cosine inside one simulated cluster of ``cluster_size`` points,
    for each spread in ``sigmas`` (increasing spread -> decreasing cosine)."""
    size = max(cluster_size, 2)
    centre = basis[:, 0]
    noise = _noise(size, basis, rng)
    out = []
    for sigma in sigmas:
        pts = _normalise(centre + np.float32(sigma) * noise)
        out.append(float(np.median(nn_cosines(pts, np.arange(min(size, 512))))))
    return np.minimum.accumulate(np.array(out))  # monotone for np.interp


@dataclass
class Calibration:
    """What the synthetic set was fitted to and with."""

    real_nn_cosine: dict[str, float]
    real_pair_cosine_mean: float
    alpha: float
    cluster_size: float
    sigma_percentiles: dict[str, float]
    synthetic_nn_cosine: dict[str, float] = field(default_factory=dict)
    synthetic_pair_cosine_mean: float = float("nan")


def _percentiles(x: np.ndarray) -> dict[str, float]:
    qs = (10, 25, 50, 75, 90)
    return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(x, qs), strict=True)}


@dataclass
class SyntheticCatalog:
    """Items (vectors, domains, payloads) and users (histories per domain) of the stand-in."""

    vectors: np.ndarray  # (n, dim) float32 unit
    labels: np.ndarray  # (n,) cluster of each item
    domains: np.ndarray  # (n,) "a" | "b"
    item_ids: list[str]
    histories: dict[str, dict[str, list[int]]]  # user -> domain -> item rows, oldest first
    calibration: Calibration

    def item_payloads(self) -> list[dict[str, Any]]:
        """Payloads shaped and sized like the real ones (about 250 bytes of JSON)."""
        return [{"item_id": iid, "domain": str(dom),
                 "title": f"synthetic item {iid} of cluster {int(lab):04d}, a stand-in title",
                 "text": f"{dom} cluster {int(lab):04d} filler text of a usual length",
                 "text_hash": i}
                for i, (iid, dom, lab) in enumerate(zip(self.item_ids, self.domains,
                                                        self.labels, strict=True))]

    def user_profiles(self, method: str = "recency",
                      half_life: float = 5.0) -> tuple[list[str], list[str], np.ndarray,
                                                       list[dict[str, Any]]]:
        """(user ids, domains, pooled vectors, payloads) of every (user, domain) profile, as
        ``index`` would store them."""
        users, doms, vecs, payloads = [], [], [], []
        for user, per_domain in self.histories.items():
            for domain, rows in per_domain.items():
                users.append(user)
                doms.append(domain)
                vecs.append(pool(self.vectors[rows], method, half_life))
                payloads.append({"user_id": user, "domain": domain,
                                 "history": [self.item_ids[r] for r in rows], "state": ""})
        return users, doms, np.stack(vecs).astype(np.float32), payloads


def calibrate(real: np.ndarray, n: int, n_centres: int, basis: np.ndarray,
              rng: np.random.Generator, sample: int = 2000) -> tuple[Calibration, np.ndarray]:
    """Fit alpha and the per-cluster spreads to real unit vectors; returns the calibration and
    the (n_centres,) spreads."""
    rows = rng.choice(len(real), size=min(sample, len(real)), replace=False)
    real_nn = nn_cosines(real, rows)
    real_pair = float(pair_cosines(real, rng).mean())
    cluster_size = n / n_centres
    sigmas = np.geomspace(0.03, 3.0, 28)
    curve = spread_curve(basis, int(round(cluster_size)), sigmas, rng)  # decreasing in sigma
    targets = rng.choice(real_nn, size=n_centres)
    # np.interp needs increasing x: the curve reversed maps cosine -> spread
    spread = np.interp(targets, curve[::-1], sigmas[::-1]).astype(np.float32)
    # cos(x, y) of two points of different clusters ~ alpha^2 / sqrt((1+s1^2)(1+s2^2))
    shrink = float(np.mean(1.0 / np.sqrt(1.0 + spread.astype(np.float64) ** 2)) ** 2)
    alpha = float(np.sqrt(np.clip(max(real_pair, 0.0) / shrink, 0.0, 0.99)))
    cal = Calibration(real_nn_cosine=_percentiles(real_nn), real_pair_cosine_mean=real_pair,
                      alpha=alpha, cluster_size=cluster_size,
                      sigma_percentiles=_percentiles(spread))
    return cal, spread


def generate(n: int, dim: int, n_centres: int, real: np.ndarray | None, n_users: int,
             seed: int = 0, measure_sample: int = 2000, sibling_rho: float = SIBLING_RHO,
             user_topics: int = USER_TOPICS, latent_dim: int = LATENT_DIM,
             domain_names: tuple[str, str] = DOMAINS) -> SyntheticCatalog:
    """Draw the catalog and its users.

    Args:
        n, dim, n_centres: catalog size, dimension, number of clusters.
        real: real unit vectors to calibrate on (their dimension may differ from ``dim``:
            only cosine statistics are used); ``None`` uses fixed defaults measured on
            amazon-arts-office (NN cosine median 0.895, mean pairwise cosine 0.33).
        n_users: users, each with a history in both domains.
        measure_sample: points whose exact nearest-neighbour cosine is measured afterwards.
        domain_names: the names of the two domains (a trained model's, to run it on them).
    """
    rng = np.random.default_rng(seed)
    if real is None:  # MiniLM on amazon-arts-office: NN cosine p10 0.765, p50 0.895, p90 0.978
        real = _fallback_reference(rng)
    k = min(latent_dim, dim)
    basis = _orthonormal(dim, k, rng)  # embeddings vary along few directions
    cal, spread = calibrate(real, n, n_centres, basis, rng)
    shared = _normalise(rng.standard_normal((1, k)).astype(np.float32))[0]
    # topic t has cluster 2t in domain a and 2t+1 in domain b, their directions correlated by rho
    topics = _normalise(rng.standard_normal(((n_centres + 1) // 2, k)).astype(np.float32))
    own = _normalise(rng.standard_normal(topics.shape).astype(np.float32))
    u = np.empty((n_centres, k), dtype=np.float32)
    u[0::2] = topics[: (n_centres + 1) // 2]
    u[1::2] = _normalise(sibling_rho * topics + np.sqrt(1 - sibling_rho ** 2) * own)[
        : n_centres // 2]
    centres = _normalise(cal.alpha * shared + np.sqrt(1 - cal.alpha ** 2) * u) @ basis.T
    labels = rng.integers(n_centres, size=n)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        lab = labels[start:start + _CHUNK]
        noise = _noise(len(lab), basis, rng)
        vectors[start:start + _CHUNK] = _normalise(centres[lab] + spread[lab, None] * noise)
    domains = np.array(domain_names)[labels % 2]
    item_ids = [f"s{i:07d}" for i in range(n)]

    rows = rng.choice(n, size=min(measure_sample, n), replace=False)
    cal.synthetic_nn_cosine = _percentiles(nn_cosines(vectors, rows))
    cal.synthetic_pair_cosine_mean = float(pair_cosines(vectors, rng).mean())
    histories = _users(labels, n_centres, n_users, user_topics, rng, domain_names)
    return SyntheticCatalog(vectors, labels, domains, item_ids, histories, cal)


def _users(labels: np.ndarray, n_centres: int, n_users: int, max_topics: int,
           rng: np.random.Generator,
           domain_names: tuple[str, str] = DOMAINS) -> dict[str, dict[str, list[int]]]:
    """Each user likes 1 to ``max_topics`` topics: 2-15 items of them in one domain and 1-5 in
    the other (which one is the larger is drawn per user)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_centres + 1))
    members = [order[bounds[k]:bounds[k + 1]] for k in range(n_centres)]
    n_topics = n_centres // 2
    out: dict[str, dict[str, list[int]]] = {}
    for u in range(n_users):
        big = int(rng.integers(2))
        liked = rng.choice(n_topics, size=int(rng.integers(1, max_topics + 1)), replace=False)
        per: dict[str, list[int]] = {}
        for side, domain in enumerate(domain_names):
            size = int(rng.integers(2, 16)) if side == big else int(rng.integers(1, 6))
            clusters = [2 * t + side for t in liked if len(members[2 * t + side])]
            rows = np.concatenate([members[k] for k in clusters])
            per[domain] = [int(r) for r in rng.choice(rows, size=min(size, len(rows)),
                                                      replace=False)]
        out[f"user{u:06d}"] = per
    return out


def _fallback_reference(rng: np.random.Generator) -> np.ndarray:
    """Unit vectors with roughly the real statistics, for runs without a real store."""
    dim, k, per = 64, 40, 50
    centres = _normalise(0.6 * np.ones(dim, dtype=np.float32) / np.sqrt(dim)
                         + 0.8 * _normalise(rng.standard_normal((k, dim)).astype(np.float32)))
    spread = rng.uniform(0.15, 0.6, size=k).astype(np.float32)
    lab = np.repeat(np.arange(k), per)
    noise = rng.standard_normal((len(lab), dim)).astype(np.float32) / np.sqrt(dim)
    return _normalise(centres[lab] + spread[lab, None] * noise)
