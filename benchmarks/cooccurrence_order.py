"""Does the order of a user's purchases across domains carry a signal? An analysis on valid users.

A user's interactions are ordered across both domains (``position``, or a timestamp). The
itemknn baseline counts a source item and a target item as co-occurring when a train user has
both, however far apart they were bought. If items bought close together in that sequence were
more telling of each other (one project, one season), weighting each pair by its distance
would rank better. This script measures that: the same itemknn (asymmetric cosine with shrink,
its parameters chosen on valid users over the same grid) with each train user's pair (i, j)
counted with a weight ``w(d)`` instead of 1, where ``d`` is the smallest distance between the
two items in the user's merged sequence (1 = one right after the other; a rank in the sequence,
so positions and timestamps count alike).

Only train users' interactions are read (their order included); the rows are valid users'
ndcg@10, where a choice may be made. ``binary`` is itemknn itself (a check: it equals the
``evaluate`` baseline's valid score).

Usage:
    python benchmarks/cooccurrence_order.py --data ../shared/data/amazon-arts-office \\
        [--out order.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

import numpy as np
import scipy.sparse as sp

from xdretrieve.data import Dataset
from xdretrieve.evaluate.itemknn import ItemKNN
from xdretrieve.evaluate.protocol import Protocol, TrainView
from xdretrieve.rerank import recent_distinct

WEIGHTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "binary": lambda d: np.ones_like(d, dtype=np.float64),
    "1 / d": lambda d: 1.0 / d,
    "1 / sqrt(d)": lambda d: 1.0 / np.sqrt(d),
    "exp(-(d - 1) / 20)": lambda d: np.exp(-(d - 1) / 20.0),
    "1 if d <= 10, else 0": lambda d: (d <= 10).astype(np.float64),
    "1 + 1 / d": lambda d: 1.0 + 1.0 / d,
}


def sequence_ranks(dataset: Dataset, users: set[str]) -> dict[str, dict[tuple[str, str], list]]:
    """user -> (domain, item) -> the ranks (0 = oldest) of its interactions in the user's
    sequence over every domain, for ``users`` only (the train users)."""
    events: dict[str, list] = defaultdict(list)
    for i, x in enumerate(dataset.interactions):
        if x.user_id in users:
            events[x.user_id].append((x.order, i, x.domain, x.item_id))
    out: dict[str, dict[tuple[str, str], list]] = {}
    for user, evs in events.items():
        evs.sort(key=lambda e: (e[0], e[1]))  # as Dataset orders a history
        ranks: dict[tuple[str, str], list] = defaultdict(list)
        for rank, (_, _, domain, item) in enumerate(evs):
            ranks[(domain, item)].append(rank)
        out[user] = ranks
    return out


def pair_distances(view: TrainView, ranks: Mapping[str, Mapping[tuple[str, str], list]],
                   max_history: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every train user's (source item, target item) pair as itemknn counts it (the most
    recent distinct items per domain) with its distance in the user's sequence: three arrays,
    source column, target column and distance (>= 1), one entry per user and pair."""
    rows, cols, dist = [], [], []
    s_index, t_index = view.item_index(view.source), view.item_index(view.target)
    for user in view.users:
        s_items, t_items = (recent_distinct(view.histories[user].get(d, ()), max_history)
                            for d in (view.source, view.target))
        if not s_items or not t_items:
            continue
        ranks_of = ranks[user]
        for i in s_items:
            ri = ranks_of[(view.source, i)]
            for j in t_items:
                rows.append(s_index[i])
                cols.append(t_index[j])
                dist.append(min(abs(a - b) for a in ri for b in ranks_of[(view.target, j)]))
    return np.asarray(rows), np.asarray(cols), np.asarray(dist, dtype=np.float64)


class OrderWeightedItemKNN(ItemKNN):
    """itemknn with each user's pair counted ``weight(d)``, d its distance in the sequence."""

    def __init__(self, pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
                 weight: Callable[[np.ndarray], np.ndarray]):
        super().__init__()
        self.pairs, self.weight = pairs, weight

    def _cooccurrence(self, view: TrainView, source: sp.csr_matrix,
                      target: sp.csr_matrix) -> sp.csr_matrix:
        rows, cols, dist = self.pairs
        return sp.csr_matrix((self.weight(dist), (rows, cols)),
                             shape=(source.shape[1], target.shape[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    started = time.perf_counter()
    dataset = Dataset.from_dir(args.data)
    protocol = Protocol(dataset)
    ranks = sequence_ranks(dataset, set(protocol.split.train))
    rows: dict[str, dict[str, dict]] = {}
    for direction in protocol.directions():
        view = protocol.train_view(direction)
        pairs = pair_distances(view, ranks, ItemKNN().max_history)
        for name, weight in WEIGHTS.items():
            knn = OrderWeightedItemKNN(pairs, weight)
            knn.fit(view)
            best = max(v for _, v in knn.valid_table)
            rows.setdefault(name, {})[str(direction)] = {
                "valid_ndcg@10": round(best, 4), "alpha": knn.alpha, "shrink": knn.shrink}
            print(f"{direction}  {name:14s} valid ndcg@10 {best:.4f} "
                  f"(alpha {knn.alpha}, shrink {knn.shrink})", flush=True)
    directions = [str(d) for d in protocol.directions()]
    print("\n| pair weight | " + " | ".join(directions) + " |")
    print("|---|" + "---:|" * len(directions))
    for name, by in rows.items():
        print(f"| {name} | " + " | ".join(f"{by[d]['valid_ndcg@10']:.4f}" for d in directions)
              + " |")
    seconds = time.perf_counter() - started
    machine = platform.processor() or platform.machine()
    print(f"\n{len(protocol.split.train)} train users; {seconds:.0f} s on {machine}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"data": args.data, "rows": rows, "seconds": round(seconds, 1)}, f,
                      indent=1)


if __name__ == "__main__":
    main()
