"""The mutation sweep's list stays usable: every entry changes text that is in its file once and
names tests that exist. A change of the code that leaves an entry stale fails here, in the
default suite, not only in the sweep that CI runs after it."""

from __future__ import annotations

import json
from collections import Counter

from tests.mutation_sweep import MUTATIONS, ROOT


def test_every_mutation_changes_text_found_once_and_names_existing_tests() -> None:
    entries = json.loads(MUTATIONS.read_text())
    repeated = [i for i, n in Counter(m["id"] for m in entries).items() if n > 1]
    assert not repeated, f"ids used twice: {repeated}"
    for m in entries:
        assert set(m) <= {"id", "file", "old", "new", "tests", "expect", "why"}, m["id"]
        assert m["old"] != m["new"], m["id"]
        found = (ROOT / m["file"]).read_text().count(m["old"])
        assert found == 1, f"{m['id']}: its text is in {m['file']} {found} times, not once"
        assert m["tests"] and all((ROOT / t).exists() for t in m["tests"]), m["id"]
        if "expect" in m:  # an expected survivor says why
            assert m["expect"] == "survives" and m.get("why"), m["id"]
