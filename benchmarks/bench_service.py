"""Latency and throughput of the HTTP service against the in-process Python API, same store.

Usage:
    python benchmarks/bench_service.py [--store STORE] [--requests 1000] [--concurrency 1,4]
                                       [--endpoints user,history,text]

Without --store, the packaged demo sample is indexed into a temporary store. The store is copied
to a temporary directory first (an embedded store is opened by one process at a time, and the
original is left untouched), then:

1. the Python API answers every query in this process, one after another (``Retriever``);
2. ``xdretrieve serve`` starts in a second process on a free loopback port (access log off),
   and this process sends the same queries over HTTP (httpx, keep-alive) from 1 and from N
   threads: p50/p99 are per request as the client sees them, throughput is requests / wall time.

Queries: stored users drawn with a fixed seed, each asked for the other domain's top ``--limit``
(``user``); the same users' source-domain histories (``history``); titles of random items as
free text (``text``, which embeds the text on the CPU). Client and server share the machine's
cores, as a sidecar would. Both processes inherit the environment: on a small or busy CPU,
``OMP_NUM_THREADS=1`` keeps torch's threads from contending (text p50 36 ms instead of 105 ms
through HTTP, measured on 2 shared cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xdretrieve.cli import format_table
from xdretrieve.config import Settings
from xdretrieve.retriever import Retriever
from xdretrieve.store import ITEMS, USERS

Job = tuple[str, dict]  # (path, JSON body)


def make_jobs(retriever: Retriever, n: int, limit: int, seed: int = 0) -> dict[str, list[Job]]:
    profiles = [p.payload for p in retriever.store.scroll(USERS, fields=["user_id", "domain",
                                                                         "history"])]
    domains = retriever.info.domains
    rng = np.random.default_rng(seed)
    picks = [profiles[i] for i in rng.choice(len(profiles), size=n, replace=len(profiles) < n)]
    titles = [p.payload["title"] for p in retriever.store.scroll(ITEMS, fields=["title"])]
    texts = [titles[i] for i in rng.choice(len(titles), size=n, replace=len(titles) < n)]

    def other(domain: str) -> str:
        return next(d for d in domains if d != domain)

    return {
        "user": [("/recommend/user", {"user_id": p["user_id"], "domain": other(p["domain"]),
                                      "limit": limit}) for p in picks],
        "history": [("/recommend/history", {"item_ids": p["history"][-20:],
                                            "domain": other(p["domain"]), "limit": limit})
                    for p in picks],
        "text": [("/search/text", {"text": t, "domain": domains[i % len(domains)],
                                   "limit": limit}) for i, t in enumerate(texts)],
    }


def fresh(jobs: list[Job], tag: str) -> list[Job]:
    """Text queries made unique to one pass: every pass embeds, none reads another's cache."""
    return [(path, {**body, "text": f"{body['text']} ({tag})"} if "text" in body else body)
            for path, body in jobs]


def call_api(retriever: Retriever, path: str, body: dict) -> None:
    if path == "/recommend/user":
        retriever.recommend_user(body["user_id"], body["domain"], body["limit"])
    elif path == "/recommend/history":
        retriever.recommend_history(body["item_ids"], body["domain"], body["limit"])
    else:
        retriever.search_text(body["text"], body["domain"], body["limit"])


def timed(jobs: list[Job], call: Callable[[int, str, dict], bool], threads: int
          ) -> tuple[np.ndarray, float, int]:
    """Per-request seconds, wall seconds, failures; ``threads`` workers share the jobs, and
    ``call(worker, path, body)`` answers whether the request succeeded."""
    times = np.zeros(len(jobs))
    failures = [0] * threads

    def work(k: int) -> None:
        for i in range(k, len(jobs), threads):
            t = time.perf_counter()
            ok = call(k, *jobs[i])
            times[i] = time.perf_counter() - t
            failures[k] += not ok

    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return times, time.perf_counter() - start, sum(failures)


def row(endpoint: str, how: str, times: np.ndarray, wall: float, failures: int) -> tuple:
    ms = times * 1e3
    return (endpoint, how, len(ms), f"{np.percentile(ms, 50):.2f}", f"{np.percentile(ms, 99):.2f}",
            f"{ms.mean():.2f}", f"{len(ms) / wall:,.0f}", failures)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int, cache: Path) -> subprocess.Popen:
    import httpx

    server = subprocess.Popen(
        [sys.executable, "-c", "from xdretrieve.serve_cli import serve; serve()",
         "--store", str(store), "--port", str(port), "--no-access-log", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "XDR_CACHE_DIR": str(cache)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise SystemExit("the server did not get ready in 120 s")


def demo_store(directory: Path) -> Path:
    from xdretrieve.cli import DEMO_DIR
    from xdretrieve.data import Dataset
    from xdretrieve.indexer import index_dataset

    index_dataset(Dataset.from_dir(DEMO_DIR), Settings(store=directory / "demo.xdr"))
    return directory / "demo.xdr"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="an xdretrieve store (default: the demo)")
    parser.add_argument("--requests", type=int, default=1000, help="per endpoint and load")
    parser.add_argument("--concurrency", default="1,4", help="client threads, comma-separated")
    parser.add_argument("--endpoints", default="user,history,text")
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args()
    import httpx

    endpoints = args.endpoints.split(",")
    loads = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        shutil.copytree(args.store or demo_store(Path(tmp)), store)
        cache = Path(tmp) / "cache"  # a fresh embedding cache: text queries are embedded
        retriever = Retriever(Settings(store=store, cache_dir=cache))
        items, users = retriever.store.count(ITEMS), retriever.store.count(USERS)
        jobs = make_jobs(retriever, args.requests, args.limit)
        rows = []
        for endpoint in endpoints:
            for path, body in fresh(jobs[endpoint][:50], "apiw"):  # warm-up (loads the encoder)
                call_api(retriever, path, body)
            rows.append(row(endpoint, "Python API", *timed(
                fresh(jobs[endpoint], "api"), lambda _, p, b: call_api(retriever, p, b) or True,
                1)))
        retriever.close()

        port = free_port()
        server = start_server(store, port, cache)
        try:
            for endpoint in endpoints:
                for threads in loads:
                    clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
                               for _ in range(threads)]  # one keep-alive connection each

                    def post(worker: int, path: str, body: dict,
                             clients: list[httpx.Client] = clients) -> bool:
                        return clients[worker].post(path, json=body).status_code == 200

                    tag = f"http{threads}"
                    timed(fresh(jobs[endpoint][:50], tag + "w"), post, threads)  # warm-up
                    rows.append(row(endpoint, f"HTTP, {threads} client thread(s)",
                                    *timed(fresh(jobs[endpoint], tag), post, threads)))
                    for client in clients:
                        client.close()
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
          f"cores; store: {args.store or 'packaged demo'} ({items:,} items, {users:,} user "
          f"profiles); limit {args.limit}")
    print(format_table(("endpoint", "path", "requests", "p50 ms", "p99 ms", "mean ms", "req/s",
                        "errors"), rows))


if __name__ == "__main__":
    main()
