"""The protocol on a hand-made dataset: test users, queries, truth, candidates, what a fit may
see (and a leaky fit caught); then the protocol run end to end: runner, report, command line."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xdretrieve import __version__
from xdretrieve.data import Dataset, Interaction, Item
from xdretrieve.errors import NotFoundError, XDRetrieveError
from xdretrieve.evaluate.cli import evaluate as evaluate_command
from xdretrieve.evaluate.leakcheck import LeakError, check_no_leak, perturb_test_targets
from xdretrieve.evaluate.methods import Method, stable_rank
from xdretrieve.evaluate.metrics import METRICS
from xdretrieve.evaluate.popularity import Popularity
from xdretrieve.evaluate.protocol import (
    SPLIT_SEED,
    Direction,
    Protocol,
    Split,
    TrainView,
    users_digest,
)
from xdretrieve.evaluate.report import format_table, to_markdown, write_report
from xdretrieve.evaluate.runner import evaluate
from xdretrieve.evaluate.selection import score_task

BOOKS_TO_MOVIES = Direction("books", "movies")

# items.jsonl order, domains interleaved; m5 comes first to show candidates keep file order
ITEM_ORDER = ["m5", "b0", "m0", "b1", "m1", "b2", "m2", "b3", "m3", "m4"]

# user -> (split, [(item, position), ...]); users.csv order is this order.
# m3, m4 and m5 are watched by test users only: no fitted component may ever count them.
USERS: dict[str, tuple[str, list[tuple[str, int]]]] = {
    "tr1": ("train", [("b0", 0), ("m0", 1), ("b1", 2), ("m1", 3), ("m1", 4)]),
    "tr2": ("train", [("b1", 0), ("m1", 1), ("b2", 2), ("m2", 3)]),
    "tr3": ("train", [("b0", 0)]),  # books only: trains, but teaches no cross-domain pair
    "va1": ("valid", [("b2", 0), ("m2", 1)]),
    "te2": ("test", [("m3", 1), ("b0", 2), ("b3", 0), ("m5", 3)]),  # file order != position
    "te1": ("test", [("b1", 0), ("m4", 1)]),
    "te3": ("test", [("b2", 0)]),  # books only: in no direction
    "te4": ("test", [("m0", 0)]),  # movies only: in no direction
}


def with_music(ds: Dataset) -> Dataset:
    """``ds`` and a third domain that only a train user has: no test user in its directions."""
    return Dataset({**ds.items, "x0": Item("x0", "music", "title x0")},
                   [*ds.interactions, Interaction("tr1", "x0", "music", 9.0)], ds.splits,
                   name="hand-made")


def make_dataset(users: dict[str, tuple[str, list[tuple[str, int]]]] = USERS,
                 with_splits: bool = True) -> Dataset:
    items = {i: Item(i, "books" if i[0] == "b" else "movies", f"title {i}") for i in ITEM_ORDER}
    events = [Interaction(u, item, items[item].domain, float(pos))
              for u, (_, history) in users.items() for item, pos in history]
    splits = {u: split for u, (split, _) in users.items()} if with_splits else None
    return Dataset(items, events, splits, name="hand-made")


@pytest.fixture
def protocol() -> Protocol:
    return Protocol(make_dataset())


# -- test users, queries, truth, candidates ----------------------------------------------------

def test_test_users_need_both_domains_and_keep_users_csv_order(protocol: Protocol) -> None:
    task = protocol.task(BOOKS_TO_MOVIES)
    assert task.users == ("te2", "te1")
    assert protocol.task(Direction("movies", "books")).users == ("te2", "te1")


def test_query_is_source_history_by_position_and_truth_is_target_set(protocol: Protocol) -> None:
    task = protocol.task(BOOKS_TO_MOVIES)
    assert task.target_items == ("m5", "m0", "m1", "m2", "m3", "m4")  # items.jsonl order
    assert task.queries == (("b3", "b0"), ("b1",))
    assert [[task.target_items[i] for i in t] for t in task.truth] == [["m5", "m3"], ["m4"]]
    reverse = protocol.task(Direction("movies", "books"))
    assert reverse.target_items == ("b0", "b1", "b2", "b3")
    assert reverse.queries == (("m3", "m5"), ("m4",))


def test_head_takes_the_first_users(protocol: Protocol) -> None:
    task = protocol.task(BOOKS_TO_MOVIES)
    first = task.head(1)
    assert first.users == ("te2",)
    assert first.queries == task.queries[:1] and first.truth == task.truth[:1]  # each its own
    assert first.target_items == task.target_items
    assert task.head(None) is task
    assert len(task.head(0)) == 0  # none asked for: none, not every user


def test_train_view_holds_train_users_only(protocol: Protocol) -> None:
    view = protocol.train_view(BOOKS_TO_MOVIES)
    assert view.users == ("tr1", "tr2", "tr3")
    assert set(view.histories) == {"tr1", "tr2", "tr3"}
    # counts per movie in items.jsonl order m5 m0 m1 m2 m3 m4: tr1 m0 m1 m1, tr2 m1 m2
    assert view.popularity("movies").tolist() == [0, 1, 3, 1, 0, 0]
    assert view.matrix("books").shape == (3, 4)
    assert view.valid.group == "valid" and view.valid.users == ("va1",)
    assert not any(isinstance(v, Dataset) for v in vars(view).values())
    with pytest.raises(TypeError):
        view.histories["te1"] = {"movies": ("m4",)}  # type: ignore[index]
    with pytest.raises(TypeError):  # nor one user's history: a fit cannot rewrite the dataset's
        view.histories["tr1"]["movies"] = ("m4",)  # type: ignore[index]


def test_history_matrix_ignores_other_domains_and_repeats(protocol: Protocol) -> None:
    view = protocol.train_view(BOOKS_TO_MOVIES)
    m = view.history_matrix([("b1", "b1", "m0"), ()], "books")
    assert m.toarray().tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    counts = view.history_matrix([("b1", "b1")], "books", binary=False)
    assert counts.toarray().tolist() == [[0, 2, 0, 0]]


def test_directions_and_errors(protocol: Protocol) -> None:
    assert [str(d) for d in protocol.directions()] == ["books->movies", "movies->books"]
    assert Direction.parse(" books -> movies ") == BOOKS_TO_MOVIES
    for bad in ("books", "books->books", "->movies", "a->b->c"):
        with pytest.raises(XDRetrieveError):
            Direction.parse(bad)
    with pytest.raises(NotFoundError, match="unknown domain 'music'"):
        protocol.task(Direction("books", "music"))


def test_a_direction_is_checked_on_both_sides(protocol: Protocol) -> None:
    """A pair given as a tuple (not parsed from text) is checked too: an unknown source domain
    is named, with the domains there are, not an empty task; one domain both ways is refused,
    not scored on its own history."""
    with pytest.raises(NotFoundError, match="unknown domain 'music'; this dataset has: books, "
                                            "movies"):
        protocol.task(Direction("music", "movies"))
    with pytest.raises(XDRetrieveError, match="source and target must differ"):
        protocol.task(Direction("books", "books"))


def test_truth_counts_an_item_seen_twice_once() -> None:
    """A test user who watched a film twice has it once in the truth: recall over a truth with
    copies would count the one hit twice."""
    users = dict(USERS)
    users["te1"] = ("test", [("b1", 0), ("m4", 1), ("m0", 2), ("m4", 3)])
    task = Protocol(make_dataset(users)).task(BOOKS_TO_MOVIES)
    assert [[task.target_items[i] for i in t] for t in task.truth] == [["m5", "m3"],
                                                                      ["m0", "m4"]]


def test_users_digest_is_of_the_set_of_users() -> None:
    """A model records its train users' digest; the same users listed in another order (a
    users.csv sorted differently) are the same split, not 'trained on another split'."""
    assert users_digest(("tr2", "tr1", "tr3")) == users_digest(("tr1", "tr2", "tr3"))
    assert users_digest(("tr1", "tr2")) != users_digest(("tr1", "tr3"))


def test_a_dataset_of_one_domain_is_refused_by_name_before_any_work(tmp_path: Path) -> None:
    """One domain has no direction: evaluate and finetune say so, instead of an empty report
    (evaluate) or a complaint about valid users (finetune)."""
    from xdretrieve.train.finetune import finetune

    books = make_dataset()
    books = Dataset({i: it for i, it in books.items.items() if it.domain == "books"},
                    [x for x in books.interactions if x.domain == "books"], books.splits,
                    name="hand-made")
    message = r"dataset 'hand-made' has one domain \(books\): cross-domain .* two domains"
    with pytest.raises(XDRetrieveError, match=message):
        Protocol(books).directions()
    with pytest.raises(XDRetrieveError, match=message):
        evaluate(books, methods=["popularity"])
    with pytest.raises(XDRetrieveError, match=message):
        finetune(books, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_random_split_without_users_csv_is_seeded_and_takes_both_domain_users() -> None:
    # names out of alphabetical order, so that data order and sorted order differ
    users = {f"u{i * 7 % 40:02d}": ("train", [(f"b{i % 4}", 0), (f"m{i % 5}", 1)])
             for i in range(40)}
    users |= {f"s{i}": ("train", [(f"b{i % 4}", 0)]) for i in range(10)}  # books only
    ds = make_dataset(users, with_splits=False)
    split = Split.of(ds, seed=3)
    assert not split.from_file
    assert len(split.test) == 4  # 10% of the 40 users active in both domains
    assert len(split.valid) == 2  # 5% of them, among the others
    assert all(u.startswith("u") for u in split.test + split.valid)
    assert not set(split.valid) & set(split.test)
    assert set(split.train) == set(ds.histories) - set(split.test) - set(split.valid)
    assert Split.of(ds, seed=3) == split
    assert any(Split.of(ds, seed=s).test != split.test for s in range(4, 10))
    for group in (split.test, split.valid):
        assert list(group) == [u for u in ds.histories if u in group]  # data order
    # every command draws the same split: the protocol's default seed, whatever seeds the methods
    assert Protocol(ds).split == Split.of(ds) == Split.of(ds, seed=SPLIT_SEED)


def test_a_few_users_without_users_csv_still_give_one_test_user() -> None:
    """10% of 4 users rounds to none: the split keeps one, so that `evaluate` has a user; and
    one valid user, so that finetune has one to select its model on."""
    users = {f"u{i}": ("train", [(f"b{i}", 0), (f"m{i}", 1)]) for i in range(4)}
    split = Split.of(make_dataset(users, with_splits=False))
    assert len(split.test) == 1 and len(split.valid) == 1 and len(split.train) == 2
    # two such users: one tests, the other trains; none is left for valid (never all of them)
    two = {u: v for u, v in users.items() if u in ("u0", "u1")}
    split = Split.of(make_dataset(two, with_splits=False))
    assert len(split.test) == 1 and split.valid == () and len(split.train) == 1


def test_split_sizes_round_to_the_nearest_user() -> None:
    """10% test and 5% valid of the users active in two domains, each rounded to the nearest
    user (not down): 16 such users give 2 test and 1 valid, 100 give 10 and 5 (5% of all 100,
    not of the 90 left after the test draw)."""
    for n, sizes in ((16, (2, 1)), (100, (10, 5))):
        users = {f"u{i:03d}": ("train", [(f"b{i % 4}", 0), (f"m{i % 5}", 1)]) for i in range(n)}
        split = Split.of(make_dataset(users, with_splits=False))
        assert (len(split.test), len(split.valid)) == sizes, n


def test_the_split_does_not_depend_on_the_order_of_the_rows() -> None:
    """The same users and interactions in another row order (a file re-exported sorted by item,
    a users.csv sorted by split) are drawn the same test and valid users: a model's recorded
    train users stay the evaluation's train users."""
    users = {f"u{i:02d}": ("train", [(f"b{i % 4}", 0), (f"m{i % 5}", 1)]) for i in range(40)}
    ds = make_dataset(users, with_splits=False)
    moved = Dataset(ds.items, ds.interactions[::-1], None, name="hand-made")
    assert list(moved.histories) != list(ds.histories)  # another order of first interaction
    split, other = Split.of(ds), Split.of(moved)
    assert (set(other.test), set(other.valid)) == (set(split.test), set(split.valid))
    # a users.csv without valid users: the ones drawn from its train users, in any row order
    listed = {u: ("train" if i % 5 else "test", h) for i, (u, (_, h)) in enumerate(users.items())}
    ds = make_dataset(listed)
    moved = Dataset(ds.items, ds.interactions, dict(reversed(ds.splits.items())), name="x")
    split, other = Split.of(ds), Split.of(moved)
    assert split.valid and set(other.valid) == set(split.valid)


