"""Timing, percentiles, peak memory and the machine: what every benchmark module shares."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def latencies_ms(call: Callable[[Any], object], jobs: Sequence[Any],
                 warmup: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and CPU milliseconds of ``call(job)``, one call at a time, after ``warmup``
    untimed calls: two (len(jobs),) arrays.

    CPU time is the process's (every thread, Qdrant's search threads included): on a machine
    shared with other jobs it is what the call costs, where wall time also holds the waits
    for a core.
    """
    for job in jobs[:warmup]:
        call(job)
    wall = np.empty(len(jobs))
    cpu = np.empty(len(jobs))
    clock, cpu_clock = time.perf_counter, time.process_time
    for i, job in enumerate(jobs):
        c, t = cpu_clock(), clock()
        call(job)
        wall[i] = clock() - t
        cpu[i] = cpu_clock() - c
    return wall * 1e3, cpu * 1e3


def summarize(ms: np.ndarray, cpu_ms: np.ndarray | None = None) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds (and CPU p50/p99)."""
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    out = {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
           "mean_ms": float(ms.mean()), "n": len(ms)}
    if cpu_ms is not None:
        out["cpu_p50_ms"], out["cpu_p99_ms"] = (float(x) for x in np.percentile(cpu_ms, [50, 99]))
    return out


def median_of(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric figure over repetitions."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    out: dict[str, Any] = {k: float(statistics.median(r[k] for r in runs)) for k in keys}
    if "n" in runs[0]:
        out["n"] = runs[0]["n"]
    out["repeats"] = len(runs)
    return out


def timed_repeats(call: Callable[[Any], object], jobs: Sequence[Any], repeats: int,
                  warmup: int | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Latency figures as the median over ``repeats`` passes over ``jobs``, after ``warmup``
    untimed calls (default: one whole pass, so that a store just built or copied is in memory);
    also every wall-clock latency of every pass (for the distribution plot)."""
    first = len(jobs) if warmup is None else warmup
    passes = [latencies_ms(call, jobs, warmup=first if r == 0 else 0) for r in range(repeats)]
    figures = median_of([summarize(wall, cpu) for wall, cpu in passes])
    return figures, np.concatenate([wall for wall, _ in passes])


def throughput(call: Callable[[Any], object], jobs: Sequence[Any], threads: int) -> float:
    """Queries per second with ``threads`` callers sharing ``jobs`` (each thread takes every
    ``threads``-th job), wall clock from the first start to the last finish."""
    shares = [jobs[i::threads] for i in range(threads)]
    start = threading.Barrier(threads + 1)

    def worker(share: Sequence[Any]) -> None:
        start.wait()
        for job in share:
            call(job)

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker, s) for s in shares]
        start.wait()
        t = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - t
    return len(jobs) / wall


# -- memory ------------------------------------------------------------------------------------
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mib(key: str) -> float | None:
    """A kB figure of /proc/self/status (Linux) in MiB; None elsewhere."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def rss_mib() -> float:
    found = _status_mib("VmRSS")
    return float("nan") if found is None else found


@dataclass
class PeakMemory:
    """Peak resident set size of this process over a block, in MiB."""

    peak_mib: float = float("nan")
    start_mib: float = float("nan")
    method: str = ""


@contextmanager
def peak_memory() -> Iterator[PeakMemory]:
    """Measure the process's peak RSS inside the block: Linux VmHWM reset at the start through
    /proc/self/clear_refs; elsewhere ``resource.getrusage`` ru_maxrss, a lifetime peak."""
    result = PeakMemory(start_mib=rss_mib())
    if _reset_hwm() and _status_mib("VmHWM") is not None:
        result.method = "peak RSS (VmHWM, reset per stage)"
        try:
            yield result
        finally:
            result.peak_mib = _status_mib("VmHWM") or float("nan")
        return
    result.method = "ru_maxrss (process lifetime peak)"
    try:
        yield result
    finally:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result.peak_mib = maxrss / (1024 * 1024 if platform.system() == "Darwin" else 1024)


# -- the machine -------------------------------------------------------------------------------
def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@dataclass
class Machine:
    cpu: str
    cores: int
    ram_gib: float
    python: str
    packages: dict[str, str] = field(default_factory=dict)

    @classmethod
    def describe(cls) -> Machine:
        info = _lscpu()
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        from importlib.metadata import PackageNotFoundError, version

        packages = {}
        for name in ("xdretrieve", "qdrant-edge-py", "qdrant-client", "numpy", "torch",
                     "sentence-transformers"):
            try:
                packages[name] = version(name)
            except PackageNotFoundError:
                packages[name] = "-"
        return cls(cpu=info.get("Model name", platform.processor() or platform.machine()),
                   cores=os.cpu_count() or 0, ram_gib=round(ram, 1),
                   python=platform.python_version(), packages=packages)
