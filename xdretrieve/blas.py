"""The query path's matrix products on one BLAS thread.

A trained model's query does a handful of tiny products (the user tower over a history of up
to 50 items, the re-ranker over 200 candidates). OpenBLAS splits even those over every core and
its idle threads then spin: on the 2-core CPU the process used about twice the CPU time of the
query, and the spinning thread competed with the engine's search for the other core (re-ranked
path at 38k: process CPU p99 13.7 ms for a wall p99 of 6.4). One thread for the duration of a
query costs about 8 us; the limit is process-wide while it lasts (a BLAS product of another
thread in that time also runs on one thread).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

_controller: Any = None


def one_blas_thread() -> AbstractContextManager[Any]:
    """A context in which BLAS products use one thread (restored on exit)."""
    global _controller
    if _controller is None:  # scanning the loaded libraries takes a few ms: once
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
