"""The mutation sweep's list stays usable: every entry changes text that is in its file once and
names tests that exist. A change of the code that leaves an entry stale fails here, in the
default suite, not only in the sweep that CI runs after it."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.mutation_sweep import MUTATIONS, ROOT, entry_problem, failing_unmutated, run_one


def test_every_mutation_changes_text_found_once_and_names_existing_tests() -> None:
    entries = json.loads(MUTATIONS.read_text())
    repeated = [i for i, n in Counter(m["id"] for m in entries).items() if n > 1]
    assert not repeated, f"ids used twice: {repeated}"
    problems = [p for p in map(entry_problem, entries) if p is not None]
    assert not problems, "\n".join(problems)


def test_no_two_mutations_make_the_same_change() -> None:
    """Two entries that leave their file the same (but for spacing) run the same tests on the
    same code twice: the sweep's time, for nothing."""
    sources: dict[str, str] = {}
    made: dict[tuple[str, str], str] = {}
    twins = []
    for m in json.loads(MUTATIONS.read_text()):
        if m["file"] not in sources:
            sources[m["file"]] = (ROOT / m["file"]).read_text()
        key = (m["file"], " ".join(sources[m["file"]].replace(m["old"], m["new"]).split()))
        if key in made:
            twins.append(f"{made[key]} and {m['id']}")
        made.setdefault(key, m["id"])
    assert not twins, "the same change twice: " + "; ".join(twins)


def test_an_entry_may_name_one_test_function_and_it_must_exist() -> None:
    """``tests/test_x.py::test_y`` runs that test alone; a renamed test is reported, not run as
    an empty selection that pytest would fail for another reason."""
    entry = {"id": "x", "file": "xdretrieve/evaluate/metrics.py", "old": "1.0 / (first + 1)",
             "new": "1.0 / (first + 2)"}
    named = "tests/test_metrics.py::test_hr_and_mrr_hand_computed"
    assert "def test_hr_and_mrr_hand_computed(" in (MUTATIONS.parent / "test_metrics.py").read_text()
    assert entry_problem({**entry, "tests": [named]}) is None
    assert "do not exist" in entry_problem({**entry, "tests": [named + "_renamed"]})
    assert "do not exist" in entry_problem({**entry, "tests": ["tests/test_nope.py"]})


def test_the_sweep_stops_on_a_test_that_fails_without_any_mutation(tmp_path) -> None:
    """Such a test would count every mutation as caught: named, with pytest's summary line (a
    passing test names nothing). Run as the sweep runs its tests: without pytest plugins."""
    broken = tmp_path / "test_broken.py"
    broken.write_text("def test_already_failing():\n    assert 1 == 2\n")
    passing = "tests/test_metrics.py::test_hr_and_mrr_hand_computed"
    assert failing_unmutated([{"tests": [passing]}]) == ""
    said = failing_unmutated([{"tests": [passing]}, {"tests": [f"{broken}::test_already_failing"]}])
    assert "FAILED" in said and "test_already_failing" in said and "test_hr_and_mrr" not in said


@pytest.mark.parametrize("fresh", [False, True], ids=["fork", "fresh-interpreter"])
def test_a_mutation_is_seen_by_its_test_and_undone(tmp_path, fresh) -> None:
    """Both ways of running pytest see the mutated file (a fork imports it anew), a change that
    keeps the answer survives, and the file is as before after each."""
    module = tmp_path / f"sweep_probe_{int(fresh)}.py"
    module.write_text("def answer():\n    return 42\n")
    test = tmp_path / "test_probe.py"
    test.write_text(f"from {module.stem} import answer\n\n\ndef test_answer():\n"
                    f"    assert answer() == 42\n")
    entry = {"id": "probe", "file": str(module), "old": "return 42",
             "tests": [f"{test}::test_answer"]}
    caught, last = run_one({**entry, "new": "return 43"}, fresh)
    assert caught and "1 failed" in last
    assert module.read_text() == "def answer():\n    return 42\n"
    caught, last = run_one({**entry, "new": "return 6 * 7"}, fresh)
    assert not caught and "1 passed" in last
    assert module.read_text() == "def answer():\n    return 42\n"


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


@pytest.mark.parametrize("fresh", [False, True], ids=["fork", "fresh-interpreter"])
def test_a_mutation_that_hangs_its_test_is_caught_and_its_processes_killed(tmp_path,
                                                                           fresh) -> None:
    """Past the timeout the run is stopped and counted as caught, and a process its test
    started is killed with it (not left running): the sweep goes on."""
    module = tmp_path / f"sweep_hang_{int(fresh)}.py"
    module.write_text("def answer():\n    return 42\n")
    pid_file = tmp_path / "sleeper.pid"
    test = tmp_path / "test_hang.py"
    test.write_text(
        f"import subprocess, sys\nfrom pathlib import Path\nfrom {module.stem} import answer\n\n\n"
        f"def test_answer():\n"
        f"    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"    Path({str(pid_file)!r}).write_text(str(sleeper.pid))\n"
        f"    assert answer() == 42\n")
    entry = {"id": "hang", "file": str(module), "old": "return 42",
             "new": "while True:\n        pass", "tests": [f"{test}::test_answer"]}
    caught, last = run_one(entry, fresh, timeout=5)
    assert caught and last == "timed out after 5 s"
    assert module.read_text() == "def answer():\n    return 42\n"
    sleeper = int(pid_file.read_text())
    for _ in range(100):  # SIGKILL is delivered at once; reaping it may take a moment
        if not _running(sleeper):
            break
        time.sleep(0.05)
    assert not _running(sleeper)
