"""Check that the tests catch bugs: apply one mutation at a time to the code and run its tests.

Each entry of ``tests/mutations.json`` is a one-line change that a real bug would make (a weight
saved halved, an exponent swapped, a tie broken the other way) with the test files that must
catch it. A mutation the tests pass ("survived") is a gap in the tests, unless the entry says
it is expected to survive and why (a change that keeps the answer, or a path no request
reaches). An entry names the one test function that catches it (``tests/test_x.py::test_y``),
or test files (slower to run). Not part of the default suite: a sweep runs
pytest once per mutation (about 29 minutes for 1,050 on 2 cores).

Each pytest run is a fork of the sweep's process, which has imported the heavy libraries
(torch, transformers, sentence-transformers, Qdrant's) once, before any mutation: a fresh
interpreter spent most of a short test's run importing them again. The fork imports xdretrieve
itself anew, from the mutated files, and a test that starts ``xdretrieve`` in a subprocess sees
them too. ``--fresh-interpreters`` runs each in a new ``python -m pytest`` instead. For POSIX
systems (Linux, macOS): the sweep forks and kills process groups.

Usage (from the repository root, with a clean working tree under xdretrieve/ and plugins/)::

    python -m tests.mutation_sweep              # every mutation
    python -m tests.mutation_sweep --only save-bias-halved --only kept-ge
    python -m tests.mutation_sweep --fresh-interpreters   # a new interpreter per pytest run

It first runs every test the entries name on the code as it is (one pytest run): a test that
fails there would "catch" every mutation, so the sweep stops (exit status 2) and names it.
Exit status 1 when a mutation not expected to survive survives. A mutation whose tests run
past ``--timeout`` (300 s) hangs them: it is caught, and its run killed with every process it
started. Each file is restored after
its mutation, also when interrupted; the clean-tree check means ``git checkout`` can restore
anything a killed run left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = Path(__file__).with_name("mutations.json")
# Without the pytest plugins that installed packages bring (hypothesis, schemathesis, anyio,
# langsmith with the LangChain plugin): importing them took about 6 of the 7 s of a run of one
# short test. No test needs them: main() first runs every named test so, unmutated.
PYTEST_ENV = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
# Imported once by the sweep, before any fork (see the docstring). Third-party only: nothing
# here imports xdretrieve, so every fork reads the package from the files as they are then.
PRELOAD = ("numpy", "scipy.sparse", "pyarrow.parquet", "torch", "transformers",
           "sentence_transformers", "qdrant_client", "qdrant_edge", "click", "pydantic",
           "pydantic_settings", "fastapi", "uvicorn", "httpx", "implicit", "matplotlib.pyplot",
           "threadpoolctl", "tqdm", "pytest")
# A mutation's run past this has hung (a loop that never ends): it is caught, and the sweep goes
# on. The slowest entries take about 25 s.
TIMEOUT_S = 300


def entry_problem(mutation: dict) -> str | None:
    """Why an entry of ``mutations.json`` cannot be applied as written, or None."""
    unknown = set(mutation) - {"id", "file", "old", "new", "tests", "expect", "why"}
    if unknown:
        return f"{mutation['id']}: unknown keys {sorted(unknown)}"
    if mutation["old"] == mutation["new"]:
        return f"{mutation['id']}: 'new' is 'old'"
    found = (ROOT / mutation["file"]).read_text().count(mutation["old"])
    if found != 1:
        return (f"{mutation['id']}: the text to change is in {mutation['file']} {found} times, "
                f"not once: update tests/mutations.json")
    if not mutation["tests"] or not all(map(_test_exists, mutation["tests"])):
        return f"{mutation['id']}: names no tests, or tests that do not exist"
    if "expect" in mutation and not (mutation["expect"] == "survives" and mutation.get("why")):
        return f"{mutation['id']}: an expected survivor says 'expect': 'survives' and why"
    return None


def _test_exists(test: str) -> bool:
    """A test file or folder, or one test function of a file (``tests/test_x.py::test_y``: the
    sweep then runs that test alone, much faster than its whole file)."""
    path, _, name = test.partition("::")
    if not name:
        return (ROOT / path).exists()
    source = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
    return re.search(rf"^def {re.escape(name)}\(", source, re.M) is not None


def preload() -> None:
    """Import the heavy third-party libraries into this process, for its forks to share (one
    that is not installed, such as an optional extra, is left out)."""
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    own = sorted(m for m in sys.modules if m.partition(".")[0].startswith("xdretrieve"))
    if own:  # every fork would run this code, not the mutated files
        raise SystemExit(f"the sweep's process has imported {', '.join(own)}: its forks would "
                         f"not see the mutations (use --fresh-interpreters)")


def run_pytest(args: list[str], fresh: bool = False,
               timeout: float | None = None) -> tuple[int, str]:
    """(exit status, output) of pytest run with ``args`` from the repository root, without
    plugins: in a fork of this process, or in a fresh interpreter the fork starts when
    ``fresh``. Past ``timeout`` seconds the run and every process it started are killed:
    status -9, and the output's last line says so."""
    with tempfile.TemporaryFile() as output:
        sys.stdout.flush()  # or the fork would write what this process has buffered again
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _pytest_in_this_fork(args, output.fileno(), fresh)
        status = _wait(pid, timeout)
        output.seek(0)
        said = output.read().decode(errors="replace")
    if status is None:
        return -signal.SIGKILL, f"{said}\ntimed out after {timeout:g} s"
    return os.waitstatus_to_exitcode(status), said


