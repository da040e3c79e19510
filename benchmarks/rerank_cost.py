"""What the re-ranker itself costs per query: its features and scores for 200 candidates, and
the co-occurrence candidates it adds, in a warm process (no store reads).

Usage:
    python benchmarks/rerank_cost.py --model MODEL_DIR --data DIR [--queries 1000]

Queries: source histories of the dataset's users (each direction), candidates the model's
top 200 by its own score over every target item, as the served path would hand over.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from xdretrieve.data import Dataset
from xdretrieve.encoder import Encoder, item_text, resolve_model
from xdretrieve.model import TrainedModel
from xdretrieve.rerank import features, overlap_text


def _ms(samples: list[float]) -> str:
    return (f"p50 {np.percentile(samples, 50) * 1e3:.3f} ms, "
            f"p99 {np.percentile(samples, 99) * 1e3:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=200)
    args = parser.parse_args()

    model = TrainedModel.load(args.model)
    if model.reranker is None:
        raise SystemExit(f"{args.model} has no re-ranker")
    stats = model.reranker.stats
    dataset = Dataset.from_dir(args.data)
    ref = resolve_model(args.model)
    from xdretrieve.config import Settings

    settings = Settings(model=args.model)
    encoder = Encoder.from_settings(settings, ref)
    ids = list(dataset.items)
    domains = [dataset.items[i].domain for i in ids]
    vectors = encoder.encode_items([item_text(dataset.items[i], settings.text_template)
                                    for i in ids], domains)  # from the embedding cache
    row = {i: r for r, i in enumerate(ids)}
    texts = {i: overlap_text(dataset.items[i].title, dataset.items[i].text) for i in ids}
    jobs = [(h[s], t) for h in dataset.histories.values() for s in h for t in h if s != t]
    rng = np.random.default_rng(0)
    jobs = [jobs[k] for k in rng.choice(len(jobs), size=min(args.queries, len(jobs)),
                                        replace=False)]
    by_domain = {d: np.flatnonzero(np.asarray(domains) == d) for d in set(domains)}
    prepared = []
    for history, target in jobs:
        user = model.user_vector(vectors[[row[i] for i in history]], target)
        rows = by_domain[target]
        cos = vectors[rows] @ user
        score = model.rescore([ids[r] for r in rows], cos)
        top = np.argsort(-score)[:args.candidates]
        prepared.append((history, target, [ids[rows[k]] for k in top], cos[top], score[top]))

    feats, cooc = [], []
    for _ in range(2):  # the first pass warms the text-token cache, as a serving process would be
        feats.clear()
        cooc.clear()
        for history, target, cand, cos, score in prepared:
            t0 = time.perf_counter()
            stats.cooccurring(history, target, args.candidates)
            t1 = time.perf_counter()
            model.reranker.score(features(stats, history, " ".join(texts[i] for i in history),
                                          cand, None, cos, score))
            t2 = time.perf_counter()
            cooc.append(t1 - t0)
            feats.append(t2 - t1)
    print(f"{platform.processor() or platform.machine()}, {len(prepared)} queries, "
          f"{args.candidates} candidates")
    print(f"re-ranker features + scores: {_ms(feats)}")
    print(f"co-occurrence candidates:    {_ms(cooc)}")


if __name__ == "__main__":
    main()
