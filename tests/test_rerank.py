"""Re-ranker features on hand-made cases, and its listwise fit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from xdretrieve import rerank
from xdretrieve.rerank import (
    FEATURES,
    ItemStats,
    Reranker,
    candidate_union,
    features,
    fit_reranker,
    overlap_text,
    recent_distinct,
    tokens,
    tower_head,
)

IDS = ["a1", "a2", "o1", "o2", "o3"]
DOMAINS = ["arts", "arts", "office", "office", "office"]
# train users: u1 has a1 + o1; u2 has a1 + o1 + o2; u3 has a2 + o3
HISTORIES = {
    "u1": {"arts": ("a1",), "office": ("o1",)},
    "u2": {"arts": ("a1",), "office": ("o1", "o2")},
    "u3": {"arts": ("a2",), "office": ("o3",)},
}


def test_item_stats_count_popularity_and_cross_domain_pairs() -> None:
    stats = ItemStats.fit(IDS, HISTORIES)
    np.testing.assert_array_equal(stats.popularity, [2, 1, 2, 1, 1])
    cooc = stats.cooc.toarray()
    assert cooc[0, 2] == 2 and cooc[2, 0] == 2  # a1-o1: u1 and u2
    assert cooc[0, 3] == 1 and cooc[1, 4] == 1
    assert cooc[2, 3] == 0  # o1-o2 is the same domain: not counted
    assert np.trace(cooc) == 0


def test_item_stats_count_every_cross_domain_pair_of_three_domains_once_per_user() -> None:
    """Against the definition, pair by pair: entry (h, c) is the number of users who have h and
    c in different domains (an item a user has twice counts once); popularity counts every
    interaction."""
    rng = np.random.default_rng(1)
    ids = [f"i{k}" for k in range(30)]
    histories = {f"u{u}": {d: tuple(ids[3 * c + k] for c in rng.integers(0, 10, size=4))
                           for k, d in enumerate(("x", "y", "z")) if rng.random() < 0.8}
                 for u in range(40)}
    expected = np.zeros((30, 30))
    popularity = np.zeros(30)
    for per_domain in histories.values():
        sets = {d: {ids.index(i) for i in h} for d, h in per_domain.items()}
        for d, items in sets.items():
            for other, others in sets.items():
                if other != d:
                    for a in items:
                        for b in others:
                            expected[a, b] += 1
        for h in per_domain.values():
            for i in h:
                popularity[ids.index(i)] += 1
    stats = ItemStats.fit(ids, histories)
    np.testing.assert_array_equal(stats.cooc.toarray(), expected)
    np.testing.assert_array_equal(stats.popularity, popularity)
    assert stats.cooc.dtype == np.float32 and expected.max() > 1 and (expected == 0).any()


def test_recent_distinct_keeps_the_latest_distinct_items_oldest_first() -> None:
    assert recent_distinct(("a", "b", "a", "c", "c"), 2) == ("a", "c")
    assert recent_distinct(("a", "b", "a", "c"), 3) == ("b", "a", "c")
    assert recent_distinct(("a", "a"), 5) == ("a",)
    assert recent_distinct((), 5) == ()


def test_cooccurrence_counts_each_users_most_recent_items_only() -> None:
    """A heavy user's old items do not pair (memory grows with a history's square);
    popularity still counts every interaction."""
    histories = {"u1": {"arts": ("a1", "a2", "a1"), "office": ("o1", "o2", "o3")},
                 "u2": {"arts": ("a2",), "office": ("o1",)}}
    stats = ItemStats.fit(IDS, histories, max_history=2)
    cooc = stats.cooc.toarray()
    # u1 counts a2, a1 (its last two distinct arts items) with o2, o3; u2 counts a2 with o1
    assert cooc[0, 3] == 1 and cooc[0, 4] == 1 and cooc[1, 3] == 1 and cooc[1, 4] == 1
    assert cooc[0, 2] == 0  # o1 is older than u1's last two office items
    assert cooc[1, 2] == 1  # a2-o1: u2 only
    np.testing.assert_array_equal(stats.popularity, [2, 2, 2, 1, 1])
    uncapped = ItemStats.fit(IDS, histories).cooc.toarray()
    assert uncapped[0, 2] == 1 and uncapped[1, 2] == 2


def test_cooccurrence_counts_a_users_hundred_most_recent_items_by_default() -> None:
    """What `finetune` counts (it passes no cap): a user's 100 most recent distinct items per
    domain pair, the 101st back does not. A smaller default would drop pairs of every user
    with a longer history; a larger one lets heavy users fill memory."""
    ids = [f"a{k}" for k in range(101)] + ["o0"]
    cooc = ItemStats.fit(ids, {"u": {"arts": tuple(ids[:101]), "office": ("o0",)}}).cooc
    assert cooc[0, 101] == 0  # a0, the oldest of 101
    assert cooc[1:101, 101].toarray().ravel().tolist() == [1] * 100


def test_features_by_hand() -> None:
    stats = ItemStats.fit(IDS, HISTORIES)
    x = features(stats, history=["a1"], history_text="red pencil case",
                 candidates=["o1", "o3", "zz"],
                 candidate_texts=["pencil case blue", "stapler", "red"],
                 cosines=np.array([0.5, 0.4, 0.1]), scores=np.array([3.0, 2.0, 1.0]))
    assert x.shape == (3, len(FEATURES))
    col = {name: x[:, k] for k, name in enumerate(FEATURES)}
    np.testing.assert_allclose(col["score"], [3, 2, 1])
    np.testing.assert_allclose(col["cosine"], [0.5, 0.4, 0.1])
    np.testing.assert_allclose(col["log_popularity"], np.log1p([2, 1, 0]))  # zz is unknown
    np.testing.assert_allclose(col["cooccurrence"], np.log1p([2, 0, 0]))
    # a1-o1: 2 / (sqrt(pop(a1) * pop(o1)) + 1) = 2 / 3
    np.testing.assert_allclose(col["cooccurrence_norm"], [2 / 3, 0, 0], rtol=1e-6)
    # a1-o1: 2 / (pop(a1) + 50)
    np.testing.assert_allclose(col["cooccurrence_cond"], [2 / 52, 0, 0], rtol=1e-6)
    # 'pencil case blue': 2 of its 3 tokens are in the history text
    np.testing.assert_allclose(col["text_overlap"], [2 / 3, 0, 1])
    assert tokens("Pen-Case, 3 pack!") == {"pen", "case", "3", "pack"}
    # words of any script, whole (an ASCII class made "f" and "r" of "für", shared by every
    # German text): a German catalog's overlap counts its words
    assert tokens("Bürobedarf für Künstler_innen, Café") == {
        "bürobedarf", "für", "künstler", "innen", "café"}
    x = features(stats, history=["a1"], history_text="Stifte für Künstler",
                 candidates=["o1", "o2"], candidate_texts=["Hefter für Büro", "Ordner"],
                 cosines=np.array([0.5, 0.4]), scores=np.array([3.0, 2.0]))
    np.testing.assert_allclose(x[:, FEATURES.index("text_overlap")], [1 / 3, 0])


def test_the_text_overlap_reads_an_items_title_and_its_text() -> None:
    """Training counts and serving compares the words of both: an item's words that are in
    its description only (not in its title) must overlap too."""
    assert tokens(overlap_text("Pencil case", "blue zipper, 2-pack")) == {
        "pencil", "case", "blue", "zipper", "2", "pack"}


def test_a_history_no_train_user_shared_has_no_cooccurrence() -> None:
    """A history of items added since training (or that no train user paired) co-occurs
    with nothing: its candidates get zeros there, and the query is still re-ranked (a
    lookup in the empty table would raise IndexError)."""
    stats = ItemStats.fit(IDS, HISTORIES, DOMAINS)
    zeros = np.zeros(3, np.float32)
    for history in (["new"], ["new", "other"]):
        x = features(stats, history, "pencil", ["o1", "o2", "zz"], None, zeros, zeros)
        for name in ("cooccurrence", "cooccurrence_norm", "cooccurrence_cond"):
            assert x[:, FEATURES.index(name)].tolist() == [0, 0, 0]
        np.testing.assert_allclose(x[:, FEATURES.index("log_popularity")], np.log1p([2, 1, 0]))
    assert stats.cooccurring(["new"], "office", 5) == []


def test_fit_learns_the_feature_that_marks_the_positive(tmp_path) -> None:
    rng = np.random.default_rng(0)
    stats = ItemStats.fit(IDS, HISTORIES)
    groups = []
    for _ in range(50):
        x = rng.normal(size=(20, len(FEATURES))).astype(np.float32)
        y = np.zeros(20, dtype=np.float32)
        pos = int(np.argmax(x[:, 3]))  # the positive is the top co-occurrence candidate
        y[pos] = 1
        groups.append((x, y))
    model = fit_reranker(groups, stats)
    assert int(np.argmax(np.abs(model.weights))) == 3 and model.weights[3] > 0
    hits = sum(int(np.argmax(model.score(x))) == int(np.argmax(y)) for x, y in groups)
    assert hits >= 45
    model.save(tmp_path)
    again = Reranker.load(tmp_path)
    np.testing.assert_array_equal(again.weights, model.weights)
    np.testing.assert_array_equal(again.stats.cooc.toarray(), stats.cooc.toarray())
    # saved without a choice of target domains (None): it still serves every one, as saved
    assert again.domains is None and again.serves("office") and again.serves("arts")


def test_the_fit_minimises_the_listwise_loss_of_each_users_own_candidates() -> None:
    """Users have different numbers of candidates: the batch pads them, and the padding must
    not count as negatives. At the fitted weights the loss over the real candidates alone is
    at its minimum (the loss is convex in the weights): its gradient is ~0."""
    import torch

    rng = np.random.default_rng(0)
    groups = []
    for _ in range(40):
        n = int(rng.integers(3, 30))
        x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
        y = np.zeros(n, np.float32)
        y[rng.integers(n)] = 1
        x[y == 1, 0] += 1.0  # the first feature marks the relevant candidate, a little
        groups.append((x, y))
    fitted = fit_reranker(groups, ItemStats.fit(["a"], {}))
    w = torch.tensor(fitted.weights, requires_grad=True)
    loss = sum(-(torch.from_numpy(y) * torch.log_softmax(
        torch.from_numpy((x - fitted.mean) / fitted.std) @ w, 0)).sum() for x, y in groups)
    (loss / len(groups)).backward()
    assert float(w.grad.norm()) < 1e-3  # 0.35 with the padding counted as negatives


def _listwise_groups(seed: int, relevant: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """40 users' candidates (3 to 29 each, random features) with ``relevant`` of them
    relevant (one where a user has 5 or fewer), marked a little by the first feature."""
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(40):
        n = int(rng.integers(3, 30))
        x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
        y = np.zeros(n, np.float32)
        y[rng.choice(n, relevant if n > 5 else 1, replace=False)] = 1
        x[y == 1, 0] += 1.0
        groups.append((x, y))
    return groups


def test_a_user_with_several_relevant_candidates_weighs_as_one_user() -> None:
    """Each user's labels sum to 1 in the listwise loss (a user who bought two items is one
    user, not two): at the fitted weights the gradient of that loss is ~0."""
    import torch

    groups = _listwise_groups(0, relevant=2)
    fitted = fit_reranker(groups, ItemStats.fit(["a"], {}))
    w = torch.tensor(fitted.weights, requires_grad=True)
    loss = sum(-(torch.from_numpy(y / y.sum()) * torch.log_softmax(
        torch.from_numpy((x - fitted.mean) / fitted.std) @ w, 0)).sum() for x, y in groups)
    (loss / len(groups)).backward()
    assert float(w.grad.norm()) < 1e-3


def test_users_without_a_relevant_candidate_leave_the_fit_as_it_is() -> None:
    """Most valid users of a real catalog have none of their items among the candidates:
    they teach nothing (their labels cannot sum to 1), and neither the weights nor the
    features' mean and deviation move with them. With none relevant at all, nothing fits."""
    stats = ItemStats.fit(["a"], {})
    groups = _listwise_groups(1)
    rng = np.random.default_rng(2)
    nothing = [(rng.normal(3.0, size=(8, len(FEATURES))).astype(np.float32),
                np.zeros(8, np.float32)) for _ in range(5)]
    alone, among = fit_reranker(groups, stats), fit_reranker(groups[:20] + nothing + groups[20:],
                                                             stats)
    for name in ("weights", "mean", "std"):
        np.testing.assert_array_equal(getattr(among, name), getattr(alone, name))
    with pytest.raises(ValueError, match="no user has a relevant candidate"):
        fit_reranker(nothing, stats)


