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
- ``linear, fitted on all test``: refitted on every test user and scored on the same users
  (in-sample: about the best any linear re-ranker over these features can do on these users);
- ``mlp, 2-fold on test`` and ``mlp, fitted on all test``: a small MLP (32 hidden units) over
  the same features, listwise; fitted on all test users it can memorise them, so that row is
  no bound;
- ``... + baseline scores``: the same two models with three more features per candidate, the
  itemknn, userknn and emcdr baselines' scores (fitted on train users, chosen on valid users as
  ``evaluate`` does): whether the baselines' signals (co-occurrence, nearest users, matrix
  factorisation), added to the re-ranker's, would carry it further;
- ``ideal order``: every relevant candidate first (the ceiling of any re-ranker of these
  candidates; bounded by how many of the truth items are among them).

Test users are used for fitting here, which the protocol forbids for a method: these rows
measure the room left, and choose nothing. ``--group valid`` runs the same on valid users, where
a choice may be made; ``--more-features`` adds rows for candidate features the re-ranker does
not have (:class:`MoreFeatures`), each added alone and all together. itemknn (the protocol's
strongest baseline on amazon-arts-office) is ranked in the same run, as ``evaluate`` ranks it,
for the ratios.

Usage:
    python benchmarks/rerank_ceiling.py --data ../shared/data/amazon-arts-office \\
        --model arts-office.model [--store DIR] [--group valid] [--more-features] \\
        [--out ceiling.json]

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
import scipy.sparse as sp

from xdretrieve.evaluate.metrics import ndcg_at, recall_at

K = 10


def _capture(retriever, history: tuple[str, ...], domain: str, n: int):
    """The served candidates of one query as (item ids, features), in the re-ranker's order:
    asked for all ``n`` of them, the served answer is every candidate, each with its features."""
    hits = retriever.recommend_history(list(history), domain, n)
    if any(h.features is None for h in hits):
        raise RuntimeError(f"no re-ranker ordered the answer in {domain}")
    return [h.item_id for h in hits], np.stack([h.features for h in hits])


def _fit_linear(groups, stats, seed=0):
    """The shipped re-ranker's fit (linear, listwise) over every column of the groups'
    features (also columns beyond the re-ranker's own)."""
    from xdretrieve.rerank import fit_reranker

    fitted = fit_reranker(groups, stats, seed=seed)
    return lambda x: ((x - fitted.mean) / fitted.std) @ fitted.weights


def _fit_mlp(groups, seed=0, epochs=300, hidden=32):
    """A listwise MLP over standardised features (the same loss as the linear re-ranker)."""
    import torch

    from xdretrieve.rerank import listwise_batch

    torch.manual_seed(seed)
    X, Y, pad, mean, std = listwise_batch(groups)
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


def _cosine_cooccurrence(a: sp.csr_matrix, b: sp.csr_matrix, same: bool) -> sp.csr_matrix:
    """(n_a, n_b) train users having both items, over sqrt(pop_a * pop_b); ``same``: the
    two are one domain, and an item's pair with itself is dropped."""
    pa = np.asarray(a.sum(axis=0)).ravel()
    pb = np.asarray(b.sum(axis=0)).ravel()
    c = (a.T @ b).tocsr()
    if same:
        c.setdiag(0)
        c.eliminate_zeros()
    inv = lambda p: sp.diags((1.0 / np.sqrt(np.maximum(p, 1))).astype(np.float32))  # noqa: E731
    return (inv(pa) @ c @ inv(pb)).tocsr()


MORE_FEATURES = ("closest_history_cosine", "mean_history_cosine", "recent_history_cosine",
                 "two_hop_target", "two_hop_source", "recent_cooccurrence", "tower_neighbours",
                 "token_to_item", "token_to_token")
RECENT = 5  # the history's last items, for the recent_* features
NEIGHBOURS = 400  # train users, for tower_neighbours (userknn's choice on amazon-arts-office)
TOKENS = 4000  # the most frequent text tokens of each domain, for token_to_token
MIN_PAIRS = 2  # train users a token pair needs before token_to_token trusts its PMI


