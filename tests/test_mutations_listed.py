"""The mutation sweep's list stays usable: every entry changes text that is in its file once and
names tests that exist. A change of the code that leaves an entry stale fails here, in the
default suite, not only in the sweep that CI runs after it."""

from __future__ import annotations

import json
from collections import Counter

from tests.mutation_sweep import MUTATIONS, entry_problem


def test_every_mutation_changes_text_found_once_and_names_existing_tests() -> None:
    entries = json.loads(MUTATIONS.read_text())
    repeated = [i for i, n in Counter(m["id"] for m in entries).items() if n > 1]
    assert not repeated, f"ids used twice: {repeated}"
    problems = [p for p in map(entry_problem, entries) if p is not None]
    assert not problems, "\n".join(problems)