def _wait(pid: int, timeout: float | None) -> int | None:
    """The wait status of the child ``pid``, or None when it ran past ``timeout`` seconds (its
    process group, what its tests started included, is killed then, and when this process is
    interrupted)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.01)
    except BaseException:
        _kill_group(pid)
        os.waitpid(pid, 0)
        raise
    _kill_group(pid)
    os.waitpid(pid, 0)
    return None


def _kill_group(leader: int) -> None:
    """Kill ``leader``'s process group, and ``leader`` itself should it have none (waiting for
    it must never hang)."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError):
            kill(leader, signal.SIGKILL)


def _pytest_in_this_fork(args: list[str], output: int, fresh: bool) -> None:
    """The forked child: a process group of its own (a timeout kills what its tests started
    too), its output to ``output``; runs pytest here, or replaces itself with a fresh
    interpreter that does (``fresh``); exits with pytest's status, never returning into the
    sweep's loop."""
    status = 3
    try:
        os.setsid()
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.chdir(ROOT)
        if fresh:
            os.execve(sys.executable, [sys.executable, "-m", "pytest", *args], PYTEST_ENV)
        # sys.stdout may not write to fd 1 (in a pytest run that captures, it does not)
        sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = sys.__stderr__ = open(2, "w", closefd=False)  # noqa: SIM115
        os.environ.update(PYTEST_ENV)
        import pytest

        status = int(pytest.main(args))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def failing_unmutated(mutations: list[dict], fresh: bool = False) -> str:
    """The tests the entries name that fail on the code as it is (pytest's summary lines), or
    '': a mutation such a test "catches" would prove nothing. Run as the mutations' tests are
    run (``fresh``: see ``run_pytest``)."""
    tests = sorted({t for m in mutations for t in m["tests"]})
    status, output = run_pytest(["-q", "-p", "no:cacheprovider", "-rfE", *tests], fresh)
    if status == 0:
        return ""
    failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return "\n".join(failed) or output.strip()[-2000:]


def run_one(mutation: dict, fresh: bool = False,
            timeout: float | None = TIMEOUT_S) -> tuple[bool, str]:
    """(caught, pytest's last line) for one mutation (``fresh``, ``timeout``: see
    ``run_pytest``; a run that times out is caught)."""
    problem = entry_problem(mutation)
    if problem is not None:
        raise SystemExit(problem)
    path = ROOT / mutation["file"]
    source = path.read_text()
    path.write_text(source.replace(mutation["old"], mutation["new"]))
    try:
        status, output = run_pytest(["-q", "-x", "-p", "no:cacheprovider", *mutation["tests"]],
                                    fresh, timeout)
    finally:
        path.write_text(source)
    lines = output.strip().splitlines()
    return status != 0, lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="ID",
                        help="run this mutation only (repeatable)")
    parser.add_argument("--fresh-interpreters", action="store_true",
                        help="run pytest in a new interpreter each time, not in a fork of this "
                             "process with the heavy libraries imported (slower)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, metavar="SECONDS",
                        help=f"a mutation whose tests run longer is caught (they hang) and "
                             f"killed (default {TIMEOUT_S})")
    args = parser.parse_args(argv)
    fresh = args.fresh_interpreters
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "xdretrieve", "plugins"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if dirty:
        print(f"uncommitted changes under xdretrieve/ or plugins/; commit or stash them "
              f"first:\n{dirty}", file=sys.stderr)
        return 2
    mutations = json.loads(MUTATIONS.read_text())
    if args.only:
        unknown = set(args.only) - {m["id"] for m in mutations}
        if unknown:
            print(f"unknown mutation(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        mutations = [m for m in mutations if m["id"] in args.only]
    problems = [p for p in map(entry_problem, mutations) if p is not None]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    if not fresh:
        preload()
    failing = failing_unmutated(mutations, fresh)
    if failing:
        print(f"tests that fail without any mutation (fix them first):\n{failing}",
              file=sys.stderr)
        return 2
    gaps, caught_count, expected_count = [], 0, 0
    for m in mutations:
        caught, last = run_one(m, fresh, args.timeout)
        expected = m.get("expect") == "survives"
        verdict = "caught" if caught else ("survived, as expected" if expected else "SURVIVED")
        print(f"{verdict:22} {m['id']:38} {last}", flush=True)
        caught_count += caught
        expected_count += expected and not caught
        if not caught and not expected:
            gaps.append(m["id"])
    print(f"\n{caught_count} of {len(mutations)} caught; survived as expected: "
          f"{expected_count}; gaps: {len(gaps)}" + (f" ({', '.join(gaps)})" if gaps else ""))
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())
