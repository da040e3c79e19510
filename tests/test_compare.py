"""The comparison against the best other method: the right rival, ratio and interval."""

from __future__ import annotations

import numpy as np

from xdretrieve.evaluate.compare import against_best, to_markdown
from xdretrieve.evaluate.runner import MethodResult, Results


def _row(method: str, ndcg: np.ndarray, recall: np.ndarray | None = None) -> MethodResult:
    per_user = {"ndcg@10": ndcg, "recall@10": ndcg if recall is None else recall}
    return MethodResult("a->b", method, len(ndcg), {k: float(v.mean()) for k, v in per_user.items()},
                        0.0, 0.0, per_user=per_user)


def _results(rows: list[MethodResult]) -> Results:
    """One direction, a->b, of the rows' test users."""
    return Results("toy", rows, {"a->b": rows[0].n_users}, {}, "0", "now", 1.0)


def test_against_the_best_rival_not_own_variants() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(500)
    rows = [_row("popularity", base * 0.5), _row("itemknn", base),
            _row("xdretrieve", base * 1.5), _row("xdretrieve-no-rerank", base * 3)]
    results = _results(rows)
    (ndcg, recall) = against_best(results)
    assert ndcg.rival == "itemknn" and ndcg.metric == "ndcg@10" and recall.metric == "recall@10"
    assert abs(ndcg.ratio - 1.5) < 1e-9
    # every resample of the same users keeps the exact ratio 1.5
    assert abs(ndcg.low - 1.5) < 1e-9 and abs(ndcg.high - 1.5) < 1e-9
    assert "| a->b | ndcg@10 | xdretrieve | itemknn | 1.50x | 1.50x - 1.50x |" in to_markdown(
        [ndcg])


def test_interval_widens_with_noise_and_contains_the_ratio() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(300), rng.random(300)  # two equally good, independent methods
    results = _results([_row("itemknn", b), _row("xdretrieve", a)])
    c = against_best(results)[0]
    assert c.low < c.ratio < c.high
    assert c.low < 1.0 < c.high  # no difference can be claimed


def test_each_metric_is_compared_against_the_best_other_method_on_that_metric() -> None:
    """The best other method on recall@10 need not be the best on ndcg@10: each metric's ratio
    is against its own best."""
    ones = np.ones(100)
    rows = [_row("itemknn", 0.4 * ones, 0.2 * ones), _row("userknn", 0.2 * ones, 0.4 * ones),
            _row("xdretrieve", 0.3 * ones, 0.3 * ones)]
    ndcg, recall = against_best(_results(rows))
    assert (ndcg.rival, recall.rival) == ("itemknn", "userknn")
    assert abs(ndcg.ratio - 0.75) < 1e-9 and abs(recall.ratio - 0.75) < 1e-9


def _noisy(n: int) -> tuple[Results, np.ndarray]:
    """xdretrieve's per-user values random, its rival's all 1: the ratio is xdretrieve's mean."""
    a = np.random.default_rng(0).random(n)
    rows = [_row("itemknn", np.ones(n)), _row("xdretrieve", a)]
    return _results(rows), a


def test_the_ratio_is_that_of_the_means_over_every_test_user() -> None:
    """Not a statistic of the resamples (their median is near it, but not it)."""
    results, a = _noisy(300)
    assert against_best(results)[0].ratio == a.mean()


def test_without_a_rival_there_is_no_comparison() -> None:
    """Only xdretrieve and its own variants, or a rival without per-user values (nothing to
    resample): no comparison, and no section for it in the report."""
    ones = np.ones(50)
    alone = _results([_row("xdretrieve", ones), _row("xdretrieve-no-rerank", ones)])
    assert against_best(alone) == [] and to_markdown([]) == []
    bare = MethodResult("a->b", "itemknn", 50, {"ndcg@10": 2.0, "recall@10": 2.0}, 0.0, 0.0)
    assert against_best(_results([bare, _row("xdretrieve", ones)])) == []


def test_a_rival_that_scores_zero_gives_a_finite_ratio() -> None:
    """On a small dataset every other method may miss every test user: no division by zero."""
    rows = [_row("popularity", np.zeros(40)), _row("xdretrieve", np.full(40, 0.5))]
    c = against_best(_results(rows))[0]
    assert c.rival == "popularity"
    assert np.isfinite([c.ratio, c.low, c.high]).all() and c.ratio > 1


def test_the_interval_is_the_same_on_every_run_and_follows_the_seed() -> None:
    """A report rewritten from the same results says the same interval (the bootstrap is
    seeded), and another seed draws other resamples."""
    results, _ = _noisy(300)
    assert against_best(results) == against_best(results)
    assert against_best(results, seed=1)[0].low != against_best(results)[0].low


def test_the_interval_is_the_95_percent_one() -> None:
    """Ratio against a rival of all ones: the bootstrap of a mean, whose 95% interval reaches
    about 1.96 standard errors either side (a 90% one 1.64)."""
    results, a = _noisy(1000)
    c = against_best(results)[0]
    se = a.std() / np.sqrt(len(a))
    assert 1.8 < (c.ratio - c.low) / se < 2.15 and 1.8 < (c.high - c.ratio) / se < 2.15


def test_the_report_bolds_the_best_value_of_each_metric() -> None:
    from xdretrieve.evaluate.metrics import METRICS
    from xdretrieve.evaluate.report import to_markdown as report_markdown

    def row(method: str, value: float, mrr: float) -> MethodResult:
        return MethodResult("a->b", method, 3, {**dict.fromkeys(METRICS, value), "mrr": mrr},
                            0.0, 0.0)

    rows = [row("popularity", 0.1, 0.5), row("itemknn", 0.2, 0.25)]
    markdown = report_markdown(_results(rows), None)
    cells = {line.split(" | ")[0][2:]: line.split(" | ")[1:len(METRICS) + 1]
             for line in markdown.splitlines() if line.startswith(("| popularity", "| itemknn"))}
    assert cells["itemknn"] == ["**0.2000**"] * (len(METRICS) - 1) + ["0.2500"]
    assert cells["popularity"] == ["0.1000"] * (len(METRICS) - 1) + ["**0.5000**"]


def test_the_report_keeps_each_time_in_its_column_and_the_first_directions_settings() -> None:
    """Fit and rank times each in their own column (json, markdown, terminal); a method alone on
    its direction is bolded nowhere (no rival to be best against); the settings listed are the
    first direction's."""
    from xdretrieve.evaluate.metrics import METRICS
    from xdretrieve.evaluate.report import format_table, to_dict
    from xdretrieve.evaluate.report import to_markdown as report_markdown

    def row(direction: str, k: int) -> MethodResult:
        return MethodResult(direction, "userknn", 3, dict.fromkeys(METRICS, 0.1), 2.0, 7.5,
                            config={"k": k})

    results = Results("toy", [row("a->b", 1), row("b->a", 2)], {"a->b": 3, "b->a": 3},
                      {"split": "users.csv", "seed": 0}, "0", "now", 1.0)
    doc = to_dict(results)
    assert [(m["fit_seconds"], m["rank_seconds"]) for d in doc["directions"]
            for m in d["methods"]] == [(2.0, 7.5)] * 2
    markdown = report_markdown(results, None)
    line = "| userknn | " + " | ".join(["0.1000"] * len(METRICS)) + " | 2.0 | 7.5 |"
    assert markdown.count(line) == 2 and "**0.1000**" not in markdown
    assert '- **userknn**: `{"k": 1}`' in markdown and '{"k": 2}' not in markdown
    assert format_table(results).splitlines()[2].split()[-2:] == ["2.0", "7.5"]
