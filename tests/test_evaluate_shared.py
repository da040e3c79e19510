"""The protocol on the real amazon-arts-office data: the popularity row of EVALUATION.md must be
reproduced to the fourth decimal, in both directions."""

from __future__ import annotations

import pytest

from tests.conftest import require_shared_data
from xdretrieve.data import Dataset
from xdretrieve.evaluate.protocol import Direction, Protocol
from xdretrieve.evaluate.runner import evaluate

# shared/EVALUATION.md, "Reference values", popularity (train users, T domain), 1,000 test users
REFERENCE = {
    "arts->office": {"recall@10": 0.0379, "ndcg@10": 0.0457, "hr@10": 0.201,
                     "recall@50": 0.0931, "ndcg@50": 0.0664, "mrr": 0.1236},
    "office->arts": {"recall@10": 0.0159, "ndcg@10": 0.0182, "hr@10": 0.084,
                     "recall@50": 0.0607, "ndcg@50": 0.0361, "mrr": 0.0577},
}


@pytest.fixture(scope="module")
def arts_office() -> Dataset:
    return Dataset.from_dir(require_shared_data())


@pytest.mark.shared_data
def test_popularity_reproduces_the_reference_values(arts_office: Dataset) -> None:
    results = evaluate(arts_office, methods=["popularity"], progress=False)
    assert results.n_users == {"arts->office": 1000, "office->arts": 1000}
    for direction, reference in REFERENCE.items():
        for name, value in reference.items():
            got = results.metric(direction, "popularity", name)
            assert round(got, 4) == pytest.approx(value, abs=1e-9), (direction, name, got)


@pytest.mark.shared_data
def test_split_sizes_and_no_test_user_in_the_train_view(arts_office: Dataset) -> None:
    protocol = Protocol(arts_office)
    view = protocol.train_view(Direction("arts", "office"))
    assert (len(view.users), len(protocol.split.valid), len(protocol.split.test)) == (
        8000, 577, 1000)
    assert not set(view.histories) & set(protocol.split.test)
    assert view.popularity("office").sum() == sum(
        len(arts_office.history(u, "office")) for u in protocol.split.train)


@pytest.mark.shared_data
def test_a_derived_pair_reads_and_keeps_the_split(tmp_path) -> None:
    """benchmarks/derive_pair.py cuts a second pair out of the shared data (sub-categories of
    arts), in other formats (Parquet, unix timestamps): it reads with two domains, every user
    active in both, and each keeps the split users.csv gave."""
    from benchmarks.derive_pair import derive

    data = require_shared_data()
    counts = derive(data, tmp_path)
    pair = Dataset.from_dir(tmp_path)
    original = Dataset.from_dir(data)
    assert sorted({item.domain for item in pair.items.values()}) == ["paint", "sewing"]
    assert len(pair.histories) == counts["users"] > 1000
    assert all(h.get("paint") and h.get("sewing") for h in pair.histories.values())
    assert all(pair.splits[u] == original.splits[u] for u in pair.histories)
    # the order of a user's items is the original one (positions became timestamps)
    user = next(iter(pair.histories))
    assert list(pair.history(user, "paint")) == [
        i for i in original.history(user, "arts") if i in pair.items
        and pair.items[i].domain == "paint"]


@pytest.mark.shared_data
def test_a_derived_set_of_three_domains_keeps_office(tmp_path) -> None:
    """``--with-office``: office stays as a third domain, whole, and every user kept is active
    in at least two of the three."""
    from benchmarks.derive_pair import derive

    data = require_shared_data()
    counts = derive(data, tmp_path, with_office=True)
    three = Dataset.from_dir(tmp_path)
    original = Dataset.from_dir(data)
    assert sorted({item.domain for item in three.items.values()}) == ["office", "paint", "sewing"]
    assert counts["items_office"] == sum(i.domain == "office" for i in original.items.values())
    assert all(sum(bool(h.get(d)) for d in ("office", "paint", "sewing")) >= 2
               for h in three.histories.values())
    assert len(three.histories) == counts["users"] > 5000
    assert all(three.splits[u] == original.splits[u] for u in three.histories)