class TokenTranslation:
    """Collaborative signal at the level of text tokens rather than items, from train users:
    an item's co-occurrence is sparse, while its brand and category words are shared by many
    items. ``token_to_item``: the history's tokens (idf-weighted, unit length) against each
    target item, a token and an item counted by the train users who have both (cosine-
    normalised); ``token_to_token``: the positive PMI of (a source-history token, a token of
    the candidate's text) over train users, averaged over both sides' tokens. ``texts``: each
    item's title and text, tokenized as the re-ranker's text overlap tokenizes them."""

    def __init__(self, view, texts: dict[str, str]):
        from xdretrieve.rerank import tokens

        vocab: dict[str, int] = {}

        def bags(ids) -> tuple[list[int], list[int]]:
            rows, cols = [], []
            for r, item in enumerate(ids):
                for t in sorted(tokens(texts[item])):
                    rows.append(r)
                    cols.append(vocab.setdefault(t, len(vocab)))
            return rows, cols

        s_ids, t_ids = view.source_items, view.target_items
        s_bags, t_bags = bags(s_ids), bags(t_ids)
        shape = lambda ids: (len(ids), len(vocab))  # noqa: E731
        self.source_tokens = sp.csr_matrix((np.ones(len(s_bags[0]), np.float32), s_bags),
                                           shape=shape(s_ids))  # (n_s, vocab)
        target_tokens = sp.csr_matrix((np.ones(len(t_bags[0]), np.float32), t_bags),
                                      shape=shape(t_ids))  # (n_t, vocab)
        source = view.matrix(view.source).astype(bool).astype(np.float32)
        target = view.matrix(view.target).astype(bool).astype(np.float32)
        has_s = ((source @ self.source_tokens) > 0).astype(np.float32)  # (users, vocab)
        has_t = ((target @ target_tokens) > 0).astype(np.float32)
        n = source.shape[0]
        df_s, df_t = (np.asarray(h.sum(axis=0)).ravel() for h in (has_s, has_t))
        popularity = np.asarray(target.sum(axis=0)).ravel()
        self.idf = np.log((n + 1) / (df_s + 1)).astype(np.float32)
        inv = lambda p: sp.diags((1 / np.sqrt(np.maximum(p, 1))).astype(np.float32))  # noqa: E731
        self.token_item = (inv(df_s) @ (has_s.T @ target) @ inv(popularity)).tocsc()
        self.s_keep = np.argsort(-df_s, kind="stable")[:TOKENS]
        t_keep = np.argsort(-df_t, kind="stable")[:TOKENS]
        pairs = (has_s[:, self.s_keep].T @ has_t[:, t_keep]).toarray()  # (TOKENS, TOKENS)
        expected = np.outer(df_s[self.s_keep], df_t[t_keep]) / max(n, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            pmi = np.log(pairs / expected)
        self.ppmi = np.where(pairs >= MIN_PAIRS, np.maximum(pmi, 0), 0).astype(np.float32)
        kept = target_tokens[:, t_keep]
        self.candidate_tokens = (sp.diags(1 / np.maximum(np.asarray(kept.sum(axis=1)).ravel(), 1))
                                 @ kept).tocsr()  # each target item's kept tokens, mean
        self.source_index = view.item_index(view.source)

    def __call__(self, history, cols: np.ndarray) -> np.ndarray:
        """(len(cols), 2): both features of the target items in columns ``cols``."""
        rows = [self.source_index[i] for i in history if i in self.source_index]
        has = (np.asarray(self.source_tokens[rows].sum(axis=0)).ravel() > 0).astype(np.float32)
        weighted = has * self.idf
        weighted /= max(float(np.linalg.norm(weighted)), 1e-12)
        to_item = self.token_item[:, cols].T @ weighted
        kept = has[self.s_keep]
        to_token = self.candidate_tokens[cols] @ (kept @ self.ppmi / max(kept.sum(), 1))
        return np.column_stack([to_item, to_token])


class MoreFeatures:
    """Candidate features the re-ranker does not have, to measure whether they would help
    (``--more-features``): in the model's shared space, the cosine to the closest history item
    (one of the issue's examples), to the history's items on average and to its last
    :data:`RECENT`; from train users, two-hop co-occurrence (history -> target items -> the
    candidate; history -> source items -> the candidate) and co-occurrence with the last
    :data:`RECENT` history items alone (each pair cosine-normalised); and user-based
    co-occurrence in the learned space: the :data:`NEIGHBOURS` train users whose tower query
    (from their source history) is closest to the user's, each counting the candidate with the
    two queries' cosine (userknn, with the tower's space in place of shared items); and the two
    of :class:`TokenTranslation`."""

    def __init__(self, view, vectors: dict[str, np.ndarray], model, texts: dict[str, str]):
        self.view, self.vectors, self.model = view, vectors, model
        source = view.matrix(view.source).astype(bool).astype(np.float32)
        target = view.matrix(view.target).astype(bool).astype(np.float32)
        self.cross = _cosine_cooccurrence(source, target, False)  # (n_s, n_t)
        self.target_target = _cosine_cooccurrence(target, target, True)
        self.source_source = _cosine_cooccurrence(source, source, True)
        self.target_index = view.item_index(view.target)
        self.neighbour_targets = target.tocsr()  # (n_train_users, n_t)
        self.queries = np.stack([self._tower_query(view.histories[u].get(view.source, ()))
                                 for u in view.users])  # (n_train_users, dim)
        self.tokens = TokenTranslation(view, texts)

    def _tower_query(self, history: tuple[str, ...]) -> np.ndarray:
        """The user tower's query for a source history (zeros for none: no neighbour)."""
        known = [self.vectors[i] for i in history if i in self.vectors]
        if not known:
            return np.zeros(len(next(iter(self.vectors.values()))), dtype=np.float32)
        return self.model.user_vector(np.stack(known), self.view.target)

    def __call__(self, history: tuple[str, ...], candidates: list[str]) -> np.ndarray:
        """(len(candidates), len(MORE_FEATURES))."""
        view = self.view
        h = view.history_matrix([history], view.source)  # (1, n_s)
        recent = view.history_matrix([history[-RECENT:]], view.source)
        cols = np.array([self.target_index[c] for c in candidates])
        cross = h @ self.cross  # (1, n_t)
        two_hop_target = (cross @ self.target_target).toarray().ravel()[cols]
        two_hop_source = ((h @ self.source_source) @ self.cross).toarray().ravel()[cols]
        recent_co = (recent @ self.cross).toarray().ravel()[cols]
        cand = np.stack([self.vectors[c] for c in candidates])
        known = [i for i in dict.fromkeys(history) if i in self.vectors]
        sims = cand @ np.stack([self.vectors[i] for i in known]).T  # (n_c, n_h)
        last = [i for i in history[-RECENT:] if i in self.vectors]
        recent_sims = cand @ np.stack([self.vectors[i] for i in last]).T
        near = self.queries @ self._tower_query(history)  # (n_train_users,)
        k = min(NEIGHBOURS, len(near))
        top = np.argpartition(-near, k - 1)[:k]
        neighbours = near[top] @ self.neighbour_targets[top][:, cols].toarray()  # (n_c,)
        return np.column_stack([sims.max(1), sims.mean(1), recent_sims.max(1),
                                np.log1p(two_hop_target), np.log1p(two_hop_source),
                                np.log1p(recent_co), np.log1p(np.maximum(neighbours, 0)),
                                self.tokens(history, cols)])


def _two_fold(groups, fit, half) -> list:
    """Per user, the scorer fitted on the other fold's users."""
    fns = [None] * len(groups)
    for fold in (0, 1):
        fn = fit([g for g, h in zip(groups, half, strict=True) if h != fold])
        for u in np.flatnonzero(half == fold):
            fns[u] = fn
    return fns


def analyse(task, view, retriever, n: int, more: MoreFeatures | None = None) -> dict:
    """Every row of the module's docstring for one direction's ``task`` (test or valid users),
    with the baselines fitted on ``view`` (its train users; valid users choose their settings);
    ``more``: also the rows of the features it adds."""
    from xdretrieve.evaluate.emcdr import EMCDR
    from xdretrieve.evaluate.itemknn import ItemKNN
    from xdretrieve.evaluate.metrics import score_rankings
    from xdretrieve.evaluate.userknn import UserKNN
    from xdretrieve.rerank import FEATURES

    stats = retriever.model.reranker.stats
    domain, on = task.direction.target, task.group
    index = {item: k for k, item in enumerate(task.target_items)}
    truths = list(task.truth)
    cands, xs, extra = [], [], []
    for history in task.queries:
        c, x = _capture(retriever, history, domain, n)
        cands.append(np.array([index[i] for i in c], dtype=np.int64))
        xs.append(x)
        if more is not None:
            extra.append(more(history, c))
    labels = [np.isin(c, t).astype(np.float32) for c, t in zip(cands, truths, strict=True)]

    baseline_scores = []
    for method in (ItemKNN(), UserKNN(), EMCDR()):
        method.fit(view)
        baseline_scores.append(method.score(task.queries))  # (n_users, n_target)
        if method.name == "itemknn":
            found = score_rankings(method.rank(task.queries), truths, len(task.target_items))
            itemknn = {m: float(np.mean(found[m])) for m in ("ndcg@10", "recall@10")}
    item, user, mf = baseline_scores
    with_baselines = [np.column_stack([x, np.log1p(item[u, c]), user[u, c], mf[u, c]])
                      for u, (x, c) in enumerate(zip(xs, cands, strict=True))]

    rows: dict[str, dict[str, float]] = {}
    rows["served"] = _metrics(cands, truths)
    score_col = FEATURES.index("score")
    rows["tower order"] = _metrics([c[np.argsort(-x[:, score_col], kind="stable")]
                                    for c, x in zip(cands, xs, strict=True)], truths)
    half = np.arange(len(xs)) % 2  # two folds, alternating users
    linear = lambda g: _fit_linear(g, stats)  # noqa: E731
    for features, suffix in ((xs, ""), (with_baselines, " + baseline scores")):
        groups = list(zip(features, labels, strict=True))
        for name, fit in (("linear", linear), ("mlp", _fit_mlp)):
            rows[f"{name}, 2-fold on {on}{suffix}"] = _metrics(
                _ranked(cands, features, _two_fold(groups, fit, half)), truths)
        for name, fit in (("linear", linear), ("mlp", _fit_mlp)):
            rows[f"{name}, fitted on all {on}{suffix}"] = _metrics(
                _ranked(cands, features, [fit(groups)] * len(xs)), truths)
    if more is not None:
        for k, name in [*enumerate(MORE_FEATURES), (None, "all of them")]:
            features = [np.column_stack([x, e if k is None else e[:, k]])
                        for x, e in zip(xs, extra, strict=True)]
            groups = list(zip(features, labels, strict=True))
            rows[f"linear + {name}, 2-fold on {on}"] = _metrics(
                _ranked(cands, features, _two_fold(groups, linear, half)), truths)
            rows[f"linear + {name}, fitted on all {on}"] = _metrics(
                _ranked(cands, features, [linear(groups)] * len(xs)), truths)
    rows["ideal order"] = _metrics([c[np.argsort(-y, kind="stable")]
                                    for c, y in zip(cands, labels, strict=True)], truths)
    covered = [y.sum() / len(t) for y, t in zip(labels, truths, strict=True)]
    for row in rows.values():
        row["ndcg@10 / itemknn"] = row["ndcg@10"] / itemknn["ndcg@10"]
        row["recall@10 / itemknn"] = row["recall@10"] / itemknn["recall@10"]
    return {"users": len(task), "group": on, "candidates": n, "itemknn": itemknn, "rows": rows,
            "truth among candidates": float(np.mean(covered)),
            "users with a relevant candidate": float(np.mean([y.any() for y in labels]))}


def _store_vectors(retriever) -> dict[str, np.ndarray]:
    """Every stored item's vector (the model's shared space), by item id."""
    from xdretrieve.store import ITEMS

    out = {}
    for p in retriever.store.scroll(ITEMS, with_vectors=True, fields=["item_id"]):
        v = np.asarray(p.vector, dtype=np.float32)
        out[p.payload["item_id"]] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--store", help="a store the model built (default: build one)")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--group", choices=("test", "valid"), default="test",
                        help="the users analysed (valid: what a feature may be chosen on)")
    parser.add_argument("--more-features", action="store_true",
                        help="also measure candidate features the re-ranker does not have")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    from xdretrieve.config import Settings
    from xdretrieve.data import Dataset
    from xdretrieve.evaluate.protocol import Protocol
    from xdretrieve.indexer import index_dataset
    from xdretrieve.rerank import overlap_text
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
        vectors = _store_vectors(retriever) if args.more_features else {}
        texts = {i: overlap_text(item.title, item.text) for i, item in dataset.items.items()}
        for direction in protocol.directions():
            name = str(direction)
            view = protocol.train_view(direction)
            more = MoreFeatures(view, vectors, retriever.model, texts) if (
                args.more_features) else None
            report["directions"][name] = found = analyse(
                protocol.task(direction, args.group), view, retriever, args.candidates, more)
            ref = found["itemknn"]
            print(f"\n{name}: {found['users']} {args.group} users; truth among the "
                  f"{args.candidates} candidates {found['truth among candidates']:.3f}, "
                  f"users with a relevant "
                  f"candidate {found['users with a relevant candidate']:.3f}; itemknn ndcg@10 "
                  f"{ref['ndcg@10']:.4f}, recall@10 {ref['recall@10']:.4f}")
            for row, m in found["rows"].items():
                print(f"  {row:44s} ndcg@10 {m['ndcg@10']:.4f} ({m['ndcg@10 / itemknn']:.2f}x)  "
                      f"recall@10 {m['recall@10']:.4f} ({m['recall@10 / itemknn']:.2f}x)")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    scratch.cleanup()


if __name__ == "__main__":
    main()