def test_users_that_users_csv_leaves_out_are_not_used_and_said_so(
        caplog: pytest.LogCaptureFixture) -> None:
    ds = make_dataset()
    splits = {u: s for u, s in ds.splits.items() if u != "tr2"}
    split = Split.of(Dataset(ds.items, ds.interactions, splits))
    assert "tr2" not in split.train + split.valid + split.test
    assert "1 user(s) with interactions are not in users.csv; they are not used" in caplog.text


def test_a_users_csv_without_valid_users_gets_them_from_its_train_users() -> None:
    users = {f"u{i:02d}": ("train" if i % 5 else "test", [(f"b{i % 4}", 0), (f"m{i % 5}", 1)])
             for i in range(60)}
    users |= {f"s{i}": ("train", [(f"b{i % 4}", 0)]) for i in range(10)}  # books only
    ds = make_dataset(users)
    split = Split.of(ds)
    assert split.from_file and split.valid_drawn
    assert split.test == tuple(u for u, (s, _) in users.items() if s == "test")  # as listed
    assert len(split.valid) == 2  # 5% of the 48 train users active in both domains
    assert all(users[u][0] == "train" and u.startswith("u") for u in split.valid)
    assert set(split.train) | set(split.valid) == {u for u, (s, _) in users.items()
                                                   if s == "train"}
    assert not set(split.train) & set(split.valid) and Split.of(ds) == split


