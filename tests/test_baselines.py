"""The baselines on a dataset whose right answer is known, one shared contract for every method,
model selection on valid users, the retriever adapter and the registry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from xdretrieve.data import Dataset, Interaction, Item
from xdretrieve.errors import XDRetrieveError
from xdretrieve.evaluate.emcdr import EMCDR, EMCDRConfig
from xdretrieve.evaluate.itemknn import ItemKNN
from xdretrieve.evaluate.leakcheck import check_no_leak
from xdretrieve.evaluate.methods import RetrieverMethod, stable_rank, stable_top
from xdretrieve.evaluate.popularity import Popularity
from xdretrieve.evaluate.protocol import Direction, Protocol, TrainView
from xdretrieve.evaluate.registry import (
    BASELINES,
    METHODS,
    make_method,
    register_method,
)
from xdretrieve.evaluate.runner import evaluate
from xdretrieve.evaluate.selection import choose, score_task
from xdretrieve.evaluate.userknn import UserKNN

THEMES = 8
B2M = Direction("books", "movies")


def paired_dataset() -> Dataset:
    """Reading book-t means watching movie-t. Per theme t: user t-0 is a test user, t-1 a valid
    user, t-2..t-4 train users; t-2 and t-3 also watched ``movie-hit``, which thus is by far the
    most popular movie (16 train users against 3 per themed movie) and first in items.jsonl, so
    only a method that reads the query can put movie-t first."""
    items = {"movie-hit": Item("movie-hit", "movies", "a blockbuster")}
    for t in range(THEMES):
        items[f"book-{t}"] = Item(f"book-{t}", "books", f"book {t}")
        items[f"movie-{t}"] = Item(f"movie-{t}", "movies", f"movie {t}")
    events, splits = [], {}
    for t in range(THEMES):
        for k in range(5):
            user = f"u{t}-{k}"
            splits[user] = {0: "test", 1: "valid"}.get(k, "train")
            events += [Interaction(user, f"book-{t}", "books", 0.0),
                       Interaction(user, f"movie-{t}", "movies", 1.0)]
            if k in (2, 3):
                events.append(Interaction(user, "movie-hit", "movies", 2.0))
    return Dataset(items, events, splits, name="paired")


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return paired_dataset()


@pytest.fixture(scope="module")
def view(dataset: Dataset) -> TrainView:
    return Protocol(dataset).train_view(B2M)


def with_a_fan(dataset: Dataset) -> Dataset:
    """``dataset`` and a train user who watched the last movie twenty times and read nothing: by
    interactions it is then the most popular movie (23 against movie-hit's 16), by users not (4);
    and popularity order is no longer items.jsonl order."""
    fan = [Interaction("fan", f"movie-{THEMES - 1}", "movies", float(k)) for k in range(20)]
    return Dataset(dataset.items, [*dataset.interactions, *fan],
                   {**dataset.splits, "fan": "train"})  # type: ignore[dict-item]


def view_of(users: Sequence[tuple[str, str, Sequence[str], Sequence[str]]]) -> TrainView:
    """The books->movies train view of users given as (id, split, books, movies); items.jsonl
    order is the order of first mention."""
    items: dict[str, Item] = {}
    events = []
    for user, _, books, movies in users:
        for domain, ids in (("books", books), ("movies", movies)):
            for i in ids:
                items.setdefault(i, Item(i, domain, i))
                events.append(Interaction(user, i, domain, float(len(events))))
    return Protocol(Dataset(items, events, {u: s for u, s, _, _ in users})).train_view(B2M)


def target_ids(view: TrainView, ranking: np.ndarray) -> list[str]:
    return [view.target_items[i] for i in ranking]


def queries(view: TrainView) -> list[tuple[str, ...]]:
    return [(f"book-{t}",) for t in range(THEMES)]


# -- the methods on the paired data ----------------------------------------------------------------

def test_popularity_counts_train_users_and_keeps_file_order_on_ties(view: TrainView) -> None:
    method = Popularity()
    method.fit(view)
    # movie-hit: 16 train users; movie-0..7: 3 each (tie -> items.jsonl order)
    assert method.counts.tolist() == [16.0] + [3.0] * THEMES  # type: ignore[union-attr]
    rankings = method.rank(queries(view))
    assert target_ids(view, rankings[0]) == ["movie-hit", *(f"movie-{t}" for t in range(THEMES))]
    assert (rankings == rankings[0]).all()  # the same for everybody


def test_popularity_counts_each_interaction_not_each_user(dataset: Dataset) -> None:
    """EVALUATION.md's popularity is the number of train-user interactions, a user's repeats
    included: counted once per user, the fan's movie (4 users) would stay behind movie-hit."""
    view = Protocol(with_a_fan(dataset)).train_view(B2M)
    method = Popularity()
    method.fit(view)
    assert method.counts.tolist() == [16.0] + [3.0] * (THEMES - 1) + [23.0]  # type: ignore
    assert target_ids(view, method.rank([("book-0",)])[0])[:2] == [f"movie-{THEMES - 1}",
                                                                  "movie-hit"]


@pytest.mark.parametrize("make", [ItemKNN, UserKNN, lambda: EMCDR(EMCDRConfig(factors=16)),
                                  lambda: EMCDR(EMCDRConfig(factors=16, mapping="linear"))],
                         ids=["itemknn", "userknn", "emcdr-mlp", "emcdr-linear"])
def test_personalised_methods_find_the_paired_item(view: TrainView, make) -> None:
    method = make()
    method.fit(view)
    rankings = method.rank(queries(view))
    for t in range(THEMES):
        top = target_ids(view, rankings[t])
        assert top[0] == f"movie-{t}", (t, top[:3])


def test_emcdr_linear_mapping_fits_an_intercept() -> None:
    """The source -> target factor map is affine, as EMCDR's linear mapping is: factor spaces
    of two ALS models need not share an origin. Its ridge weight shrinks the map: a large one
    maps everything near the origin."""
    from xdretrieve.evaluate.emcdr import _fit_linear

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    w, c = rng.normal(size=(3, 2)), np.array([3.0, -2.0])
    apply = _fit_linear(x, x @ w + c, ridge=1e-6)
    np.testing.assert_allclose(apply(np.zeros((1, 3), np.float32))[0], c, atol=1e-4)
    np.testing.assert_allclose(apply(x[:5]), x[:5] @ w + c, atol=1e-4)
    shrunk = _fit_linear(x, x @ w + c, ridge=1e6)(x[:5])
    assert np.abs(shrunk).max() < 0.01 * np.abs(x[:5] @ w + c).max()


def test_emcdr_refuses_an_unknown_mapping() -> None:
    """A misspelt mapping is an error, not silently one of the two."""
    with pytest.raises(ValueError, match="unknown mapping 'ridge'; expected mlp or linear"):
        EMCDR(EMCDRConfig(mapping="ridge"))


def test_emcdr_mlp_keeps_its_best_step_on_valid_users() -> None:
    """The mapping returned is the step with the lowest valid error, not the last one: trained
    for more steps (the same draws, so the same first steps), it is never worse on valid users.
    Here the training pairs are noise, so the valid error goes up and down from step to step."""
    from xdretrieve.evaluate.emcdr import _fit_mlp

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 3))
    x_valid, y_valid = rng.normal(size=(50, 4)), rng.normal(size=(50, 3))
    errors = []
    for steps in range(1, 16):
        config = EMCDRConfig(hidden=64, lr=0.05, epochs=steps, patience=100)
        apply = _fit_mlp(x, y, x_valid, y_valid, config, seed=0)
        errors.append(float(((apply(x_valid) - y_valid) ** 2).sum(axis=1).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]


def test_emcdr_mlp_stops_after_patience_steps_without_a_better_valid_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """Training ends once ``patience`` steps in a row bring no better valid error: the steps
    run are the best step's plus patience, not one more (which would take a late improvement
    that the setting says to give up on)."""
    import re
    from dataclasses import replace

    from xdretrieve.evaluate.emcdr import _fit_mlp

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 3))
    x_valid, y_valid = rng.normal(size=(50, 4)), rng.normal(size=(50, 3))
    config = EMCDRConfig(hidden=64, lr=0.05, epochs=300, patience=3)
    with caplog.at_level("INFO", logger="xdretrieve.evaluate.emcdr"):
        final = _fit_mlp(x, y, x_valid, y_valid, config, seed=0)(x_valid)
    steps = int(re.findall(r"emcdr mapping: (\d+) steps", caplog.text)[-1])
    # the best step: the fewest steps (the same draws) after which that mapping is kept
    best = next(s for s in range(1, steps + 1) if np.array_equal(final, _fit_mlp(
        x, y, x_valid, y_valid, replace(config, epochs=s, patience=1000), seed=0)(x_valid)))
    assert steps == best + config.patience < config.epochs