def test_a_feature_constant_over_every_candidate_teaches_nothing() -> None:
    """Statistics without texts give every candidate text_overlap 0 (a deviation of 0): the
    fit stays finite, that feature's weight 0 whatever its value, and scores are numbers."""
    stats = ItemStats.fit(["a"], {})
    col = FEATURES.index("text_overlap")
    fits = []
    for value in (0.0, 1.0):
        groups = _listwise_groups(3)
        for x, _ in groups:
            x[:, col] = value
        fits.append(fit_reranker(groups, stats))
        assert np.isfinite(fits[-1].weights).all() and fits[-1].weights[col] == 0
        assert all(np.isfinite(fits[-1].score(x)).all() for x, _ in groups)
    np.testing.assert_array_equal(fits[0].weights, fits[1].weights)


def test_cooccurring_items_of_the_target_domain_best_first(tmp_path) -> None:
    stats = ItemStats.fit(IDS, HISTORIES, DOMAINS)
    # a1 co-occurs with o1 (2 users) and o2 (1); a2 with o3 (1); ties by popularity
    assert stats.cooccurring(["a1"], "office", 5) == ["o1", "o2"]
    assert stats.cooccurring(["a1", "a2"], "office", 2) == ["o1", "o2"]  # o2, o3 tie: order kept
    assert stats.cooccurring(["a1"], "arts", 5) == []  # same-domain pairs are not counted
    assert stats.cooccurring(["o1"], "arts", 5) == ["a1"]
    assert stats.cooccurring(["unknown"], "office", 5) == []
    assert stats.cooccurring(["a1"], "office", 0) == []  # none asked for, none given
    stats.save(tmp_path / "s.npz")
    assert ItemStats.load(tmp_path / "s.npz").cooccurring(["a1"], "office", 1) == ["o1"]