# -- leaks ---------------------------------------------------------------------------------------

class Recorder(Method):
    """Ranks by nothing; remembers every item id its fit could reach."""

    name = "recorder"

    def fit(self, view: TrainView) -> None:
        self.seen = {i for h in view.histories.values() for ids in h.values() for i in ids}
        self.n = len(view.target_items)

    def rank(self, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
        return np.tile(np.arange(self.n), (len(queries), 1))


class LeakyPopularity(Method):
    """Counts target interactions of *all* users, read from the raw dataset: a leak."""

    name = "leaky"

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def fit(self, view: TrainView) -> None:
        index = view.item_index(view.target)
        counts = np.zeros(len(index))
        for x in self.dataset.interactions:
            if x.domain == view.target:
                counts[index[x.item_id]] += 1
        self.ranking = stable_rank(counts[None, :])[0]

    def rank(self, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
        return np.tile(self.ranking, (len(queries), 1))


class LeakyOneItem(Recorder):
    """Ranks in file order, but swaps to the front the item of the first test user's held-out
    interaction, read from the raw dataset: a leak that moves one item, not the whole ranking."""

    name = "leaky-one"

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def fit(self, view: TrainView) -> None:
        super().fit(view)
        held = next(x.item_id for x in self.dataset.interactions if x.domain == view.target
                    and self.dataset.splits[x.user_id] == "test")  # type: ignore[index]
        self.front = view.item_index(view.target)[held]

    def rank(self, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
        ranking = np.arange(self.n)
        ranking[[0, self.front]] = ranking[[self.front, 0]]
        return np.tile(ranking, (len(queries), 1))


def test_a_fit_cannot_reach_test_users_target_items(protocol: Protocol) -> None:
    method = Recorder()
    method.fit(protocol.train_view(BOOKS_TO_MOVIES))
    assert method.seen == {"b0", "b1", "b2", "m0", "m1", "m2"}  # not m3 m4 m5, nor valid's


def test_perturbation_rewrites_only_test_users_target_interactions() -> None:
    ds = make_dataset()
    moved = perturb_test_targets(ds, BOOKS_TO_MOVIES, seed=0)
    for user in ds.histories:
        for domain in ds.domains:
            before, after = ds.history(user, domain), moved.history(user, domain)
            if ds.splits[user] == "test" and domain == "movies":  # type: ignore[index]
                assert len(after) == len(before) and not set(after) & set(before)
            else:
                assert after == before


def test_the_rewrite_of_test_users_targets_is_the_same_for_a_seed() -> None:
    """The leak check's rewrite is seeded: run again, it rewrites to the same items (a check
    that passed once passes again)."""
    ds = make_dataset()
    runs = [perturb_test_targets(ds, BOOKS_TO_MOVIES, seed=3).interactions for _ in range(3)]
    assert runs[0] == runs[1] == runs[2] != ds.interactions


def test_the_leak_check_ranks_only_the_first_test_users_it_is_given() -> None:
    """max_users: the check ranks (and counts) the first test users only."""
    with pytest.raises(LeakError, match="the rankings of 1 of 1 test users changed"):
        check_no_leak(LeakyPopularity, make_dataset(), BOOKS_TO_MOVIES, max_users=1)


def test_the_rewrite_leaves_a_test_user_s_third_domain_as_it_was() -> None:
    """Only the direction's target is rewritten: a test user's interactions in a third domain
    stay (else they pointed at target items labelled as that domain's)."""
    ds = make_dataset()
    ds = Dataset({**ds.items, "x0": Item("x0", "music", "title x0")},
                 [*ds.interactions, Interaction("te1", "x0", "music", 9.0)], ds.splits)
    moved = perturb_test_targets(ds, BOOKS_TO_MOVIES, seed=0)
    assert moved.history("te1", "music") == ("x0",)
    assert moved.history("te1", "movies") != ds.history("te1", "movies")


def test_honest_method_passes_the_leak_check() -> None:
    check_no_leak(lambda ds: Popularity(), make_dataset(), BOOKS_TO_MOVIES)


def test_the_leak_check_closes_each_method_it_fits() -> None:
    """Both runs' methods are closed (a retriever-backed one holds a store open)."""
    closed: list[str] = []

    class Closing(Popularity):
        def close(self) -> None:
            closed.append(self.name)

    check_no_leak(lambda ds: Closing(), make_dataset(), BOOKS_TO_MOVIES)
    assert closed == ["popularity", "popularity"]


def test_leaky_method_is_caught() -> None:
    with pytest.raises(LeakError, match="leaky"):
        check_no_leak(LeakyPopularity, make_dataset(), BOOKS_TO_MOVIES)


def test_a_leak_that_moves_a_single_item_is_caught() -> None:
    """A ranking that changes in a few places has changed: the check compares every position,
    not only whether all of them moved."""
    with pytest.raises(LeakError, match="leaky-one"):
        check_no_leak(LeakyOneItem, make_dataset(), BOOKS_TO_MOVIES)


def test_the_leak_check_refuses_a_direction_without_test_users() -> None:
    """Checking no user would pass whatever the method reads."""
    with pytest.raises(XDRetrieveError, match="no test users in books->music: nothing to check"):
        check_no_leak(lambda ds: Popularity(), with_music(make_dataset()),
                      Direction("books", "music"))


# -- the run end to end: runner, report, command line -------------------------------------------

def test_runner_scores_every_method_on_the_same_users() -> None:
    results = evaluate(make_dataset(), methods=["popularity", Recorder()], progress=False)
    assert results.directions == ["books->movies", "movies->books"]
    assert results.methods == ["popularity", "recorder"]
    assert results.n_users == {"books->movies": 2, "movies->books": 2}
    # popularity over m5 m0 m1 m2 m3 m4 with counts 0 1 3 1 0 0 ranks m1 m0 m2 m5 m3 m4:
    # te2 (truth m5, m3) first hit at rank 4, te1 (truth m4) at rank 6
    pop = results.get("books->movies", "popularity")
    assert pop.metrics["mrr"] == pytest.approx((1 / 4 + 1 / 6) / 2)
    assert pop.per_user["mrr"].tolist() == pytest.approx([1 / 4, 1 / 6])
    assert pop.fit_seconds >= 0 and pop.rank_seconds >= 0
    # the recorder ranks in file order m5 m0 ...: te2 hits at rank 1
    assert results.metric("books->movies", "recorder", "mrr") == pytest.approx((1 + 1 / 6) / 2)
    with pytest.raises(NotFoundError, match="no result for method 'nope' on books->movies"):
        results.get("books->movies", "nope")  # an error that says so, not None


class Timed(Recorder):
    """Takes 5 s to fit and 2 s to rank, on the fake clock ``clock``."""

    name = "timed"

    def __init__(self, clock: list[float]):
        self.clock = clock

    def fit(self, view: TrainView) -> None:
        super().fit(view)
        self.clock[0] += 5.0

    def rank(self, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
        self.clock[0] += 2.0
        return super().rank(queries)


def test_fit_and_rank_are_timed_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranking time is the ranking's alone: a method slow to fit is not reported slow to
    answer (the fit's seconds counted again in the rank column)."""
    import types

    from xdretrieve.evaluate import runner

    clock = [100.0]
    monkeypatch.setattr(runner, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    results = evaluate(make_dataset(), methods=[Timed(clock)], progress=False)
    assert [(r.fit_seconds, r.rank_seconds) for r in results.rows] == [(5.0, 2.0)] * 2
    assert results.runtime_seconds == 14.0


def test_scoring_in_batches_scores_each_user_against_their_own_truth(protocol: Protocol) -> None:
    """Batches of one user give the figures of one batch (the second batch's user against their
    own truth, not the first batch's), and progress hears of each user once."""
    task = protocol.task(BOOKS_TO_MOVIES)
    method = Popularity()
    method.fit(protocol.train_view(BOOKS_TO_MOVIES))
    done: list[int] = []
    whole = score_task(method.rank, task, progress=done.append)
    by_one = score_task(method.rank, task, batch_size=1, progress=done.append)
    assert done == [2, 1, 1]
    assert whole["mrr"].tolist() == pytest.approx([1 / 4, 1 / 6])
    assert {k: v.tolist() for k, v in by_one.items()} == {k: v.tolist() for k, v in whole.items()}


def test_a_ranking_of_fewer_than_every_target_item_is_refused() -> None:
    """A method answering its top items only would be scored as if the rest were irrelevant
    (mrr and recall@50 silently low): the protocol ranks every target item."""

    class TopThree(Recorder):
        name = "top-three"

        def rank(self, queries: Sequence[tuple[str, ...]]) -> np.ndarray:
            return super().rank(queries)[:, :3]

    with pytest.raises(ValueError, match=r"shape \(2, 3\), expected \(2, 6\): a full ranking"):
        evaluate(make_dataset(), methods=[TopThree()], progress=False)


def test_runner_max_users_and_directions() -> None:
    results = evaluate(make_dataset(), directions=["movies->books"], methods=["popularity"],
                       max_users=1, progress=False)
    assert results.n_users == {"movies->books": 1}
    assert results.config["max_users"] == 1


def test_runner_rejects_unknown_and_repeated_methods() -> None:
    with pytest.raises(XDRetrieveError, match="known methods: popularity, itemknn"):
        evaluate(make_dataset(), methods=["nope"], progress=False)

    class Checked(Recorder):
        def check(self, view: TrainView) -> None:
            raise AssertionError("checked before the names were")

    # a misspelt name is refused before any method is checked (a check may load a model)
    with pytest.raises(XDRetrieveError, match="unknown method 'nope'"):
        evaluate(make_dataset(), methods=[Checked(), "nope"], progress=False)
    with pytest.raises(XDRetrieveError, match="given twice"):
        evaluate(make_dataset(), methods=["popularity", "popularity"], progress=False)


def test_runner_keeps_the_given_order_of_directions_and_methods_once_each() -> None:
    """Rows, tables and the plot follow the order asked for; a direction asked twice (as text
    and as a pair) is run once."""
    results = evaluate(make_dataset(), directions=["movies->books", "books->movies",
                                                   ("movies", "books")],
                       methods=[Recorder(), "popularity"], progress=False)
    assert results.directions == ["movies->books", "books->movies"]
    assert results.config["directions"] == results.directions
    assert results.methods == ["recorder", "popularity"]
    assert [(r.direction, r.method) for r in results.rows] == [
        ("movies->books", "recorder"), ("movies->books", "popularity"),
        ("books->movies", "recorder"), ("books->movies", "popularity")]


def test_the_report_says_which_split_and_which_users() -> None:
    """The report's protocol line names the split (users.csv, or the seeded random one) and says
    when only the first test users of each direction were evaluated."""
    results = evaluate(make_dataset(), methods=["popularity"], max_users=1, progress=False)
    assert results.config["split"] == "users.csv"
    assert "Split: users.csv; seed 0; first 1 test users per direction." in to_markdown(results)
    results = evaluate(make_dataset(with_splits=False), methods=["popularity"], progress=False)
    assert results.config["split"] == f"seeded random {SPLIT_SEED}"
    markdown = to_markdown(results)
    assert f"Split: seeded random {SPLIT_SEED}; seed 0." in markdown
    assert "test users per direction" not in markdown


def test_a_direction_without_test_users_is_skipped_and_reported_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A third domain no test user has: its directions are warned about and have no rows; the
    report (json, markdown, plot) says so instead of failing on the missing rows."""
    results = evaluate(with_music(make_dataset()), directions=["books->music", "books->movies"],
                       methods=["popularity", Recorder()], progress=False)
    assert results.n_users == {"books->music": 0, "books->movies": 2}
    assert {r.direction for r in results.rows} == {"books->movies"}
    assert "books->music: no test user has both books and music interactions; skipped" in (
        caplog.text)
    paths = write_report(results, tmp_path / "out")
    doc = json.loads(paths["json"].read_text())
    assert doc["directions"][0] == {"direction": "books->music", "n_users": 0, "methods": []}
    assert ("## books->music (0 test users)\n\nNo test user has interactions in both domains."
            in paths["markdown"].read_text())
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_methods_numpy_settings_are_written_as_plain_json(tmp_path: Path) -> None:
    """A method's config may hold numpy scalars (a grid's choice): results.json and the report's
    settings get plain numbers, and a retriever-backed method's config is reported as given."""
    from xdretrieve.evaluate.methods import RetrieverMethod

    method = RetrieverMethod("numpy-config", lambda history, domain, limit: [],
                             config={"alpha": np.float32(0.5), "ks": (np.int64(10), 50)})
    results = evaluate(make_dataset(), directions=["books->movies"], methods=[method],
                       progress=False)
    paths = write_report(results, tmp_path / "out")
    doc = json.loads(paths["json"].read_text())
    assert doc["directions"][0]["methods"][0]["config"] == {"alpha": 0.5, "ks": [10, 50]}
    assert '- **numpy-config**: `{"alpha": 0.5, "ks": [10, 50]}`' in paths[
        "markdown"].read_text()


def test_report_files(tmp_path: Path) -> None:
    results = evaluate(make_dataset(), methods=["popularity", Recorder()], progress=False)
    paths = write_report(results, tmp_path / "runs" / "out")  # folders made as needed
    doc = json.loads(paths["json"].read_text())
    assert doc["dataset"] == "hand-made" and doc["runtime_seconds"] >= 0
    assert doc["version"] == __version__  # the version that computed the figures
    assert [d["direction"] for d in doc["directions"]] == ["books->movies", "movies->books"]
    first = doc["directions"][0]
    assert first["n_users"] == 2
    assert [m["method"] for m in first["methods"]] == ["popularity", "recorder"]
    assert set(first["methods"][0]["metrics"]) == {"recall@10", "ndcg@10", "hr@10", "recall@50",
                                                   "ndcg@50", "hr@50", "mrr"}
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = paths["markdown"].read_text()
    assert "## books->movies (2 test users)" in markdown and "metrics.png" in markdown
    assert f"xdretrieve {__version__}, started {results.started}" in markdown
    # a method without settings to show gets no section for them
    bare = evaluate(make_dataset(), methods=[Recorder()], progress=False)
    assert "## Method settings" not in to_markdown(bare)
    assert to_markdown(results, None).count("| popularity |") == 2
    table = format_table(results).splitlines()
    assert table[0].split()[:4] == ["direction", "method", "users", "recall@10"]
    assert len(table) == 2 + 4


def test_results_json_keeps_exact_figures_the_start_in_utc_and_the_settings(
        tmp_path: Path) -> None:
    """results.json is for machines: each mean as computed (not rounded as the tables are), the
    start time with its UTC offset, and the batch size the run used."""
    from datetime import datetime, timedelta

    results = evaluate(make_dataset(), methods=["popularity"], progress=False, batch_size=7)
    doc = json.loads(write_report(results, tmp_path / "out")["json"].read_text())
    mrr = doc["directions"][0]["methods"][0]["metrics"]["mrr"]
    assert mrr == results.metric("books->movies", "popularity", "mrr") == (1 / 4 + 1 / 6) / 2
    assert datetime.fromisoformat(doc["started"]).utcoffset() == timedelta(0)
    assert doc["config"]["batch_size"] == 7


class Named(Recorder):
    """The recorder, reported as the project's own method."""

    name = "xdretrieve"


def test_the_report_compares_xdretrieve_with_the_best_other_method(tmp_path: Path) -> None:
    """results.json and report.md both carry the ratio against the best other method, per
    direction and compared metric; every Markdown table has as many cells in each line (a short
    delimiter row and the table is not a table)."""
    results = evaluate(make_dataset(), methods=["popularity", Named()], progress=False)
    paths = write_report(results, tmp_path / "out")
    doc = json.loads(paths["json"].read_text())
    assert [(c["direction"], c["metric"], c["rival"]) for c in doc["against_best"]] == [
        (d, m, "popularity") for d in ("books->movies", "movies->books")
        for m in ("ndcg@10", "recall@10")]
    markdown = paths["markdown"].read_text()
    assert "## Against the best other method" in markdown
    assert "| books->movies | ndcg@10 | xdretrieve | popularity |" in markdown
    tables: list[list[str]] = [[]]
    for line in markdown.splitlines():
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables[-1]:
            tables.append([])
    tables = [t for t in tables if t]
    assert len(tables) == 3  # two directions, the comparison
    for table in tables:
        assert len({line.count("|") for line in table}) == 1, table


def test_the_terminal_table_is_aligned_with_four_decimals() -> None:
    """Each value starts under its header (the headers count in the column widths), and the
    figures have the four decimals the reference values are given to."""
    results = evaluate(make_dataset(), methods=["popularity"], progress=False)
    header, rule, *rows = format_table(results).splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", rule)]
    assert [header.index(h) for h in ("direction", "method", "users", "recall@10")] == starts[:4]
    for row in rows:
        assert [m.start() for m in re.finditer(r"\S+", row)] == starts
    mrr = results.metric("books->movies", "popularity", "mrr")
    assert rows[0].split()[2 + list(METRICS).index("mrr") + 1] == f"{mrr:.4f}" == "0.2083"


def test_the_plot_has_one_panel_per_metric_with_each_methods_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """metrics.png: a panel per plotted metric, titled so, whose bars are that metric's values
    (method by method, direction by direction), not the first panel's again."""
    from matplotlib.figure import Figure

    from xdretrieve.evaluate.report import PLOTTED, plot

    drawn: list[Figure] = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig),
                                                                  save(fig, *a, **k)))
    results = evaluate(make_dataset(), methods=["popularity", Recorder()], progress=False)
    plot(results, tmp_path / "metrics.png")
    panels = [ax for ax in drawn[0].axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(PLOTTED)
    assert results.metric("books->movies", "popularity", "ndcg@10") != results.metric(
        "books->movies", "popularity", "recall@10")
    for ax, metric in zip(panels, PLOTTED, strict=True):
        heights = [round(p.get_height(), 9) for p in ax.patches]
        assert heights == [round(results.metric(d, m, metric), 9)
                           for m in results.methods for d in results.directions], metric


def test_without_the_eval_extra_the_report_has_the_figures_and_no_plot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Before, the whole evaluation ran, then ended in matplotlib's ImportError: no report.md;
    and a missing `implicit` stopped it only once emcdr's turn came."""
    results = evaluate(make_dataset(), methods=["popularity"], progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # an import of it fails
    paths = write_report(results, tmp_path / "out")
    assert set(paths) == {"json", "markdown"} and not (tmp_path / "out" / "metrics.png").exists()
    markdown = paths["markdown"].read_text()
    assert "| popularity |" in markdown and "metrics.png" not in markdown
    assert "not drawn (the plot needs matplotlib: pip install" in caplog.text
    monkeypatch.setitem(sys.modules, "implicit.cpu.als", None)
    result = CliRunner().invoke(evaluate_command, [
        "--data", str(write_dataset_dir(tmp_path / "data")), "--out", str(tmp_path / "ev"), "-q"])
    assert result.exit_code == 1 and "emcdr baseline needs the 'implicit' library" in result.output
    assert not (tmp_path / "ev" / "results.json").exists()
    recorder = Recorder()  # the library says it as early: before any method's work
    with pytest.raises(XDRetrieveError, match="emcdr baseline needs the 'implicit' library"):
        evaluate(make_dataset(), methods=[recorder, "emcdr"], progress=False)
    assert not hasattr(recorder, "seen")  # never fitted


def write_dataset_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "items.jsonl", "w") as f:
        for i in ITEM_ORDER:
            f.write(json.dumps({"item_id": i, "domain": "books" if i[0] == "b" else "movies",
                                "title": f"title {i}"}) + "\n")
    rows = ["user_id,item_id,domain,position"] + [
        f"{u},{i},{'books' if i[0] == 'b' else 'movies'},{p}"
        for u, (_, h) in USERS.items() for i, p in h]
    (directory / "interactions.csv").write_text("\n".join(rows) + "\n")
    (directory / "users.csv").write_text(
        "\n".join(["user_id,split"] + [f"{u},{s}" for u, (s, _) in USERS.items()]) + "\n")
    return directory


def test_cli_help() -> None:
    result = CliRunner().invoke(evaluate_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--data", "--direction", "--method", "--max-users", "--out", "--seed"):
        assert option in result.output


def test_cli_run_writes_files_and_prints_the_table(tmp_path: Path) -> None:
    data = write_dataset_dir(tmp_path / "data")
    result = CliRunner().invoke(evaluate_command, [
        "--data", str(data), "--direction", "books->movies", "--method", "popularity",
        "--max-users", "1", "--seed", "3", "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert "books->movies  popularity  1" in result.output
    assert "movies->books" not in result.output  # the one direction asked for
    assert "test users: books->movies: 1;" in result.output
    assert f"wrote {tmp_path / 'out' / 'results.json'}, " in result.output
    config = json.loads((tmp_path / "out" / "results.json").read_text())["config"]
    assert (config["seed"], config["max_users"]) == (3, 1)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.json", "report.md",
                                                              "metrics.png"}


def test_cli_shows_progress_bars_unless_quiet(tmp_path: Path) -> None:
    """Progress bars go to stderr; -q is quiet there, and the table is printed either way."""
    args = ["--data", str(write_dataset_dir(tmp_path / "data")), "--direction", "books->movies",
            "--method", "popularity", "--out", str(tmp_path / "out")]
    loud = CliRunner().invoke(evaluate_command, args)
    quiet = CliRunner().invoke(evaluate_command, [*args, "-q"])
    assert loud.exit_code == 0 and quiet.exit_code == 0, loud.output + quiet.output
    assert "books->movies popularity ranking" in loud.stderr and quiet.stderr == ""
    assert all("books->movies  popularity  2" in r.stdout for r in (loud, quiet))


def test_cli_errors(tmp_path: Path) -> None:
    data = write_dataset_dir(tmp_path / "data")
    result = CliRunner().invoke(evaluate_command, ["--data", str(data), "--method", "magic"])
    assert result.exit_code == 2
    assert "unknown method 'magic'" in result.output and "popularity" in result.output
    result = CliRunner().invoke(evaluate_command, ["--data", str(data), "--direction", "books"])
    assert result.exit_code == 2 and "SOURCE->TARGET" in result.output
    result = CliRunner().invoke(evaluate_command, ["--data", str(data), "--direction",
                                                   "books->music", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "unknown domain 'music'" in result.output
    # a split without test users: one error, not a warning per direction and an empty table
    users = (data / "users.csv").read_text()
    (data / "users.csv").write_text(users.replace(",test", ",train"))
    result = CliRunner().invoke(evaluate_command, ["--data", str(data), "--method", "popularity",
                                                   "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "users.* names no test user: nothing to evaluate" in (
        result.output)
    assert not (tmp_path / "o" / "results.json").exists()
