"""The comparison against the best other method: the right rival, ratio and interval."""

from __future__ import annotations

import numpy as np

from xdretrieve.evaluate.compare import against_best, to_markdown
from xdretrieve.evaluate.runner import MethodResult, Results


def _row(method: str, ndcg: np.ndarray) -> MethodResult:
    per_user = {"ndcg@10": ndcg, "recall@10": ndcg}
    return MethodResult("a->b", method, len(ndcg), {k: float(v.mean()) for k, v in per_user.items()},
                        0.0, 0.0, per_user=per_user)


def test_against_the_best_rival_not_own_variants() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(500)
    rows = [_row("popularity", base * 0.5), _row("itemknn", base),
            _row("xdretrieve", base * 1.5), _row("xdretrieve-no-rerank", base * 3)]
    results = Results("toy", rows, {"a->b": 500}, {}, "0", "now", 1.0)
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
    results = Results("toy", [_row("itemknn", b), _row("xdretrieve", a)], {"a->b": 300}, {}, "0",
                      "now", 1.0)
    c = against_best(results)[0]
    assert c.low < c.ratio < c.high
    assert c.low < 1.0 < c.high  # no difference can be claimed


def test_the_report_bolds_the_best_value_of_each_metric() -> None:
    from xdretrieve.evaluate.metrics import METRICS
    from xdretrieve.evaluate.report import to_markdown as report_markdown

    def row(method: str, value: float, mrr: float) -> MethodResult:
        return MethodResult("a->b", method, 3, {**dict.fromkeys(METRICS, value), "mrr": mrr},
                            0.0, 0.0)

    rows = [row("popularity", 0.1, 0.5), row("itemknn", 0.2, 0.25)]
    markdown = report_markdown(Results("toy", rows, {"a->b": 3}, {}, "0", "now", 1.0), None)
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
