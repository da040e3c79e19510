"""Query latency of the Python API in a warm process, and of one `xdretrieve query` process.

Usage:
    python benchmarks/query_latency.py --store STORE [--queries 1000] [--processes 5]

Queries: stored users drawn with a fixed seed, each asked for the other domain's top 10 (the
full path: profile lookup, filtered nearest-neighbour search, payload).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time

import numpy as np

from xdretrieve.config import Settings
from xdretrieve.retriever import Retriever
from xdretrieve.store import USERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=5,
                        help="`xdretrieve query` processes timed after the warm ones (0: none)")
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args()

    retriever = Retriever(Settings(store=args.store))
    profiles = [p.payload for p in retriever.store.scroll(USERS, fields=["user_id", "domain"])]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(profiles), size=args.queries, replace=len(profiles) < args.queries)
    domains = retriever.info.domains
    jobs = [(profiles[i]["user_id"], next(d for d in domains if d != profiles[i]["domain"]))
            for i in picks]
    for user, domain in jobs[:20]:  # warm-up
        retriever.recommend_user(user, domain, args.limit)
    times = []
    for user, domain in jobs:
        t = time.perf_counter()
        retriever.recommend_user(user, domain, args.limit)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    print(f"hardware: {platform.processor() or platform.machine()}, "
          f"{__import__('os').cpu_count()} CPU cores")
    print(f"Python API, warm process, {len(ms)} queries (recommend_user, limit {args.limit}): "
          f"median {np.median(ms):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms, "
          f"mean {ms.mean():.2f} ms")
    retriever.close()

    walls = []
    for user, domain in jobs[:args.processes]:
        t = time.perf_counter()
        subprocess.run(["xdretrieve", "query", "--store", args.store, "--user", user, "--domain",
                        domain, "--limit", str(args.limit)], check=True, capture_output=True)
        walls.append(time.perf_counter() - t)
    if walls:  # --processes 0: the warm process alone
        print(f"one `xdretrieve query` process (start-up included), {len(walls)} runs: median "
              f"{statistics.median(walls) * 1e3:.0f} ms, min {min(walls) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
