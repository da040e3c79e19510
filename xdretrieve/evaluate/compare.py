"""How far a method is ahead of (or behind) the best other method, with its uncertainty.

With 1,000 test users the means move by a few thousandths between equally good methods, so a
ratio alone can mislead. The comparison resamples test users (a paired bootstrap: both methods
on the same resampled users) and reports the 95% interval of the ratio of means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xdretrieve.evaluate.runner import Results

COMPARED = ("ndcg@10", "recall@10")


@dataclass(frozen=True)
class Comparison:
    direction: str
    metric: str
    method: str
    rival: str  # the best method not named like ``method`` on this metric
    ratio: float  # mean(method) / mean(rival)
    low: float  # 95% paired-bootstrap interval of the ratio
    high: float


def against_best(results: Results, method: str = "xdretrieve", metrics=COMPARED,
                 samples: int = 2000, seed: int = 0) -> list[Comparison]:
    """Per direction and metric: ``method`` against the best method whose name does not start
    with ``method`` (its own variants and ablations are not rivals)."""
    rng = np.random.default_rng(seed)
    out = []
    for d in results.directions:
        rows = {r.method: r for r in results.rows if r.direction == d}
        if method not in rows or not rows[method].per_user:
            continue
        rivals = [r for name, r in rows.items() if not name.startswith(method) and r.per_user]
        for metric in metrics:
            if not rivals:
                continue
            rival = max(rivals, key=lambda r: r.metrics[metric])
            a, b = rows[method].per_user[metric], rival.per_user[metric]
            idx = rng.integers(len(a), size=(samples, len(a)))  # (samples, n_users)
            ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-12)
            out.append(Comparison(d, metric, method, rival.method,
                                  float(a.mean() / max(b.mean(), 1e-12)),
                                  float(np.quantile(ratios, 0.025)),
                                  float(np.quantile(ratios, 0.975))))
    return out


def to_markdown(comparisons: list[Comparison]) -> list[str]:
    if not comparisons:
        return []
    out = ["## Against the best other method", "",
           "Ratio of means over the same test users, with the 95% interval of a paired bootstrap "
           "(2,000 resamples of the test users).", "",
           "| direction | metric | method | best other | ratio | 95% interval |",
           "|---|---|---|---|---:|---|"]
    out += [f"| {c.direction} | {c.metric} | {c.method} | {c.rival} | {c.ratio:.2f}x | "
            f"{c.low:.2f}x - {c.high:.2f}x |" for c in comparisons]
    return [*out, ""]
