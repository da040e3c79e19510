"""A large upsert into per-domain shards, written by one process per shard at once.

Converting and writing points is CPU work inside the binding, which holds the GIL throughout:
two threads write no faster than one. The shards of a per-domain collection share nothing, so
processes can: each worker is ``python -m xdretrieve.store.edge_load SHARD_DIR``, reads pickled
chunks ``(ids, vectors, payloads)`` on stdin, writes them, answers ``("ok", count)`` on stdout
and flushes the shard when told to stop (a ``None`` chunk). One chunk is in flight per worker,
which bounds memory and gives the progress bar its steps. A worker that fails reports its
traceback; the others are stopped and the error is raised. What a failed upsert wrote stays
written, as with a single process: an ``index`` run again redoes the rest.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

from xdretrieve.errors import StoreError

# Points the other workers take off the largest shard's, at least: starting a worker costs about
# 0.3 s, the time of writing some 10,000 points (38,396 real items in two domains: 39,100
# points/s in two processes against 32,800 in one, medians of 5)
PARALLEL_MIN_POINTS = 10_000
CHUNK_POINTS = 16_384  # points per message to a worker


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worth_it(group_sizes: Sequence[int]) -> bool:
    """Whether groups of these sizes (one shard each) are written sooner by a process each:
    that takes as long as the largest group plus the start, one process as long as all."""
    return (os.name == "posix" and usable_cpus() > 1 and len(group_sizes) > 1
            and sum(group_sizes) - max(group_sizes) >= PARALLEL_MIN_POINTS)


class WorkersUnavailable(RuntimeError):
    """No worker process could be started (nothing was written): write in this process."""


@dataclass
class _Worker:
    path: Path
    proc: subprocess.Popen
    chunks: Iterator[tuple[list[int], np.ndarray, list[dict[str, Any]]]]
    stopping: bool = field(default=False)

    def send_next(self) -> None:
        """The next chunk, or the order to flush and stop when none is left."""
        chunk = next(self.chunks, None)
        self.stopping = chunk is None
        assert self.proc.stdin is not None
        try:
            pickle.dump(chunk, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it stopped: receive() says why

    def receive(self) -> int:
        """Points the worker wrote since the last answer (0 once it has stopped)."""
        assert self.proc.stdout is not None
        try:
            kind, value = pickle.load(self.proc.stdout)
        except EOFError:
            code = self.proc.wait()
            raise StoreError(f"the process writing {self.path} stopped (exit code {code}) "
                             f"before answering") from None
        if kind == "error":
            raise StoreError(f"writing {self.path} failed in its worker process:\n{value}")
        return int(value)


def _chunks(rows: Sequence[int], ids: Sequence[int], vectors: np.ndarray,
            payloads: Sequence[dict[str, Any]]
            ) -> Iterator[tuple[list[int], np.ndarray, list[dict[str, Any]]]]:
    # gathered a chunk at a time: no copy of a shard's whole part (1.5 GB of vectors at 1M)
    for start in range(0, len(rows), CHUNK_POINTS):
        part = rows[start:start + CHUNK_POINTS]
        yield [ids[k] for k in part], vectors[part], [payloads[k] for k in part]


def write_in_parallel(jobs: Sequence[tuple[Path, Sequence[int]]], ids: Sequence[int],
                      vectors: np.ndarray, payloads: Sequence[dict[str, Any]],
                      progress: Any = None) -> None:
    """Write each job's points, ``(shard directory, positions in ids/vectors/payloads)``, in a
    process of its own; the shards must exist and be closed in this process. ``progress``: a
    tqdm bar."""
    root = str(Path(__file__).resolve().parents[2])  # the worker imports this same xdretrieve
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    workers: list[_Worker] = []
    try:
        for path, rows in jobs:
            try:
                proc = subprocess.Popen([sys.executable, "-m", __name__, str(path)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            except OSError as e:  # e.g. an embedded interpreter: sys.executable is not Python
                raise WorkersUnavailable(f"cannot start {sys.executable!r}: {e}") from e
            workers.append(_Worker(path, proc, _chunks(rows, ids, vectors, payloads)))
        for w in workers:
            w.send_next()
        busy = {w.proc.stdout: w for w in workers}
        while busy:
            for ready in wait(list(busy)):
                w = busy[ready]  # type: ignore[index]
                written = w.receive()
                if progress is not None and written:
                    progress.update(written)
                if w.stopping:  # that was its last answer: flushed and closed
                    del busy[ready]  # type: ignore[arg-type]
                else:
                    w.send_next()
        for w in workers:
            if w.proc.wait() != 0:
                raise StoreError(f"the process writing {w.path} exited with {w.proc.returncode}")
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait()
            for pipe in (w.proc.stdin, w.proc.stdout):
                # closing stdin flushes a chunk a dead worker never read: BrokenPipeError, which
                # would hide the error above and leave the other pipes open (the file is closed)
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


def _worker(shard_dir: str) -> int:
    """The worker's side (see the module's docstring)."""
    # stdout carries the answers: anything else printed to it (by Python or the engine) is
    # sent to stderr instead
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer

    def answer(kind: str, value: object) -> None:
        pickle.dump((kind, value), answers)
        answers.flush()

    try:
        from xdretrieve.store.edge_shards import open_shard, write_points

        shard = open_shard(Path(shard_dir), Path(shard_dir).parent.parent)
        try:
            while (chunk := pickle.load(requests)) is not None:
                ids, vectors, payloads = chunk
                write_points(shard, ids, vectors, payloads)
                answer("ok", len(ids))
            shard.flush()
        finally:
            shard.close()
        answer("ok", 0)
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        answer("error", traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
