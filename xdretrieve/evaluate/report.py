"""Writing results out: ``results.json`` (everything, for machines), ``report.md`` (tables per
direction, for people), ``metrics.png`` (ndcg@10 and recall@10 by method and direction), and a
plain-text table for the terminal.

Example:
    >>> paths = write_report(results, "results/")                      # doctest: +SKIP
    >>> print(format_table(results))
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from xdretrieve.errors import MissingDependencyError
from xdretrieve.evaluate.metrics import METRICS
from xdretrieve.evaluate.runner import Results

PLOT_MISSING = "the plot needs matplotlib: pip install 'matplotlib>=3.8'"

PLOTTED = ("ndcg@10", "recall@10")


def to_dict(results: Results) -> dict[str, Any]:
    """The JSON document: run metadata, then per direction the test-user count and each
    method's metrics, timings and configuration."""
    from dataclasses import asdict

    from xdretrieve.evaluate.compare import against_best

    return {
        "dataset": results.dataset,
        "version": results.version,
        "started": results.started,
        "runtime_seconds": round(results.runtime_seconds, 3),
        "config": results.config,
        "metrics": list(METRICS),
        "directions": [
            {
                "direction": d,
                "n_users": results.n_users[d],
                "methods": [
                    {"method": r.method, "n_users": r.n_users,
                     "metrics": {k: r.metrics[k] for k in METRICS},
                     "fit_seconds": round(r.fit_seconds, 3),
                     "rank_seconds": round(r.rank_seconds, 3), "config": r.config}
                    for r in results.rows if r.direction == d
                ],
            }
            for d in results.directions
        ],
        "against_best": [asdict(c) for c in against_best(results)],
    }


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(results: Results) -> str:
    """A plain aligned table of every (direction, method), for stdout."""
    headers = ["direction", "method", "users", *METRICS, "fit s", "rank s"]
    rows = [[r.direction, r.method, str(r.n_users), *(f"{r.metrics[k]:.4f}" for k in METRICS),
             f"{r.fit_seconds:.1f}", f"{r.rank_seconds:.1f}"] for r in results.rows]
    return _table(headers, rows)


def to_markdown(results: Results, plot_name: str | None = "metrics.png") -> str:
    """The Markdown report: one table per direction, the best value of each metric in bold."""
    c = results.config
    out = [f"# Cold-start evaluation: {results.dataset}", "",
           f"Protocol: shared/EVALUATION.md (full ranking over every target item). "
           f"xdretrieve {results.version}, started {results.started}, "
           f"{results.runtime_seconds:.0f} s in all. Split: {c.get('split')}; seed {c.get('seed')}"
           + (f"; first {c['max_users']} test users per direction" if c.get("max_users") else "")
           + ".", ""]
    if plot_name:
        out += [f"![ndcg@10 and recall@10 by method and direction]({plot_name})", ""]
    for d in results.directions:
        rows = [r for r in results.rows if r.direction == d]
        out += [f"## {d} ({results.n_users[d]} test users)", ""]
        if not rows:
            out += ["No test user has interactions in both domains.", ""]
            continue
        best = {k: max(r.metrics[k] for r in rows) for k in METRICS}
        out.append("| method | " + " | ".join(METRICS) + " | fit s | rank s |")
        out.append("|---|" + "---:|" * (len(METRICS) + 2))
        for r in rows:
            cells = [(f"**{r.metrics[k]:.4f}**" if r.metrics[k] == best[k] and len(rows) > 1
                      else f"{r.metrics[k]:.4f}") for k in METRICS]
            out.append(f"| {r.method} | " + " | ".join(cells)
                       + f" | {r.fit_seconds:.1f} | {r.rank_seconds:.1f} |")
        out.append("")
    from xdretrieve.evaluate.compare import against_best
    from xdretrieve.evaluate.compare import to_markdown as comparison_markdown

    out += comparison_markdown(against_best(results))
    configs = {r.method: r.config for r in results.rows if r.config}
    if configs:
        out += ["## Method settings", "",
                "Hyper-parameters as used (chosen on valid users where a grid is listed), first "
                "direction shown; results.json has every direction.", ""]
        first = results.directions[0] if results.directions else None
        for name in results.methods:
            r = next((r for r in results.rows if r.method == name and r.direction == first),
                     None) or next(r for r in results.rows if r.method == name)
            if r.config:
                out.append(f"- **{name}**: `{json.dumps(r.config)}`")
        out.append("")
    return "\n".join(out)


def plot(results: Results, path: str | Path, metrics: tuple[str, ...] = PLOTTED) -> Path:
    """Grouped bars, one panel per metric: directions on the x axis, one bar per method, values
    written on the bars. Uses the Agg canvas directly (no pyplot, no global backend change)."""
    import numpy as np

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # the `eval` extra
        raise MissingDependencyError(PLOT_MISSING) from e

    directions, methods = results.directions, results.methods
    panel_width = max(4.5, 1.5 + 0.45 * len(methods) * len(directions))  # inches
    fig = Figure(figsize=(panel_width * len(metrics), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(methods))]
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(directions))
    for ax, metric in zip(axes, metrics, strict=True):
        top = 0.0
        for i, (method, color) in enumerate(zip(methods, colors, strict=True)):
            values = [results.get(d, method).metrics[metric]
                      if any(r.direction == d and r.method == method for r in results.rows)
                      else np.nan for d in directions]
            bars = ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=method, color=color)
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2, rotation=90)
            top = max(top, np.nanmax(values) if np.isfinite(values).any() else 0.0)
        ax.set_xticks(x, [f"{d}\n({results.n_users[d]} users)" for d in directions])
        ax.set_ylabel(metric)
        ax.set_ylim(0, top * 1.25 or 1.0)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(methods), 6),
               title="method", fontsize=9)
    fig.suptitle(f"{results.dataset}: cold-start cross-domain, full ranking")
    path = Path(path)
    fig.savefig(path, dpi=150)
    return path


def write_report(results: Results, out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and metrics.png into ``out_dir`` (created if needed);
    without matplotlib, the first two (the plot is left out of the report, not the figures).

    Returns:
        name -> path of each file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "report.md",
             "plot": out / "metrics.png"}
    paths["json"].write_text(json.dumps(to_dict(results), indent=2) + "\n", encoding="utf-8")
    try:
        plot(results, paths["plot"])
    except MissingDependencyError as e:
        logging.getLogger(__name__).warning("%s: not drawn (%s)", paths.pop("plot"), e)
    plot_name = paths["plot"].name if "plot" in paths else None
    paths["markdown"].write_text(to_markdown(results, plot_name), encoding="utf-8")
    return paths