def test_candidate_union_takes_both_sources_without_duplicates() -> None:
    ranked = ["t1", "t2", "t3", "t4", "t5", "t6"]
    assert candidate_union(ranked, ["c1", "t1", "c2", "c3"], 6) == ["t1", "t2", "t3", "c1", "c2",
                                                                    "c3"]
    # too few co-occurring items: the tower's ranking fills up
    assert candidate_union(ranked, ["t2"], 4) == ["t1", "t2", "t3", "t4"]
    assert candidate_union(ranked, [], 10) == ranked
    # an odd number: the tower keeps the larger half, whatever co-occurs
    assert tower_head(5) == 3 and tower_head(200) == 100
    assert candidate_union(ranked, ["c1", "c2", "c3"], 5) == ["t1", "t2", "t3", "c1", "c2"]


def test_reranker_reads_the_features_it_was_trained_on(tmp_path) -> None:
    """A model saved with fewer features (an older version) scores from those columns only."""
    stats = ItemStats.fit(IDS, HISTORIES)
    old = Reranker(np.array([1.0, -1.0], dtype=np.float32), np.zeros(2, np.float32),
                   np.ones(2, np.float32), stats, ("cosine", "log_popularity"))
    old.save(tmp_path)
    again = Reranker.load(tmp_path)
    x = np.zeros((2, len(FEATURES)), dtype=np.float32)
    x[:, FEATURES.index("cosine")] = [0.2, 0.9]
    x[:, FEATURES.index("log_popularity")] = [0.0, 0.5]
    np.testing.assert_allclose(again.score(x), [0.2, 0.4], rtol=1e-6)
    # each weight goes with its name, in the order the names are given (not FEATURES' order)
    swapped = Reranker(np.array([-1.0, 1.0], dtype=np.float32), np.zeros(2, np.float32),
                       np.ones(2, np.float32), stats, ("log_popularity", "cosine"))
    np.testing.assert_allclose(swapped.score(x), [0.2, 0.4], rtol=1e-6)