def test_emcdr_mlp_without_valid_users_keeps_its_trained_mapping() -> None:
    """No valid users in a direction (nothing to stop on): the mapping is the one trained for
    every step, not the untrained one it started from."""
    from xdretrieve.evaluate.emcdr import _fit_mlp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4))
    y = np.tanh(x @ rng.normal(size=(4, 3)))
    none = np.zeros((0, 4)), np.zeros((0, 3))

    def error(steps: int) -> float:
        config = EMCDRConfig(hidden=16, lr=0.05, epochs=steps)
        apply = _fit_mlp(x, y, *none, config, seed=0)
        return float(((apply(x) - y) ** 2).sum(axis=1).mean())

    assert error(100) < 0.1 * error(1)


def test_emcdr_mlp_steps_are_torchs_adam_on_its_squared_error() -> None:
    """The NumPy MLP's hand-written gradients and Adam steps are those of torch's autograd and
    ``Adam(weight_decay=...)`` on the same net from the same start (torch's Linear default
    initialisation, drawn in the order _fit_mlp draws it), step for step."""
    import torch

    from xdretrieve.evaluate.emcdr import _fit_mlp

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 3))
    config = EMCDRConfig(hidden=8, lr=0.05, epochs=5, weight_decay=0.1)
    mapped = _fit_mlp(x, y, np.zeros((0, 4)), np.zeros((0, 3)), config, seed=0)(x)
    init = np.random.default_rng(0)
    start = [init.uniform(-1.0, 1.0, size=shape) / np.sqrt(fan_in)
             for fan_in, shape in ((4, (4, 8)), (4, (8,)), (8, (8, 3)), (8, (3,)))]
    params = [torch.tensor(a, requires_grad=True) for a in start]  # float64, as _fit_mlp
    adam = torch.optim.Adam(params, lr=0.05, weight_decay=0.1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def forward() -> torch.Tensor:
        return torch.tanh(xt @ params[0] + params[1]) @ params[2] + params[3]

    for _ in range(config.epochs):
        adam.zero_grad()
        ((forward() - yt) ** 2).sum(dim=1).mean().backward()  # squared error, mean over users
        adam.step()
    np.testing.assert_allclose(mapped, forward().detach().numpy(), rtol=1e-5, atol=1e-6)


def test_emcdr_counts_a_repeated_interaction_once(dataset: Dataset) -> None:
    """Its ALS factors are of binary histories: train users who read their book three times
    give the same scores as when they read it once."""
    again = [Interaction(x.user_id, x.item_id, x.domain, x.order + 10 * k)
             for x in dataset.interactions for k in (1, 2)
             if dataset.splits[x.user_id] == "train"]  # type: ignore[index]
    repeated = Dataset(dataset.items, [*dataset.interactions, *again], dataset.splits)
    scores = []
    for data in (dataset, repeated):
        method = EMCDR(EMCDRConfig(factors=8))
        method.fit(Protocol(data).train_view(B2M))
        scores.append(method.score([(f"book-{t}",) for t in range(THEMES)]))
    np.testing.assert_array_equal(scores[0], scores[1])


def test_emcdr_stops_on_valid_users_whole_target_histories(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The MLP's early stopping compares the mapped valid users with the target factors folded
    in from all their target items, as the train users' are (not a part of them)."""
    from xdretrieve.evaluate import emcdr

    users = [(f"t{t}-{k}", "train", [f"book-{t}"], [f"movie-{t}", f"poster-{t}"])
             for t in range(4) for k in range(3)]
    users += [(f"v{t}", "valid", [f"book-{t}"], [f"movie-{t}", f"poster-{t}"]) for t in range(4)]
    view = view_of(users)
    seen: list[np.ndarray] = []
    fit_mlp = emcdr._fit_mlp
    monkeypatch.setattr(emcdr, "_fit_mlp", lambda x, y, x_valid, y_valid, config, seed:
                        seen.append(y_valid) or fit_mlp(x, y, x_valid, y_valid, config, seed))
    method = EMCDR(EMCDRConfig(factors=8))
    method.fit(view)
    assert view.valid.users == ("v0", "v1", "v2", "v3")
    whole = view.history_matrix([[f"movie-{t}", f"poster-{t}"] for t in range(4)], "movies")
    np.testing.assert_array_equal(seen[0], method._target.fold_in(whole))


def test_emcdr_reports_its_seed() -> None:
    """The report's settings of an emcdr row include the seed of its ALS and MLP draws (a
    method object may be built with another seed than the run's --seed)."""
    config = EMCDR(EMCDRConfig(factors=8), seed=3).config()
    assert config["seed"] == 3 and config["factors"] == 8


def test_emcdr_maps_only_train_users_active_in_both_domains(
        dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """A train user with books only has no target factors to map to: counted as a user whose
    target factors are zero, they would pull every mapped user towards nothing."""
    from xdretrieve.evaluate import emcdr

    readers = [Interaction(f"reader-{k}", f"book-{k % THEMES}", "books", 0.0) for k in range(20)]
    splits = {**dataset.splits, **{x.user_id: "train" for x in readers}}  # type: ignore[arg-type]
    view = Protocol(Dataset(dataset.items, [*dataset.interactions, *readers], splits)
                    ).train_view(B2M)
    assert len(view.users) == 3 * THEMES + 20
    taught: list[int] = []
    fit_linear = emcdr._fit_linear
    monkeypatch.setattr(emcdr, "_fit_linear",
                        lambda x, y, ridge: taught.append(len(x)) or fit_linear(x, y, ridge))
    EMCDR(EMCDRConfig(factors=8, mapping="linear")).fit(view)
    assert taught == [3 * THEMES]


def test_itemknn_similarity_by_hand(view: TrainView) -> None:
    method = ItemKNN(alphas=(0.5,), shrinks=(2.0,))
    method.fit(view)
    # book-0 and movie-hit: 2 common users; n(book-0) = 3, n(movie-hit) = 16
    # sim = 2 / (3 ** 0.5 * 16 ** 0.5 + 2) = 2 / (6.928203 + 2) = 0.224009
    scores = method.score([("book-0",)])[0]
    assert scores[0] == pytest.approx(2 / (np.sqrt(3) * 4 + 2), rel=1e-5)
    # book-0 and movie-0: 3 common users, n = 3 and 3: 3 / (3 + 2) = 0.6; movie-1: never together
    assert scores[1:3].tolist() == pytest.approx([0.6, 0.0], rel=1e-5)
    # asymmetric (alpha 0.75): the source item's count weighs alpha, the target's 1 - alpha
    # (0.5 alone would not tell the two exponents apart)
    method = ItemKNN(alphas=(0.75,), shrinks=(2.0,))
    method.fit(view)
    scores = method.score([("book-0",)])[0]
    assert scores[0] == pytest.approx(2 / (3 ** 0.75 * 16 ** 0.25 + 2), rel=1e-5)


def test_itemknn_counts_each_train_users_most_recent_items_only() -> None:
    """A train user's source items older than their last ``max_history`` distinct ones do not
    pair with their target items."""
    items = {i: Item(i, d, i) for i, d in (("b0", "books"), ("b1", "books"), ("m0", "movies"))}
    events = [Interaction("t", "b0", "books", 0.0), Interaction("t", "b1", "books", 1.0),
              Interaction("t", "m0", "movies", 2.0), Interaction("v", "b0", "books", 0.0),
              Interaction("v", "m0", "movies", 1.0)]
    view = Protocol(Dataset(items, events, {"t": "train", "v": "valid"})).train_view(B2M)
    capped, full = ItemKNN(alphas=(1.0,), shrinks=(0.0,), max_history=1), ItemKNN(
        alphas=(1.0,), shrinks=(0.0,))
    capped.fit(view)
    full.fit(view)
    assert capped.score([("b0",), ("b1",)])[:, 0].tolist() == [0.0, 1.0]
    assert full.score([("b0",), ("b1",)])[:, 0].tolist() == [1.0, 1.0]
    assert capped.config()["max_history"] == 1


def test_userknn_weighs_a_rare_shared_item_above_a_common_one() -> None:
    """Source profiles are idf-weighted: sharing the rare book with a user says more than
    sharing the book most users have. Query {rare, common}: user a has the rare book (and
    another), four users f have only the common one. Unweighted, the f users are nearest
    (cosine 0.71 against 0.5); weighted, user a is (0.70 against 0.17)."""
    pairs = [("a", ["b-rare", "b-y"], "m-a"), ("b", ["b-common", "b-z"], "m-b")]
    pairs += [(f"f{k}", ["b-common"], "m-f") for k in range(4)]
    items = {i: Item(i, "books", i) for i in ("b-rare", "b-common", "b-y", "b-z")}
    items |= {i: Item(i, "movies", i) for i in ("m-a", "m-b", "m-f")}
    events = [Interaction(u, i, "books", float(k)) for u, books, _ in pairs
              for k, i in enumerate(books)]
    events += [Interaction(u, m, "movies", 9.0) for u, _, m in pairs]
    view = Protocol(Dataset(items, events, {u: "train" for u, _, _ in pairs})).train_view(B2M)
    method = UserKNN(neighbours=(1,))
    method.fit(view)
    assert target_ids(view, method.rank([("b-rare", "b-common")])[0])[0] == "m-a"


def test_userknn_scores_an_item_by_the_similarity_of_the_neighbours_who_have_it() -> None:
    """Query {b1}: user near read b1 only (cosine 1), user far also b2 (cosine 0.52) and watched
    m-far three times; four other users read another book. m-near comes first: each neighbour's
    vote is its cosine (not 1), counts once however often they watched the item, and profiles
    are normalised (unnormalised, near and far would be equally close). Otherwise a tie with
    m-far, the more popular, or m-far ahead."""
    users = [("far", "train", ["b1", "b2"], ["m-far"] * 3), ("near", "train", ["b1"], ["m-near"])]
    users += [(f"other{k}", "train", ["b-other"], ["m-other"]) for k in range(4)]
    view = view_of(users)
    method = UserKNN(neighbours=(2,))  # fewer than the 6 train users: the k nearest are kept
    method.fit(view)
    assert target_ids(view, method.rank([("b1",)])[0])[:2] == ["m-near", "m-far"]


def test_userknn_counts_only_the_k_nearest_users_with_the_k_chosen_on_valid_users() -> None:
    """Query {b1}: user near read b1 only (cosine 1) and watched m-near; three users read b1 and
    b2 (cosine 0.58 each) and watched m-far. One neighbour ranks m-near first; all four rank
    m-far first (3 x 0.58 > 1). The valid user watched m-near, so k = 1 is chosen over the
    default 4, and the ranking uses it. (Four users of another book keep the idf of b1 and b2
    above 0.)"""
    users = [("near", "train", ["b1"], ["m-near"]), ("valid", "valid", ["b1"], ["m-near"])]
    users += [(f"far{k}", "train", ["b1", "b2"], ["m-far"]) for k in range(3)]
    users += [(f"other{k}", "train", ["b-other"], ["m-other"]) for k in range(4)]
    view = view_of(users)
    every = UserKNN(neighbours=(4,))
    every.fit(view)
    assert target_ids(view, every.rank([("b1",)])[0])[0] == "m-far"
    method = UserKNN(neighbours=(4, 1))
    method.fit(view)
    valid = method.config()["valid_ndcg@10"]  # four neighbours put m-near second
    assert method.k == 1 and valid == {"4": round(1 / np.log2(3), 4), "1": 1.0}
    assert target_ids(view, method.rank([("b1",)])[0])[0] == "m-near"


def test_userknn_counts_a_book_every_train_user_read() -> None:
    """Every train user read b-all: its idf is log(1) = 0, kept at a small weight so that a
    query of b-all alone finds the user who read nothing else (cosine 1) and not only users
    of rarer books (cosine about 0); without it every cosine is 0 and the ranking falls back
    to popularity (m-pop, two users)."""
    users = [("only", "train", ["b-all"], ["m-only"]), ("valid", "valid", ["b-all"], ["m-only"])]
    users += [(f"more{k}", "train", ["b-all", f"b{k}"], ["m-pop"]) for k in range(2)]
    view = view_of(users)
    method = UserKNN(neighbours=(1,))
    method.fit(view)
    assert target_ids(view, method.rank([("b-all",)])[0])[:2] == ["m-only", "m-pop"]


def test_userknn_ranks_a_batch_of_queries_each_by_its_own_neighbours(view: TrainView) -> None:
    """Three neighbours of 24 train users, every theme's query in one call: each query's
    neighbours (its theme's three train users) vote for its row, not another query's."""
    method = UserKNN(neighbours=(3,))
    method.fit(view)
    rankings = method.rank(queries(view))
    assert [target_ids(view, r)[0] for r in rankings] == [f"movie-{t}" for t in range(THEMES)]


def test_userknn_with_one_neighbour_recommends_that_neighbours_items(view: TrainView) -> None:
    method = UserKNN(neighbours=(1,))
    method.fit(view)
    ranking = target_ids(view, method.rank([("book-5",)])[0])
    # the nearest train user (any of u5-2..u5-4) watched movie-5, perhaps movie-hit; the rest
    # have score 0 and follow by popularity
    assert set(ranking[:2]) <= {"movie-5", "movie-hit"} and "movie-5" in ranking[:2]


def test_unknown_query_items_fall_back_to_popularity(dataset: Dataset) -> None:
    """A query the neighbourhood methods know nothing about gets the popularity ranking, not
    items.jsonl order (the fan's movie is the most popular and the last in the file)."""
    view = Protocol(with_a_fan(dataset)).train_view(B2M)
    for method in (ItemKNN(), UserKNN()):
        method.fit(view)
        ranking = target_ids(view, method.rank([("not-an-item",)])[0])
        assert ranking == [f"movie-{THEMES - 1}", "movie-hit",
                           *(f"movie-{t}" for t in range(THEMES - 1))]


def test_stable_rank_ties() -> None:
    scores = np.array([[1.0, 2.0, 1.0, 2.0, 0.0]])
    assert stable_rank(scores).tolist() == [[1, 3, 0, 2, 4]]  # ties: index order
    tiebreak = np.array([0.0, 0.0, 5.0, 1.0, 9.0])
    assert stable_rank(scores, tiebreak).tolist() == [[3, 1, 2, 0, 4]]  # ties: tiebreak first


def test_stable_rank_matches_a_sort_by_key_on_many_ties() -> None:
    # long rows: numpy's default sort is only accidentally stable on short ones
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(3, 500)).astype(float)
    tiebreak = rng.integers(0, 3, size=500).astype(float)
    for row in range(3):
        by_index = sorted(range(500), key=lambda i: -scores[row, i])
        by_both = sorted(range(500), key=lambda i: (-scores[row, i], -tiebreak[i]))
        assert stable_rank(scores)[row].tolist() == by_index
        assert stable_rank(scores, tiebreak)[row].tolist() == by_both


def test_stable_top_is_the_head_of_the_stable_sort_also_with_ties_at_the_cut() -> None:
    rng = np.random.default_rng(2)
    for n_items, k in ((1000, 50), (1000, 10), (300, 200), (30, 50), (500, 1)):
        # few distinct values: many ties, also across the k-th place
        scores = rng.integers(0, 40, size=(60, n_items)).astype(np.float32)
        scores[0] = 1.0  # a row of one value
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        got = stable_top(scores, k)
        assert got.dtype == np.int64 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    real = rng.standard_normal((20, 5000))
    np.testing.assert_array_equal(stable_top(real, 50),
                                  np.argsort(-real, axis=1, kind="stable")[:, :50])
    assert stable_top(np.zeros((0, 10)), 5).shape == (0, 5)


# -- one contract for every baseline ---------------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
def test_method_contract(dataset: Dataset, name: str) -> None:
    protocol = Protocol(dataset)
    method = make_method(name, seed=0)
    assert method.name == name
    assert getattr(make_method(name, seed=5), "seed", 5) == 5  # --seed reaches emcdr's draws
    first = []
    for direction in (B2M, Direction("movies", "books")):
        view, task = protocol.train_view(direction), protocol.task(direction)
        method.fit(view)  # re-fitting on another direction replaces what was learned
        rankings = method.rank(task.queries)
        n = len(view.target_items)
        assert rankings.shape == (len(task), n)
        assert (np.sort(rankings, axis=1) == np.arange(n)).all()  # each row a permutation
        first.append(rankings)
    again = make_method(name, seed=0)
    again.fit(protocol.train_view(B2M))
    assert (again.rank(protocol.task(B2M).queries) == first[0]).all()  # deterministic
    assert isinstance(method.config(), dict)
    check_no_leak(lambda ds: make_method(name, seed=0), dataset, B2M)


# -- model selection -------------------------------------------------------------------------------

def test_choose_picks_the_best_on_valid_users_and_sees_only_their_queries(view: TrainView) -> None:
    seen: list[tuple[str, ...]] = []
    truth_first = np.array([[int(t[0]), *[i for i in range(len(view.target_items))
                                          if i != t[0]]] for t in view.valid.truth])

    def rank_with(params, qs: Sequence[tuple[str, ...]]) -> np.ndarray:
        seen.extend(qs)
        if params["good"]:
            return truth_first[:len(qs)]
        return np.tile(np.arange(len(view.target_items)), (len(qs), 1))

    best, table = choose([{"good": False}, {"good": True}], rank_with, view.valid)
    assert best == {"good": True}
    assert [v for _, v in table][1] == 1.0
    assert set(seen) == set(view.valid.queries)
    # a tie keeps the earlier candidate: the default comes first, and a grid that cannot tell
    # settings apart stays at it
    best, table = choose([{"good": True, "k": 1}, {"good": False}, {"good": True, "k": 2}],
                         rank_with, view.valid)
    assert best == {"good": True, "k": 1} and table[0][1] == table[2][1]


def test_itemknn_ranks_with_the_setting_chosen_on_valid_users() -> None:
    """b0 was read with mA by one user and with mB by five of mB's fifty: without shrink mA is
    closer (0.41 against 0.29), with a shrink of 10 mB is (0.18 against 0.08). The valid user
    watched mB, so shrink 10 is chosen, and the ranking uses it (not the grid's first setting).
    """
    users = [("a", "train", ["b0"], ["mA"]), ("valid", "valid", ["b0"], ["mB"])]
    users += [(f"p{k}", "train", ["b0"], ["mB"]) for k in range(5)]
    users += [(f"q{k}", "train", ["b1"], ["mB"]) for k in range(45)]
    view = view_of(users)
    method = ItemKNN(alphas=(0.5,), shrinks=(0.0, 10.0))
    method.fit(view)
    assert (method.alpha, method.shrink) == (0.5, 10.0)
    assert target_ids(view, method.rank([("b0",)])[0]) == ["mB", "mA"]


def test_itemknn_valid_figures_are_those_of_the_ranking_it_serves() -> None:
    """A valid user whose history no train user shares is served train popularity: mP (three
    users) before mQ (one user, though first in items order). The valid figures itemknn chooses
    its setting by are those of that ranking: ndcg@10 1 for every setting."""
    users = [("a", "train", ["b0"], ["mQ"]), ("valid", "valid", ["b9"], ["mP"])]
    users += [(f"p{k}", "train", ["b1"], ["mP"]) for k in range(3)]
    view = view_of(users)
    method = ItemKNN(alphas=(0.5, 1.0), shrinks=(0.0,))
    method.fit(view)
    assert target_ids(view, method.rank([("b9",)])[0]) == ["mP", "mQ"]
    assert [score for _, score in method.valid_table] == pytest.approx([1.0, 1.0])


def test_choose_ranks_nothing_when_there_is_nothing_to_choose(view: TrainView) -> None:
    """One candidate, or no valid users: the first candidate, with no valid ranking run (and no
    error from an empty task); no candidates at all is an error that says so."""

    def never(params, qs: Sequence[tuple[str, ...]]) -> np.ndarray:
        raise AssertionError("ranked with nothing to choose")

    assert choose([{"k": 1}], never, view.valid) == ({"k": 1}, [])
    no_valid = view.valid.head(0)
    assert len(no_valid) == 0 and score_task(never, no_valid) == {}
    assert choose([{"k": 1}, {"k": 2}], never, no_valid) == ({"k": 1}, [])
    with pytest.raises(ValueError, match="no candidates"):
        choose([], never, view.valid)


def test_choose_refuses_test_users(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="valid users"):
        choose([{}], lambda p, q: np.zeros((len(q), 1)), Protocol(dataset).task(B2M))


def test_grid_methods_report_their_valid_choice(view: TrainView) -> None:
    method = UserKNN(neighbours=(1, 2, 3))
    method.fit(view)
    config = method.config()
    assert config["k"] in (1, 2, 3) and set(config["valid_ndcg@10"]) == {"1", "2", "3"}


# -- the retriever adapter -------------------------------------------------------------------------

def test_retriever_method_completes_and_checks_rankings(view: TrainView) -> None:
    calls: list[tuple[tuple[str, ...], str, int]] = []

    def recommend(history: tuple[str, ...], domain: str, limit: int) -> list[str]:
        calls.append((history, domain, limit))
        return ["movie-3", "movie-1", "movie-3"]  # partial, with a repeat

    method = RetrieverMethod("fake", recommend)
    method.fit(view)
    ranking = target_ids(view, method.rank([("book-0", "book-1")])[0])
    assert calls == [(("book-0", "book-1"), "movies", THEMES + 1)]  # asked for every item
    assert ranking == ["movie-3", "movie-1", "movie-hit", "movie-0", "movie-2",
                       *(f"movie-{t}" for t in range(4, THEMES))]

    bad = RetrieverMethod("bad", lambda h, d, n: ["book-0"])
    bad.fit(view)
    with pytest.raises(XDRetrieveError, match="not 'movies' items"):
        bad.rank([("book-0",)])


def test_retriever_method_build_and_close_hooks(dataset: Dataset) -> None:
    built: list[TrainView] = []
    closed: list[bool] = []

    def build(view: TrainView):
        built.append(view)
        return lambda history, domain, limit: list(reversed(view.target_items))

    method = RetrieverMethod("built", build=build, close=lambda: closed.append(True))
    results = evaluate(dataset, methods=[method, "popularity"], progress=False)
    assert [v.direction for v in built] == [B2M, Direction("movies", "books")]
    assert closed == [True]
    assert results.methods == ["built", "popularity"]
    with pytest.raises(ValueError, match="exactly one"):
        RetrieverMethod("neither")
    with pytest.raises(ValueError, match="exactly one"):  # not one of them silently ignored
        RetrieverMethod("both", lambda history, domain, limit: [], build=build)


def test_ranking_before_fitting_is_refused_by_name() -> None:
    """rank() before fit() is an error that says so, not rows of None (popularity) nor a
    TypeError from inside the method (the retriever adapter, emcdr)."""
    with pytest.raises(RuntimeError, match=r"rank\(\) before fit\(\)"):
        Popularity().rank([("book-0",)])
    with pytest.raises(XDRetrieveError, match=r"method 'early': rank\(\) before fit\(\)"):
        RetrieverMethod("early", lambda history, domain, limit: []).rank([("book-0",)])
    with pytest.raises(RuntimeError, match=r"score\(\) before fit\(\)"):
        EMCDR().rank([("book-0",)])
    for method in (ItemKNN(), UserKNN()):
        with pytest.raises(RuntimeError, match=r"score\(\) before fit\(\)"):
            method.rank([("book-0",)])


def test_retriever_method_takes_whole_rankings_as_columns_or_asks_by_ids(view: TrainView) -> None:
    """A callable's rank_rows answer is the row; where it answers None, that query is asked by
    ids and completed (not a row of None)."""

    class Rows:
        def __call__(self, history: tuple[str, ...], domain: str, limit: int) -> list[str]:
            return ["movie-3"]

        def rank_rows(self, history: tuple[str, ...], domain: str, n: int) -> np.ndarray | None:
            return None if history == ("book-0",) else np.arange(n)[::-1]

    method = RetrieverMethod("rows", Rows())
    method.fit(view)
    rankings = method.rank([("book-0",), ("book-1",)])
    assert target_ids(view, rankings[0]) == ["movie-3", "movie-hit", "movie-0", "movie-1",
                                             "movie-2", *(f"movie-{t}" for t in range(4, THEMES))]
    assert rankings[1].tolist() == list(range(THEMES, -1, -1))


def test_retriever_method_completes_short_rankings_and_says_how_many(
        view: TrainView, caplog: pytest.LogCaptureFixture) -> None:
    """One item left out is appended as many are; a ranking of every item's length with a
    repeat also leaves one out, and is counted among the short ones in the warning."""
    everything = list(reversed(view.target_items))
    answers = {"all": everything, "one-missing": everything[1:],
               "repeat": [*everything[:-1], everything[0]]}
    method = RetrieverMethod("short", lambda history, domain, limit: answers[history[0]])
    method.fit(view)
    rankings = method.rank([("all",), ("one-missing",), ("repeat",)])
    assert target_ids(view, rankings[0]) == everything
    assert target_ids(view, rankings[1]) == everything[1:] + everything[:1]
    assert target_ids(view, rankings[2]) == everything
    assert (f"method 'short' ranked fewer than all {THEMES + 1} items for 2 of 3 queries"
            in caplog.text)


def test_retriever_method_check_refuses_before_any_method_runs(dataset: Dataset) -> None:
    """A method object's check (e.g. a model trained on another split) stops the run before the
    first method's work, not at its own turn."""
    built: list[str] = []

    def build(name: str):
        return lambda view: built.append(name) or (lambda history, domain, limit: [])

    def refuse(view: TrainView) -> None:
        raise XDRetrieveError("trained on other users")

    methods = [RetrieverMethod("first", build=build("first")),
               RetrieverMethod("refusing", build=build("refusing"), check=refuse)]
    with pytest.raises(XDRetrieveError, match="trained on other users"):
        evaluate(dataset, methods=methods, progress=False)
    assert built == []


class _StubRetriever:
    """What the full ranking reads of a Retriever, without a model: the stored items (in the
    store's own order), a history's query (mean of its items' vectors; its target items held
    out) and the served head (by cosine)."""

    model = None

    def __init__(self, items: dict[str, tuple[str, np.ndarray]]):
        from types import SimpleNamespace

        self.items = items
        points = [SimpleNamespace(payload={"item_id": i, "domain": d}, vector=v)
                  for i, (d, v) in items.items()]
        self.store = SimpleNamespace(scroll=lambda *args, **kwargs: iter(points))

    def history_query(self, history: Sequence[str], domain: str):
        from types import SimpleNamespace

        return SimpleNamespace(vector=np.mean([self.items[i][1] for i in history], axis=0),
                               exclude=tuple(i for i in history if self.items[i][0] == domain))

    def search(self, query, domain: str, limit: int):
        from types import SimpleNamespace

        ids = [i for i, (d, _) in self.items.items() if d == domain and i not in query.exclude]
        ids.sort(key=lambda i: -float(self.items[i][1] @ query.vector))
        return [SimpleNamespace(item_id=i) for i in ids[:limit]]


def test_full_ranking_by_columns_is_the_ranking_by_ids(
        view: TrainView, monkeypatch: pytest.MonkeyPatch) -> None:
    """rank_rows (what evaluate asks) answers what the ids path answers once RetrieverMethod
    completes it: served head, the rest by score, and the history's own target items last in
    items.jsonl order, also where the store keeps them in another order."""
    from xdretrieve.evaluate import retrieval

    monkeypatch.setattr(retrieval, "SERVED", 2)  # 9 movies: a head of 2 and a tail
    rng = np.random.default_rng(0)
    stored = [*reversed(view.target_items), *view.source_items]  # not items.jsonl order
    stub = _StubRetriever({i: ("movies" if i.startswith("movie") else "books",
                               rng.normal(size=4)) for i in stored})
    ranking = retrieval._FullRanking(stub, "movies", view.item_index("movies"))
    by_rows = RetrieverMethod("rows", ranking)
    by_ids = RetrieverMethod("ids", lambda history, domain, limit: ranking(history, domain, limit))
    for method in (by_rows, by_ids):
        method.fit(view)
    history = ("book-1", "movie-2", "movie-6", "book-4")
    rows = ranking.rank_rows(history, "movies", THEMES + 1)
    assert rows is not None and target_ids(view, rows[-2:]) == ["movie-2", "movie-6"]
    # the tail after the served head: best cosine first, as the head (the stub has no model)
    vector = stub.history_query(history, "movies").vector
    cosines = [float(stub.items[i][1] @ vector) for i in target_ids(view, rows[:-2])]
    assert cosines == sorted(cosines, reverse=True)
    queries = [history, ("book-3",), ("movie-0", "movie-hit")]
    np.testing.assert_array_equal(by_rows.rank(queries), by_ids.rank(queries))


def test_full_ranking_of_a_store_lacking_an_evaluated_item_asks_by_ids(
        view: TrainView, monkeypatch: pytest.MonkeyPatch) -> None:
    """rank_rows answers in columns only where the store holds exactly the evaluation's target
    items: a store without one of them answers None, so the ranking goes by ids and the missing
    item is appended (in columns it would be a row one item short)."""
    from xdretrieve.evaluate import retrieval

    monkeypatch.setattr(retrieval, "SERVED", 2)
    rng = np.random.default_rng(0)
    stored = [i for i in (*view.target_items, *view.source_items) if i != "movie-4"]
    stub = _StubRetriever({i: ("movies" if i.startswith("movie") else "books",
                               rng.normal(size=4)) for i in stored})
    ranking = retrieval._FullRanking(stub, "movies", view.item_index("movies"))
    assert ranking.rank_rows(("book-1",), "movies", THEMES + 1) is None
    method = RetrieverMethod("partial", ranking)
    method.fit(view)
    rows = method.rank([("book-1",), ("book-5",)])
    assert [target_ids(view, row)[-1] for row in rows] == ["movie-4", "movie-4"]
    assert (np.sort(rows, axis=1) == np.arange(THEMES + 1)).all()


def test_a_retriever_row_ranks_from_its_own_local_store_indexed_once(
        dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`evaluate --url ...`: a retriever row indexes the catalog into a store of its own under
    the work folder, not into the server's collections; one method object fitted for both
    directions indexes and opens it once (the catalog is the same), and closes it at the end."""
    from xdretrieve import indexer, retriever
    from xdretrieve.config import Settings
    from xdretrieve.evaluate import retrieval

    rng = np.random.default_rng(0)
    stub = _StubRetriever({i: (item.domain, rng.normal(size=4))
                           for i, item in dataset.items.items()})
    indexed: list[Settings] = []
    opened: list[Settings] = []
    closed: list[bool] = []
    stub.close = lambda: closed.append(True)  # type: ignore[attr-defined]
    monkeypatch.setattr(indexer, "index_dataset",
                        lambda ds, settings, users=True: indexed.append(settings))
    monkeypatch.setattr(retriever, "Retriever", lambda settings: opened.append(settings) or stub)
    method = retrieval.retriever_method("xdretrieve", Settings(url="http://qdrant.example:6333"),
                                        tmp_path / "work")
    protocol = Protocol(dataset)
    for direction in (B2M, Direction("movies", "books")):
        method.fit(protocol.train_view(direction))
        assert method.rank(protocol.task(direction).queries).shape[1] == len(
            protocol.train_view(direction).target_items)
    method.close()
    assert len(indexed) == len(opened) == 1 and closed == [True]
    assert (indexed[0].url, opened[0].url) == (None, None)
    assert indexed[0].store == opened[0].store == Path(method.config()["store"])
    assert indexed[0].store.parent == tmp_path / "work" / "stores"


def test_each_retriever_variant_is_registered_with_its_own_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`evaluate --compare a=... --no-rerank-row`: each variant row runs its own settings (not
    the last variant's), in its own store; zeroshot pools by mean whatever --pooling says."""
    from xdretrieve.config import Settings
    from xdretrieve.evaluate import registry
    from xdretrieve.evaluate.retrieval import register_retriever_methods

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "METHODS", dict(METHODS))  # the registrations are undone
    settings = Settings(store=tmp_path / "store", pooling="recency")
    register_retriever_methods(settings, tmp_path / "work", {
        "xdretrieve-mean": settings.model_copy(update={"pooling": "mean"}),
        "xdretrieve-no-rerank": settings.model_copy(update={"rerank": False})})
    configs = {name: make_method(name).config() for name in (
        "zeroshot", "xdretrieve", "xdretrieve-mean", "xdretrieve-no-rerank")}
    assert {name: (c["pooling"], c["rerank"]) for name, c in configs.items()} == {
        "zeroshot": ("mean", True), "xdretrieve": ("recency", True),
        "xdretrieve-mean": ("mean", True), "xdretrieve-no-rerank": ("recency", False)}
    for name, config in configs.items():
        assert Path(config["store"]).name == f"{name}-{config['fingerprint']}"


# -- the registry ----------------------------------------------------------------------------------

def test_registry() -> None:
    assert list(BASELINES) == ["popularity", "itemknn", "userknn", "emcdr"]
    with pytest.raises(XDRetrieveError, match="known methods: popularity, itemknn, userknn, emcdr"):
        make_method("no-such-method")
    with pytest.raises(XDRetrieveError, match="already registered"):
        register_method("popularity", lambda seed=0: Popularity())
    register_method("test-only", lambda seed=0: Popularity())
    try:
        method = make_method("test-only")
        assert isinstance(method, Popularity) and method.name == "test-only"
        # the list names what is registered now (e.g. zeroshot), not just the baselines
        with pytest.raises(XDRetrieveError, match=r"known methods: popularity, .*\btest-only\b"):
            make_method("no-such-method")
        register_method("test-only", lambda seed=0: ItemKNN(), replace=True)  # as asked
        assert isinstance(make_method("test-only"), ItemKNN)
    finally:
        del METHODS["test-only"]


def test_each_baseline_name_builds_that_baseline() -> None:
    """`--method itemknn` runs ItemKNN: a factory building another baseline would report its
    figures under the wrong name."""
    built = {name: type(make_method(name)) for name in BASELINES}
    assert built == {"popularity": Popularity, "itemknn": ItemKNN, "userknn": UserKNN,
                     "emcdr": EMCDR}


def test_the_runner_builds_named_methods_with_its_seed_and_closes_each(dataset: Dataset) -> None:
    """A named method is built per direction with evaluate's seed (--seed), and each one built is
    closed (a retriever-backed one holds its store open until then)."""
    built: list[Popularity] = []

    class Counted(Popularity):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.seed, self.closed = seed, False
            built.append(self)

        def close(self) -> None:
            self.closed = True

    register_method("test-counted", lambda seed=0: Counted(seed))
    try:
        evaluate(dataset, methods=["test-counted"], seed=7, progress=False)
    finally:
        del METHODS["test-counted"]
    assert len(built) >= 2  # one per direction at least
    assert [(m.seed, m.closed) for m in built] == [(7, True)] * len(built)
