"""Check that the tests catch bugs: apply one mutation at a time to the code and run its tests.

Each entry of ``tests/mutations.json`` is a one-line change that a real bug would make (a weight
saved halved, an exponent swapped, a tie broken the other way) with the test files that must
catch it. A mutation the tests pass ("survived") is a gap in the tests, unless the entry says
it is expected to survive and why (a change that keeps the answer, or a path no request
reaches). An entry names the one test function that catches it (``tests/test_x.py::test_y``),
or test files (slower to run). Not part of the default suite: a sweep runs
pytest once per mutation (about 50 minutes for 615 on 2 cores).

Usage (from the repository root, with a clean working tree under xdretrieve/ and plugins/)::

    python -m tests.mutation_sweep              # every mutation
    python -m tests.mutation_sweep --only save-bias-halved --only kept-ge

It first runs every test the entries name on the code as it is (one pytest run): a test that
fails there would "catch" every mutation, so the sweep stops (exit status 2) and names it.
Exit status 1 when a mutation not expected to survive survives. Each file is restored after
its mutation, also when interrupted; the clean-tree check means ``git checkout`` can restore
anything a killed run left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = Path(__file__).with_name("mutations.json")
# Without the pytest plugins that installed packages bring (hypothesis, schemathesis, anyio,
# langsmith with the LangChain plugin): importing them took about 6 of the 7 s of a run of one
# short test. No test needs them: main() first runs every named test so, unmutated.
PYTEST_ENV = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


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


def failing_unmutated(mutations: list[dict]) -> str:
    """The tests the entries name that fail on the code as it is (pytest's summary lines), or
    '': a mutation such a test "catches" would prove nothing."""
    tests = sorted({t for m in mutations for t in m["tests"]})
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rfE", *tests], cwd=ROOT, capture_output=True, text=True,
                          env=PYTEST_ENV)
    if done.returncode == 0:
        return ""
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return "\n".join(failed) or (done.stdout + done.stderr).strip()[-2000:]


def run_one(mutation: dict) -> tuple[bool, str]:
    """(caught, pytest's last line) for one mutation."""
    problem = entry_problem(mutation)
    if problem is not None:
        raise SystemExit(problem)
    path = ROOT / mutation["file"]
    source = path.read_text()
    path.write_text(source.replace(mutation["old"], mutation["new"]))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
             *mutation["tests"]], cwd=ROOT, capture_output=True, text=True, env=PYTEST_ENV)
    finally:
        path.write_text(source)
    lines = done.stdout.strip().splitlines()
    return done.returncode != 0, lines[-1] if lines else done.stderr.strip()[-200:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="ID",
                        help="run this mutation only (repeatable)")
    args = parser.parse_args(argv)
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
    failing = failing_unmutated(mutations)
    if failing:
        print(f"tests that fail without any mutation (fix them first):\n{failing}",
              file=sys.stderr)
        return 2
    gaps, caught_count, expected_count = [], 0, 0
    for m in mutations:
        caught, last = run_one(m)
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
