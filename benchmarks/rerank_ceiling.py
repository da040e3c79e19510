"""How far can re-ranking the served candidates go? An analysis on the test users, not a method.

The trained pipeline answers from 200 candidates (the tower's exact best and the items that
co-occur with the history) that the linear re-ranker orders by seven features. This script asks,
for the same test users and the same candidates, what the best possible use of them would give:

- ``served``: the re-ranker as shipped (what ``evaluate``'s ``xdretrieve`` row measures; a check
  that the candidates captured here are the served ones);
- ``tower order``: the candidates by the model's own score (the re-ranker off);
- ``linear, 2-fold on test``: the re-ranker's linear model refitted on half of the *test* users
  and scored on the other half (and the other way round): the best these features do with
  weights tuned on users of the test distribution;
- ``linear, fitted on all test``: refitted on every test user and scored on the same users (an
  in-sample upper bound of any linear re-ranker over these features);
- ``mlp, 2-fold on test``: a small MLP over the same features, listwise, 2-fold on test;
- ``... + knn scores``: the same two models with two more features per candidate, the itemknn
  and userknn baselines' scores (fitted on train users, chosen on valid users as ``evaluate``
  does): whether the baselines' signals, added to the re-ranker's, would carry it further;
- ``ideal order``: every relevant candidate first (the ceiling of any re-ranker of these
  candidates; bounded by how many of the truth items are among them).

Test users are used for fitting here, which the protocol forbids for a method: these rows
measure the room left, and choose nothing. itemknn (the protocol's strongest baseline on
amazon-arts-office) is ranked in the same run, as ``evaluate`` ranks it, for the ratios.

Usage:
    python benchmarks/rerank_ceiling.py --data ../shared/data/amazon-arts-office \\
        --model arts-office.model [--store DIR] [--out ceiling.json]

``--store``: a store the model built (e.g. ``results/stores/xdretrieve-<fingerprint>`` of an
``evaluate --out results/`` run); without it one is built in a temporary folder from the
embedding cache.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from xdretrieve.evaluate.metrics import ndcg_at, recall_at

K = 10


def _capture(retriever, history: tuple[str, ...], domain: str, n: int):
    """The served candidates of one query as (item ids, features), in the re-ranker's order."""
    reranker = retriever.model.reranker
    seen: list[np.ndarray] = []
    score = reranker.score

    def recording(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return score(x)

    reranker.score = recording
    try:
        hits = retriever.recommend_history(list(history), domain, n)
    finally:
        del reranker.score  # back to the class's method
    if len(seen) != 1:
        raise RuntimeError(f"expected one re-ranked candidate set, saw {len(seen)}")
    x = seen[0]
    # the hits are the candidates in the re-ranker's order (stable argsort, as served)
    order = np.argsort(-score(x), kind="stable")
    return [h.item_id for h in hits], x[order]


def _fit_linear(groups, stats, seed=0):
    """The shipped re-ranker's fit (linear, listwise) over every column of the groups'
    features (also columns beyond the re-ranker's own)."""
    from xdretrieve.rerank import fit_reranker

    fitted = fit_reranker(groups, stats, seed=seed)
    return lambda x: ((x - fitted.mean) / fitted.std) @ fitted.weights


def _fit_mlp(groups, seed=0, epochs=300, hidden=32):
    """A listwise MLP over standardised features (the same loss as the linear re-ranker)."""
    import torch

    torch.manual_seed(seed)
    groups = [(x, y) for x, y in groups if y.any()]
    allx = np.concatenate([x for x, _ in groups])
    mean, std = allx.mean(0), allx.std(0) + 1e-6
    width = max(len(x) for x, _ in groups)
    X = np.zeros((len(groups), width, allx.shape[1]), dtype=np.float32)
    Y = np.zeros((len(groups), width), dtype=np.float32)
    pad = np.ones((len(groups), width), dtype=bool)
    for g, (x, y) in enumerate(groups):
        X[g, :len(x)], Y[g, :len(y)], pad[g, :len(x)] = (x - mean) / std, y / y.sum(), False
    X, Y, pad = torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(pad)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[-1], hidden), torch.nn.GELU(),
                              torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(epochs):
        logits = net(X).squeeze(-1).masked_fill(pad, -1e9)
        loss = -(Y * torch.log_softmax(logits, dim=1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def score(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(((x - mean) / std).astype(np.float32))).squeeze(-1).numpy()
    return score


def _metrics(orders, truths) -> dict[str, float]:
    """Mean ndcg@10 and recall@10 over users; ``orders[u]``: ranked candidates (indices into
    the target items), ``truths[u]``: the user's target items (the same indices)."""
    nd = [ndcg_at(o, t, K) for o, t in zip(orders, truths, strict=True)]
    rc = [recall_at(o, t, K) for o, t in zip(orders, truths, strict=True)]
    return {"ndcg@10": float(np.mean(nd)), "recall@10": float(np.mean(rc))}


def _ranked(cands, xs, score_fns) -> list[np.ndarray]:
    return [c[np.argsort(-fn(x), kind="stable")]
            for c, x, fn in zip(cands, xs, score_fns, strict=True)]


def analyse(task, view, retriever, n: int) -> dict:
    """Every row of the module's docstring for one direction's ``task`` (test users), with
    the baselines fitted on ``view`` (its train users; valid users choose their settings)."""
    from xdretrieve.evaluate.itemknn import ItemKNN
    from xdretrieve.evaluate.metrics import score_rankings
    from xdretrieve.evaluate.userknn import UserKNN
    from xdretrieve.rerank import FEATURES

    stats = retriever.model.reranker.stats
    domain = task.direction.target
    index = {item: k for k, item in enumerate(task.target_items)}
    truths = list(task.truth)
    cands, xs = [], []
    for history in task.queries:
        c, x = _capture(retriever, history, domain, n)
        cands.append(np.array([index[i] for i in c], dtype=np.int64))
        xs.append(x)
    labels = [np.isin(c, t).astype(np.float32) for c, t in zip(cands, truths, strict=True)]

    knn_scores = []
    for method in (ItemKNN(), UserKNN()):
        method.fit(view)
        knn_scores.append(method.score(task.queries))  # (n_users, n_target)
        if method.name == "itemknn":
            found = score_rankings(method.rank(task.queries), truths, len(task.target_items))
            itemknn = {m: float(np.mean(found[m])) for m in ("ndcg@10", "recall@10")}
    with_knn = [np.column_stack([x, np.log1p(knn_scores[0][u, c]), knn_scores[1][u, c]])
                for u, (x, c) in enumerate(zip(xs, cands, strict=True))]

    rows: dict[str, dict[str, float]] = {}
    rows["served"] = _metrics(cands, truths)
    score_col = FEATURES.index("score")
    rows["tower order"] = _metrics([c[np.argsort(-x[:, score_col], kind="stable")]
                                    for c, x in zip(cands, xs, strict=True)], truths)
    half = np.arange(len(xs)) % 2  # two folds, alternating users
    for features, suffix in ((xs, ""), (with_knn, " + knn scores")):
        groups = list(zip(features, labels, strict=True))
        for name, fit in (("linear", lambda g: _fit_linear(g, stats)), ("mlp", _fit_mlp)):
            fns = [None] * len(xs)
            for fold in (0, 1):
                fn = fit([g for g, h in zip(groups, half, strict=True) if h != fold])
                for u in np.flatnonzero(half == fold):
                    fns[u] = fn
            rows[f"{name}, 2-fold on test{suffix}"] = _metrics(
                _ranked(cands, features, fns), truths)
        for name, fit in (("linear", lambda g: _fit_linear(g, stats)), ("mlp", _fit_mlp)):
            fn = fit(groups)
            rows[f"{name}, fitted on all test{suffix}"] = _metrics(
                _ranked(cands, features, [fn] * len(xs)), truths)
    rows["ideal order"] = _metrics([c[np.argsort(-y, kind="stable")]
                                    for c, y in zip(cands, labels, strict=True)], truths)
    covered = [y.sum() / len(t) for y, t in zip(labels, truths, strict=True)]
    for row in rows.values():
        row["ndcg@10 / itemknn"] = row["ndcg@10"] / itemknn["ndcg@10"]
        row["recall@10 / itemknn"] = row["recall@10"] / itemknn["recall@10"]
    return {"users": len(task), "candidates": n, "itemknn": itemknn, "rows": rows,
            "truth among candidates": float(np.mean(covered)),
            "users with a relevant candidate": float(np.mean([y.any() for y in labels]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--store", help="a store the model built (default: build one)")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    from xdretrieve.config import Settings
    from xdretrieve.data import Dataset
    from xdretrieve.evaluate.protocol import Protocol
    from xdretrieve.indexer import index_dataset
    from xdretrieve.retriever import Retriever

    t0 = time.perf_counter()
    dataset = Dataset.from_dir(args.data)
    protocol = Protocol(dataset)
    scratch = tempfile.TemporaryDirectory(prefix="xdr-ceiling-")
    store = Path(args.store) if args.store else Path(scratch.name) / "store"
    settings = Settings(model=args.model, store=store, candidates=args.candidates)
    if not args.store:
        index_dataset(Dataset(dict(dataset.items), []), settings, users=False)
    report: dict = {"data": args.data, "model": args.model, "machine": platform.processor()
                    or platform.machine(), "directions": {}}
    with Retriever(settings) as retriever:
        if retriever.model is None or retriever.model.reranker is None:
            raise SystemExit(f"{args.model}: a trained model with a re-ranker is needed")
        for direction in protocol.directions():
            name = str(direction)
            report["directions"][name] = found = analyse(
                protocol.task(direction), protocol.train_view(direction), retriever,
                args.candidates)
            ref = found["itemknn"]
            print(f"\n{name}: {found['users']} test users; truth among the {args.candidates} "
                  f"candidates {found['truth among candidates']:.3f}, users with a relevant "
                  f"candidate {found['users with a relevant candidate']:.3f}; itemknn ndcg@10 "
                  f"{ref['ndcg@10']:.4f}, recall@10 {ref['recall@10']:.4f}")
            for row, m in found["rows"].items():
                print(f"  {row:28s} ndcg@10 {m['ndcg@10']:.4f} ({m['ndcg@10 / itemknn']:.2f}x)  "
                      f"recall@10 {m['recall@10']:.4f} ({m['recall@10 / itemknn']:.2f}x)")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    scratch.cleanup()


if __name__ == "__main__":
    main()