def test_the_score_standardises_each_feature_by_its_own_mean_and_deviation() -> None:
    """``w . (x - mean) / std`` by hand, with deviations other than 1 (the fitted ones are:
    a feature's weight applies to its standardised value)."""
    reranker = Reranker(np.array([1.0, 2.0], np.float32), np.array([1.0, 0.5], np.float32),
                        np.array([2.0, 0.25], np.float32), ItemStats.fit(IDS, HISTORIES),
                        ("cosine", "text_overlap"))
    x = np.zeros((2, len(FEATURES)), dtype=np.float32)
    x[:, FEATURES.index("cosine")] = [3.0, 1.0]
    x[:, FEATURES.index("text_overlap")] = [0.5, 1.0]
    # (3 - 1) / 2 x 1 + 0 = 1; 0 + (1 - 0.5) / 0.25 x 2 = 4
    np.testing.assert_allclose(reranker.score(x), [1.0, 4.0], rtol=1e-6)


def test_a_saved_reranker_of_an_unknown_feature_is_refused_naming_its_file(
        tmp_path: Path) -> None:
    """A model directory written by a newer version (a feature this one does not compute)
    is refused at load, saying which file and which feature, not with an IndexError or a
    bare 'not in tuple' at the first query."""
    ones = np.ones(2, np.float32)
    Reranker(ones, 0 * ones, ones, ItemStats.fit(IDS, HISTORIES), ("cosine", "score")).save(
        tmp_path)
    spec = json.loads((tmp_path / "reranker.json").read_text())
    spec["features"] = ["cosine", "sentiment"]
    (tmp_path / "reranker.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError) as refused:
        Reranker.load(tmp_path)
    assert str(refused.value).startswith(
        f"{tmp_path / 'reranker.json'}: unknown re-ranker feature(s) ['sentiment']")


def test_an_explanation_says_when_a_low_value_counted() -> None:
    """A re-ranker that weighs popularity negatively lifts the unpopular: before, --explain
    said an item no train user had was there for its 'popularity (+1.53)'."""
    from types import SimpleNamespace

    from xdretrieve.cli import _explained

    reranker = Reranker(np.array([1.0, -2.0], dtype=np.float32), np.array([0.0, 1.0], np.float32),
                        np.array([1.0, 0.5], np.float32), ItemStats.fit(IDS, HISTORIES),
                        ("score", "log_popularity"))
    row = np.zeros(len(FEATURES), dtype=np.float32)
    row[FEATURES.index("score")] = 0.5  # 0.5 above its mean: +0.5
    why = reranker.explain(row)  # log_popularity 0: 2 deviations below its mean, x -2: +4
    assert why["standardised"] == {"score": 0.5, "log_popularity": -2.0}
    assert why["contributions"] == {"score": 0.5, "log_popularity": 4.0}
    assert _explained(SimpleNamespace(why=why))[-1] == "low popularity (+4.00)"
    row[FEATURES.index("score")], row[FEATURES.index("log_popularity")] = 5.0, 1.5
    assert _explained(SimpleNamespace(why=reranker.explain(row)))[-1] == "model score (+5.00)"


def test_popular_items_of_a_domain_most_first() -> None:
    stats = ItemStats.fit(IDS, HISTORIES, DOMAINS)
    assert stats.popular("office") == ["o1", "o2", "o3"]  # 2, 1, 1: ties in catalog order
    assert stats.popular("arts") == ["a1", "a2"]
    assert ItemStats.fit(IDS, HISTORIES).popular("office") == []  # no domains known


def test_popular_items_keep_catalog_order_among_many_ties() -> None:
    """Hundreds of items bought equally often (a new catalog's long tail, all at 0) come in
    catalog order, whatever the sort does with ties (an unstable one reorders them beyond a
    few dozen)."""
    ids = [f"o{k}" for k in range(300)]
    bought = {f"u{k}": {"office": (f"o{(k * 7) % 300}",)} for k in range(100)}
    stats = ItemStats.fit(ids, bought, ["office"] * 300)
    order = sorted(range(300), key=lambda k: (-stats.popularity[k], k))
    assert stats.popular("office") == [ids[k] for k in order]


def test_items_no_train_user_had_have_popularity_zero() -> None:
    """The catalog's last items that nobody bought yet (a new line) still have a popularity,
    0: their features are computed and the domain's popular items end with them, not an
    IndexError at the first query that meets them."""
    stats = ItemStats.fit(IDS + ["o4", "o5"], HISTORIES, DOMAINS + ["office", "office"])
    assert stats.popularity.tolist() == [2, 1, 2, 1, 1, 0, 0]
    assert stats.popular("office") == ["o1", "o2", "o3", "o4", "o5"]
    zeros = np.zeros(2, np.float32)
    x = features(stats, ["a1"], "", ["o5", "o1"], None, zeros, zeros)
    np.testing.assert_allclose(x[:, FEATURES.index("log_popularity")], np.log1p([0, 2]))


def _random_stats(seed: int) -> ItemStats:
    rng = np.random.default_rng(seed)
    ids = [f"a{k}" for k in range(60)] + [f"o{k}" for k in range(80)]
    domains = ["arts"] * 60 + ["office"] * 80
    histories = {f"u{u}": {"arts": tuple(rng.choice(ids[:60], rng.integers(1, 6))),
                           "office": tuple(rng.choice(ids[60:], rng.integers(1, 6)))}
                 for u in range(150)}
    return ItemStats.fit(ids, histories, domains)


def test_cooccurring_equals_a_dense_reference_ranking() -> None:
    """The sparse work (only the history's rows) ranks as a sum over the dense matrix does:
    count, then popularity, then catalog order; the history itself left out."""
    stats = _random_stats(0)
    dense = stats.cooc.toarray()
    rng = np.random.default_rng(1)
    for _ in range(50):
        history = list(rng.choice(stats.ids, rng.integers(1, 8)))  # both domains, repeats
        rows = sorted({stats.row[i] for i in history})
        counts = dense[rows].sum(0)
        for domain, k in (("office", 10), ("arts", 5), ("office", 500)):
            ok = [r for r in range(len(stats.ids)) if stats.domains[r] == domain
                  and counts[r] > 0 and r not in rows]
            ok.sort(key=lambda r: (-counts[r], -stats.popularity[r], r))
            assert stats.cooccurring(history, domain, k) == [stats.ids[r] for r in ok[:k]]
    assert stats.cooccurring(["a1"], "nowhere", 5) == []


def test_cooccurrence_features_equal_a_dense_reference() -> None:
    stats = _random_stats(2)
    dense = stats.cooc.toarray()
    rng = np.random.default_rng(3)
    for _ in range(30):
        history = list(rng.choice(stats.ids[:60], rng.integers(1, 8)))
        cands = list(rng.choice(stats.ids, 40)) + ["unknown"]
        x = features(stats, history, "", cands, None, np.zeros(len(cands), np.float32),
                     np.zeros(len(cands), np.float32))
        rows = sorted({stats.row[i] for i in history})
        pop = stats.popularity
        for c, item in enumerate(cands[:-1]):
            r = stats.row[item]
            pairs = dense[rows, r]
            assert x[c, FEATURES.index("cooccurrence")] == np.float32(np.log1p(pairs.sum()))
            np.testing.assert_allclose(
                x[c, FEATURES.index("cooccurrence_norm")],
                (pairs / (np.sqrt(pop[rows] * pop[r]) + 1.0)).sum(), rtol=1e-5)
        assert x[-1, FEATURES.index("cooccurrence")] == 0  # unknown item


def test_text_overlap_by_token_ids_equals_the_token_sets() -> None:
    """The serving path's text_overlap (token ids of the statistics' texts) equals the set
    computation on the same texts, with every history item known and with one unknown."""
    rng = np.random.default_rng(4)
    words = [f"w{k}" for k in range(30)] + ["Pen", "pen", "3-pack"]
    ids = [f"a{k}" for k in range(20)] + [f"o{k}" for k in range(30)]
    texts = [" ".join(rng.choice(words, rng.integers(0, 6))) for _ in ids]  # some empty
    histories = {f"u{u}": {"arts": tuple(rng.choice(ids[:20], 3)),
                           "office": tuple(rng.choice(ids[20:], 3))} for u in range(40)}
    stats = ItemStats.fit(ids, histories, ["arts"] * 20 + ["office"] * 30, texts)
    text_of = dict(zip(ids, texts, strict=True))
    col = FEATURES.index("text_overlap")
    for _ in range(30):
        history = list(rng.choice(ids[:20], rng.integers(1, 5)))
        cands = list(rng.choice(ids, 25)) + ["unknown"]
        for hist, hist_text in ((history, " ".join(text_of[i] for i in history)),
                                (history + ["gone"], "w1 w2 nothing-known")):
            zeros = np.zeros(len(cands), np.float32)
            served = features(stats, hist, hist_text, cands, None, zeros, zeros)
            by_sets = features(stats, hist, hist_text, cands,
                               [text_of.get(c, "") for c in cands], zeros, zeros)
            np.testing.assert_allclose(served[:, col], by_sets[:, col], rtol=1e-6)
            assert served[-1, col] == 0  # an unknown candidate has no text
    assert stats.cooccurring_rows(["a1"], "office", 5).tolist() == [
        stats.row[i] for i in stats.cooccurring(["a1"], "office", 5)]


def test_an_item_the_statistics_do_not_know_counts_by_the_historys_own_text() -> None:
    """An item indexed after training has no text in the statistics: the overlap then reads
    the history's text as the query gave it, so that item's words count too."""
    texts = ["red pencil", "glue", "pencil case", "stapler", "glue stick"]
    stats = ItemStats.fit(IDS, HISTORIES, DOMAINS, texts)
    zeros = np.zeros(3, np.float32)
    col = FEATURES.index("text_overlap")
    known = features(stats, ["a1"], "red pencil", ["o1", "o2", "o3"], None, zeros, zeros)
    np.testing.assert_allclose(known[:, col], [1 / 2, 0, 0])  # 'pencil' of 'pencil case'
    # 'new' (a stapler, added since) is not in the statistics; the history's text has it
    grown = features(stats, ["a1", "new"], "red pencil heavy stapler", ["o1", "o2", "o3"],
                     None, zeros, zeros)
    np.testing.assert_allclose(grown[:, col], [1 / 2, 1, 0])


def test_saved_statistics_reload_their_texts_and_token_index(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Saved statistics keep every text exactly (non-ASCII too) at their own size, and their
    token index: the loaded copy gives the same text_overlap without tokenizing anything."""
    ids = ["a0", "a1", "o0", "o1", "o2"]
    texts = ["Crème brûlée pen, 3-pack", "", "pen refill 3-pack", "crème paper", "x" * 2000]
    histories = {"u0": {"arts": ("a0",), "office": ("o0", "o1")},
                 "u1": {"arts": ("a0", "a1"), "office": ("o2",)}}
    stats = ItemStats.fit(ids, histories, ["arts"] * 2 + ["office"] * 3, texts)
    zeros = np.zeros(3, np.float32)
    expected = features(stats, ["a0"], texts[0], ["o0", "o1", "o2"], None, zeros, zeros)
    assert expected[0, FEATURES.index("text_overlap")] > 0  # the case is not trivial
    stats.save(tmp_path / "s.npz")
    # a unicode array would pad every text to the longest (5 x 2,000 characters x 4 bytes)
    assert (tmp_path / "s.npz").stat().st_size < 20_000

    def no_tokenizing(text: str) -> set[str]:
        raise AssertionError("the loaded statistics tokenized a text")

    monkeypatch.setattr(rerank, "tokens", no_tokenizing)
    again = ItemStats.load(tmp_path / "s.npz")
    assert again.texts == texts
    np.testing.assert_array_equal(
        features(again, ["a0"], texts[0], ["o0", "o1", "o2"], None, zeros, zeros), expected)
    monkeypatch.undo()
    # statistics saved by an earlier version (texts as a unicode array) still load
    old = {k: v for k, v in np.load(tmp_path / "s.npz").items()
           if k not in {"text_bytes", "text_offsets", "vocab_bytes", "vocab_offsets",
                        "token_ids", "token_ptr"}}
    np.savez(tmp_path / "old.npz", texts=np.array(texts), **old)
    older = ItemStats.load(tmp_path / "old.npz")
    assert older.texts == texts
    np.testing.assert_array_equal(
        features(older, ["a0"], texts[0], ["o0", "o1", "o2"], None, zeros, zeros), expected)


def test_a_token_index_of_ascii_words_is_built_anew(tmp_path: Path, monkeypatch) -> None:
    """A model saved before words of any script kept an index of ASCII words ('crème' as
    'cr' and 'me'); read as it was, a history's 'crème' would match none of its items."""
    import re

    ids = ["a0", "o0", "o1"]
    texts = ["crème brûlée pen", "crème paper", "brûlée ink"]
    histories = {"u0": {"arts": ("a0",), "office": ("o0", "o1")}}
    stats = ItemStats.fit(ids, histories, ["arts", "office", "office"], texts)
    zeros = np.zeros(2, np.float32)
    expected = features(stats, ["a0"], texts[0], ["o0", "o1"], None, zeros, zeros)
    np.testing.assert_allclose(expected[:, FEATURES.index("text_overlap")], [0.5, 0.5])
    with monkeypatch.context() as m:  # as the earlier version indexed and saved them
        m.setattr(rerank, "_TOKEN", re.compile(r"[a-z0-9]+"))
        old = ItemStats.fit(ids, histories, ["arts", "office", "office"], texts)
        old.save(tmp_path / "s.npz")
    saved = {k: v for k, v in np.load(tmp_path / "s.npz").items() if k != "tokens_version"}
    np.savez(tmp_path / "s.npz", **saved)
    again = ItemStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(
        features(again, ["a0"], texts[0], ["o0", "o1"], None, zeros, zeros), expected)


def test_the_reranker_is_kept_per_target_domain_where_valid_users_gain(tmp_path: Path) -> None:
    """Kept for the target domains where it lifts valid users' ndcg@10 in every direction
    into them, saved with them; a re-ranker saved without the list serves every domain."""
    from xdretrieve.train.rerank_fit import _compare_on_valid, describe_rerank

    stats = ItemStats.fit(IDS, HISTORIES)
    by_cooc = np.eye(len(FEATURES), dtype=np.float32)[FEATURES.index("cooccurrence")]
    ones = np.ones(len(FEATURES), dtype=np.float32)
    reranker = Reranker(by_cooc, 0 * ones, ones, stats)
    # candidates in the tower's order; the re-ranker reverses it (co-occurrence rises)
    x = np.zeros((12, len(FEATURES)), dtype=np.float32)
    x[:, FEATURES.index("cooccurrence")] = np.arange(12)
    helped, hurt = np.zeros(12, np.float32), np.zeros(12, np.float32)
    helped[11] = 1  # the tower's last: the re-ranker's first
    hurt[0] = 1  # the tower's first: the re-ranker's last
    # a user without a relevant candidate: the order cannot matter, and the user is left out
    report = _compare_on_valid([("books->movies", x, helped), ("movies->books", x, hurt),
                                ("books->movies", x, np.zeros(12, np.float32))], reranker)
    # ndcg@10: the tower's 12th is outside its top 10 (0), the re-ranker's first (1)
    assert report["books->movies"] == {"without": 0.0, "with": 1.0}
    assert report["movies->books"] == {"without": 1.0, "with": 0.0}
    assert report["kept"] == ["movies"]
    # a target domain is served only where every direction into it gains, and a tie is no gain
    level = np.zeros(12, np.float32)
    level[[0, 11]] = 1  # relevant: the first and the last, where the re-ranker leaves them
    x_level = x.copy()
    x_level[:, FEATURES.index("cooccurrence")] = [11, *range(1, 11), 0]  # reverses the middle
    three = _compare_on_valid([("books->movies", x, helped), ("music->movies", x, hurt),
                               ("movies->books", x_level, level)], reranker)
    assert three["books->movies"]["with"] > three["books->movies"]["without"]
    assert three["movies->books"]["with"] == three["movies->books"]["without"]
    assert three["kept"] == []
    # what finetune prints: each direction's two figures, and where it is served
    line = describe_rerank(report)
    assert (f"books->movies {report['books->movies']['without']:.4f} -> "
            f"{report['books->movies']['with']:.4f}") in line
    assert line.endswith("served into movies")
    assert describe_rerank({**report, "kept": []}).endswith("served into no domain (none gains)")
    reranker.domains = tuple(report["kept"])
    reranker.save(tmp_path)
    again = Reranker.load(tmp_path)
    assert again.domains == ("movies",) and again.serves("movies") and not again.serves("books")
    spec = json.loads((tmp_path / "reranker.json").read_text())
    del spec["domains"]  # as saved before the choice was per domain
    (tmp_path / "reranker.json").write_text(json.dumps(spec))
    older = Reranker.load(tmp_path)
    assert older.domains is None and older.serves("books") and older.serves("movies")


def test_the_token_vocabulary_does_not_depend_on_the_hash_seed() -> None:
    """It is saved with the model: the same training must write the same files (a set's order
    of strings changes with each process's PYTHONHASHSEED)."""
    import subprocess
    import sys

    code = ("import numpy as np, scipy.sparse as sp; from xdretrieve.rerank import ItemStats; "
            "texts = ['%s' % ' '.join(f'w{i * 7 + j}' for j in range(12)) for i in range(40)]; "
            "s = ItemStats([str(i) for i in range(40)], np.zeros(40), sp.csr_matrix((40, 40)), "
            "texts=texts); s.index_tokens(); print(list(s._vocab)[:30])")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2", "3")}
    assert len(runs) == 1, runs


def _untrained_fit_setup():
    """What the re-ranker's fit reads, with nothing trained: a catalog of 20 books and 20
    movies, a tower over random vectors (its ranking is arbitrary, and fixed), and 60 train
    users whose statistics pair book b{k} with movies m{k}, m{k+1}, m{k+2}."""
    import torch

    from xdretrieve.evaluate.protocol import Direction
    from xdretrieve.train.adapter import AdapterConfig
    from xdretrieve.train.catalog import Catalog
    from xdretrieve.train.tower import Tower

    ids = [f"b{k}" for k in range(20)] + [f"m{k}" for k in range(20)]
    items = {i: SimpleNamespace(domain="books" if i[0] == "b" else "movies", title=i,
                                text=f"number {i[1:]}") for i in ids}
    dataset = SimpleNamespace(items=items, domains=["books", "movies"])
    catalog = Catalog.of(dataset)
    torch.manual_seed(0)
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    tower = Tower(torch.from_numpy(vectors), catalog.rows_by_domain, AdapterConfig(dim=4))
    histories = {f"t{k}-{j}": {"books": (f"b{k}",), "movies": (f"m{(k + j) % 20}",)}
                 for k in range(20) for j in range(3)}
    return tower.eval(), dataset, catalog, histories, [Direction("books", "movies")]


def test_the_fit_candidates_are_the_towers_best_and_the_cooccurring_in_the_towers_order(
        monkeypatch) -> None:
    """What the re-ranker is fitted on is what serving re-ranks: per user, the tower's best
    and the target domain's items co-occurring with the history, in the tower's order (the
    order the report's 'without' reads), labelled by that user's own truth, whether the users
    are scored all at once or a chunk at a time (a large catalog's users are)."""
    from xdretrieve.train import rerank_fit

    tower, dataset, catalog, histories, _ = _untrained_fit_setup()
    ids = catalog.ids
    texts = [overlap_text(dataset.items[i].title, dataset.items[i].text) for i in ids]
    stats = ItemStats.fit(ids, histories, [dataset.items[i].domain for i in ids], texts)
    # users of book b{k} whose truth is movie m{k} (co-occurring) and m{k+7} (not)
    users = [(0, 1, [np.array([k]) for k in range(7)],
              [np.array([k, k + 7]) for k in range(7)])]
    groups = rerank_fit._candidate_groups(tower, catalog, texts, {(0, 1): "books->movies"},
                                          users, stats, 6)
    col = FEATURES.index("cooccurrence")
    assert len(groups) == 7
    for direction, x, y in groups:
        assert direction == "books->movies" and len(x) == 6
        assert (np.diff(x[:, FEATURES.index("score")]) <= 0).all()  # the tower's order
        assert (x[:, col] > 0).sum() == 3  # each of the three co-occurring movies
        assert (x[y == 1, col] > 0).any()  # m{k} among them, labelled relevant
    monkeypatch.setattr(rerank_fit, "SCORE_CHUNK", 3)
    chunked = rerank_fit._candidate_groups(tower, catalog, texts, {(0, 1): "books->movies"},
                                           users, stats, 6)
    for (_, x, y), (_, x_chunked, y_chunked) in zip(groups, chunked, strict=True):
        np.testing.assert_allclose(x_chunked, x, rtol=1e-5)
        np.testing.assert_array_equal(y_chunked, y)


def test_the_fit_features_are_the_towers_cosines_and_scores_of_its_best(monkeypatch) -> None:
    """The re-ranker is fitted on what serving hands it: per user, the target domain's items
    with the tower's cosine and its score (scale x cosine + the item's bias), the tower's best
    by that score among them. Fitted on other numbers, its weights would apply to features
    serving never gives."""
    import torch

    from xdretrieve.train import rerank_fit
    from xdretrieve.train.tower import pad

    tower, dataset, catalog, histories, _ = _untrained_fit_setup()
    with torch.no_grad():  # biases that reorder the tower's best (all 0 untrained)
        tower.bias.copy_(torch.from_numpy(
            np.random.default_rng(1).normal(0, 3, len(catalog.ids)).astype(np.float32)))
    ids = catalog.ids
    texts = [overlap_text(dataset.items[i].title, dataset.items[i].text) for i in ids]
    stats = ItemStats.fit(ids, histories, [dataset.items[i].domain for i in ids], texts)
    seen = []

    def recording(stats, history, history_text, candidates, candidate_texts, cosines, scores):
        seen.append((candidates, cosines, scores))
        return real(stats, history, history_text, candidates, candidate_texts, cosines, scores)

    real = rerank_fit.features
    monkeypatch.setattr(rerank_fit, "features", recording)
    hs = [np.array([k, k + 1]) for k in range(8)]
    rerank_fit._candidate_groups(tower, catalog, texts, {(0, 1): "books->movies"},
                                 [(0, 1, hs, [np.array([k]) for k in range(8)])], stats, 6)
    with torch.no_grad():
        U = tower.users(*pad(hs), 0, 1)
        cos = (U @ tower.domain_items(1).T).numpy()
        score = tower.user_scores(U, 1).numpy()
    movies = [ids[r] for r in catalog.rows_by_domain[1]]
    assert len(seen) == len(hs)
    for r, (candidates, cosines, scores) in enumerate(seen):
        at = [movies.index(c) for c in candidates]  # each one a movie
        np.testing.assert_allclose(cosines, cos[r, at], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores, score[r, at], rtol=1e-5, atol=1e-5)
        best = np.argsort(-score[r], kind="stable")[:tower_head(6)]
        assert set(best.tolist()) <= set(at)
    assert any(set(np.argsort(-cos[r])[:3]) != set(np.argsort(-score[r])[:3])
               for r in range(len(hs)))  # the case is not trivial: the biases reorder


def test_the_fit_reads_the_tower_as_served_without_its_dropout(monkeypatch) -> None:
    """Training leaves the tower in training mode, its dropout on: the re-ranker must be fitted
    and checked on the candidates and scores of the tower as it serves (no dropout), not on
    randomly thinned user vectors that no query ever gets."""
    from xdretrieve.train import rerank_fit

    tower, dataset, catalog, histories, directions = _untrained_fit_setup()
    made = []

    def recording(*args):
        made.append((args, real(*args)))
        return made[-1][1]

    real = rerank_fit._candidate_groups
    monkeypatch.setattr(rerank_fit, "_candidate_groups", recording)
    monkeypatch.setattr(rerank_fit, "_compare_on_valid",
                        lambda groups, reranker: {"kept": ["movies"]})
    users = [(0, 1, [np.array([k]) for k in range(10)], [np.array([k]) for k in range(10)])]
    train = sorted(histories)
    tower.train()  # as the tower's training leaves it (dropout 0.2)
    rerank_fit.fit_served_reranker(tower, dataset, catalog, histories, users, users, train[:30],
                                   train, directions, seed=0, candidates=6)
    tower.eval()
    assert len(made) == 2  # the fit's and the check's
    for args, groups in made:
        for (_, x, y), (_, x_served, y_served) in zip(groups, real(*args), strict=True):
            np.testing.assert_allclose(x, x_served, rtol=1e-6)
            np.testing.assert_array_equal(y, y_served)


def test_the_fit_reads_statistics_without_its_users_and_serves_those_of_every_train_user(
        monkeypatch, capsys) -> None:
    """The re-ranker is fitted on held-out users with the statistics of the tower's users
    only (a new user's items are in nobody's statistics: counted, co-occurrence would point
    at their truth), checked and saved with those of every train user, and not served at all
    where no target domain gains; the report is printed only when progress is asked for."""
    from xdretrieve.train import rerank_fit

    tower, dataset, catalog, histories, directions = _untrained_fit_setup()
    read = []

    def recording(model, catalog, texts, names, users, stats, n):
        read.append(stats)
        return real(model, catalog, texts, names, users, stats, n)

    real = rerank_fit._candidate_groups
    monkeypatch.setattr(rerank_fit, "_candidate_groups", recording)
    kept = ["movies"]
    monkeypatch.setattr(rerank_fit, "_compare_on_valid",
                        lambda groups, reranker: {"books->movies": {"without": 0.5, "with": 0.6},
                                                  "kept": list(kept)})
    users = [(0, 1, [np.array([k]) for k in range(10)], [np.array([k]) for k in range(10)])]
    train = sorted(histories)

    def fit(progress: bool):
        return rerank_fit.fit_served_reranker(tower, dataset, catalog, histories, users, users,
                                              train[:30], train, directions, seed=0,
                                              candidates=6, progress=progress)[0]

    def popularity(who: list[str]) -> np.ndarray:
        return ItemStats.fit(catalog.ids, {u: histories[u] for u in who}).popularity

    reranker = fit(progress=False)
    assert capsys.readouterr().out == ""
    np.testing.assert_array_equal(read[0].popularity, popularity(train[:30]))  # the fit's
    np.testing.assert_array_equal(read[1].popularity, popularity(train))  # the check's
    assert reranker.stats is read[1] and reranker.domains == ("movies",)
    # saved with each item's domain and text: serving's co-occurring candidates, popular items
    # and text overlap read them
    texts = [overlap_text(dataset.items[i].title, dataset.items[i].text) for i in catalog.ids]
    assert reranker.stats.texts == texts
    assert reranker.stats.cooccurring(["b3"], "movies", 5) == ["m3", "m4", "m5"]
    assert reranker.stats.popular("books")[:2] == ["b0", "b1"]
    kept.clear()
    assert fit(progress=True) is None
    assert capsys.readouterr().out.endswith("served into no domain (none gains)\n")
