"""Tables (markdown) and plots (PNG) of a :func:`benchmarks.suite.run_suite` result."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# (what, threshold, unit): the targets of the performance issue, on a 2-core CPU
TARGETS = {
    "p99_real_ms": 5.0,
    "p99_1m_ms": 15.0,
    "recall10": 0.98,
    "client_speedup": 20.0,
    "points_per_s": 30_000.0,
    "gpu_items_per_s": 10_000.0,
}


def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and abs(x) >= 1000):
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, threshold, measured, verdict) rows."""
    out = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    for scale in results["scales"]:
        real = scale["kind"] == "real"
        limit = TARGETS["p99_real_ms"] if real else TARGETS["p99_1m_ms"]
        judged = real or scale["info"]["items"] >= 1_000_000
        previous = {f"Qdrant Edge, {v['name']}" for v in scale["variants"]
                    if v.get("role") in ("previous", "comparison")}
        for row in scale["paths"]:
            if not row["engine"].startswith("Qdrant Edge") or row["engine"] in previous \
                    or not row["label"].startswith("full path"):
                continue
            what = f"{row['label']}, {scale['name']}"
            if row.get("skipped"):
                out.append((f"{what} p99", f"<= {limit:g} ms", "not measured: " + row["note"],
                            "n/a"))
                continue
            out.append((f"{what} p99, {_short(row['engine'])}",
                        f"<= {limit:g} ms", f"{row['p99_ms']:.2f} ms (CPU "
                        f"{row.get('cpu_p99_ms', float('nan')):.2f} ms)",
                        verdict(row["p99_ms"] <= limit if judged else None)))
        for row in scale["recall"]:
            if row.get("production"):
                comparison = f"Qdrant Edge, {row['index']}" in previous
                out.append((f"search recall@10 ({row['limit']} candidates, ef {row['hnsw_ef']}), "
                            f"{scale['name']}, {_short(row['index'])}",
                            f">= {TARGETS['recall10']}", f"{row['recall@10']:.4f}",
                            "n/a (previous layout, for comparison)" if comparison
                            else verdict(row["recall@10"] >= TARGETS["recall10"])))
        for key, ratio in scale["ratios"].items():
            if key.startswith("full path: qdrant-client"):
                out.append((f"faster than qdrant-client :memory: (full path p50), {scale['name']}",
                            f">= {TARGETS['client_speedup']:g}x" if real else "-",
                            f"{ratio:,.0f}x",
                            verdict(ratio >= TARGETS["client_speedup"]) if real else "n/a"))
    idx = results["indexing"]
    for key, name in (("edge_real", "real items"), ("edge_synthetic", "synthetic vectors")):
        if key in idx:
            r = idx[key]
            out.append((f"points/s upserted into Edge ({name}, {r['points']:,.0f})",
                        f">= {TARGETS['points_per_s']:,.0f}",
                        f"{r['points_per_s']:,.0f} (per CPU-second, worker processes included: "
                        f"{r.get('points_per_cpu_s', float('nan')):,.0f})",
                        verdict(r["points_per_s"] >= TARGETS["points_per_s"])))
    if "embed" in idx:
        e = idx["embed"]
        gpu = e["device"].startswith("cuda")
        out.append((f"MiniLM items/s embedded ({e['device']}, {e['dtype']})",
                    f">= {TARGETS['gpu_items_per_s']:,.0f} on a GPU (fp16)",
                    f"{e['items_per_s']:,.0f}",
                    verdict(e["items_per_s"] >= TARGETS["gpu_items_per_s"]) if gpu
                    else "n/a (no GPU in this run)"))
    return out


def _short(engine: str) -> str:
    return engine.removeprefix("Qdrant Edge, ")


def _scale_short(scale: dict[str, Any]) -> str:
    n = scale["info"]["items"]
    if n >= 1e6:
        return f"{scale['kind']} {n / 1e6:g}M"
    return f"{scale['kind']} {n / 1e3:.0f}k" if n >= 1e4 else f"{scale['kind']} {n:,}"


def markdown(results: dict[str, Any], figures: dict[str, str]) -> str:
    m = results["machine"]
    cfg = results["config"]
    parts = [
        "# Performance results",
        "",
        f"Run {results['started']}, `{results.get('command', 'python benchmarks/run.py')}`, "
        f"{results['wall_s'] / 60:.1f} min wall.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        f"Load average (1, 5, 15 min): {results['load_average_start']} at the start, "
        f"{results['load_average_end']} at the end; the machine is shared, so other jobs "
        "competed for the cores: wall-clock figures include waits for a core, CPU figures "
        "(process CPU time, every thread) do not.",
        f"Figures are medians over {cfg['repeats']} repetition(s) unless said otherwise; ratios "
        "are between figures of this run.",
        "",
        "## Targets",
        "",
        _table(["target", "threshold", "measured", "verdict"], targets(results)),
        "",
        "## Query latency",
        "",
        "Full path: `Retriever.user_query` (profile lookup) -> `Retriever.search` with "
        f"{cfg['candidates']} candidates in the target domain, the user's items there excluded "
        f"-> top {cfg['limit']}. With a trained model (`--model`), as `Retriever` runs it: "
        "profiles (holding the user tower's query, computed by `index`) -> "
        f"{2 * cfg['candidates']} neighbours plus every item whose bias could lift it above the "
        "best of them (scored in memory) -> re-score (scale x cosine + item bias) -> "
        f"re-ranker over {cfg['candidates']} candidates (the model's exact best "
        f"{cfg['candidates'] // 2} and items co-occurring with the history) -> top "
        f"{cfg['limit']}; re-ranker off: the model's exact top {cfg['limit']} the same way. "
        "Search: the same filtered search given the query vector "
        "(Edge and qdrant-client return payloads, NumPy only ids and scores). Milliseconds, one "
        "caller, warm process.",
    ]
    for scale in results["scales"]:
        rows = []
        for table in ("paths", "search"):
            for r in scale[table]:
                if r.get("skipped"):
                    rows.append((r["label"], r["engine"], *["-"] * 7, r["note"]))
                    continue
                rows.append((r["label"], r["engine"], _f(r["p50_ms"]), _f(r["p95_ms"]),
                             _f(r["p99_ms"]), _f(r["mean_ms"]), _f(r.get("cpu_p50_ms")),
                             _f(r.get("cpu_p99_ms")), f"{r['n']} x {r['repeats']}",
                             r.get("note", "")))
        parts += ["", f"### {scale['name']}", "",
                  _table(["what", "engine", "p50", "p95", "p99", "mean", "CPU p50", "CPU p99",
                          "queries x runs", "note"], rows)]
        if scale.get("ratios"):
            parts += ["", "p50 over the p50 of Qdrant Edge as `index` builds it (full path over "
                      "full path, search over its 200-candidate search): " + "; ".join(
                          f"{k} {v:,.1f}x" for k, v in scale["ratios"].items()) + "."]
    parts += ["", "## Throughput", "",
              "Threads calling one shared `Retriever` (each takes every n-th query), wall "
              f"clock from the first start to the last finish; {m['cores']} CPU cores.", "",
              _table(["scale", "index", "path", "threads", "queries/s", "runs"],
                     [(s["name"], _short(t["index"]), t.get("path", "full path"), t["threads"],
                       _f(t["queries_per_s"], 0), ", ".join(_f(x, 0) for x in t["runs"]))
                      for s in results["scales"] for t in s["throughput"]])]
    parts += ["", "## Recall", "",
              "recall@k of Qdrant Edge's HNSW (after `optimize()`) against NumPy exact search "
              "with the same domain filter and exclusions, same queries. First row of each "
              f"index: the retriever's own search ({cfg['candidates']} candidates at the "
              "index's `search_ef` (the shipped default: "
              f"{cfg['search_ef']}); Qdrant searches with ef at least the limit; recall of its "
              f"top {cfg['limit']} and of all {cfg['candidates']}); "
              f"then a sweep of `hnsw_ef` with {cfg['candidates']} candidates and one at limit "
              f"{cfg['limit']}. An int8 index rescores at least 200 candidates on the "
              "original vectors, so there an ef below 200 searches as 200. The trained model's "
              f"row: its own search of {5 * cfg['candidates']} neighbours by cosine, without "
              "payloads as the trained path asks it. Latency is the search alone."]
    for scale in results["scales"]:
        settings = "; ".join(
            f"{_short(v['name'])}: "
            + (f"one graph per domain (m=0, payload_m={v['hnsw']['m']})"
               if v["hnsw"].get("per_domain") else f"one graph (m={v['hnsw']['m']})")
            + f", ef_construct={v['hnsw']['ef_construct']}, search ef {v['hnsw']['search_ef']}"
            + (f", int8 (quantile 0.99, in RAM), rescore, oversampling "
               f"{v['hnsw']['oversampling']:g}" if v["hnsw"]["int8"] else "")
            + {1: ", searches on the calling thread", 0: ", search pool of one thread per CPU",
               None: ""}.get(v["hnsw"].get("search_threads"),
                             f", search pool of {v['hnsw'].get('search_threads')} threads")
            for v in scale["variants"])
        rows = [(_short(r["index"]), r["hnsw_ef"], r["limit"], _f(r.get("recall@10"), 4),
                 _f(r.get(f"recall@{cfg['candidates']}"), 4), _f(r["p50_ms"]), _f(r["p99_ms"]))
                for r in scale["recall"]]
        parts += ["", f"### {scale['name']}", "", f"HNSW: {settings}.", "",
                  _table(["index", "hnsw_ef", "limit", "recall@10",
                          f"recall@{cfg['candidates']}", "p50 ms", "p99 ms"], rows)]
    parts += ["", "## Indexing", "", _indexing(results)]
    cal = next((s["info"]["calibration"] for s in results["scales"] if s["kind"] == "synthetic"),
               None)
    if cal:
        parts += ["", "## The synthetic catalog", "", _calibration(cal, results)]
    parts += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in figures.items()]
    return "\n".join(parts) + "\n"


def _indexing(results: dict[str, Any]) -> str:
    idx = results["indexing"]
    rows = []
    if "embed" in idx:
        e = idx["embed"]
        rows.append(("embed real item texts (no cache)", f"{_f(e['items_per_s'], 0)} items/s",
                     f"{e['items']} texts of {e['mean_chars']:.0f} characters on average; "
                     f"{e['device_name']}, {e['dtype']}, batch {e['batch_size']}, max "
                     f"{e['max_seq_length']} tokens; model load {e['load_s']:.1f} s; runs "
                     + ", ".join(_f(x, 0) for x in e["items_per_s_runs"]),
                     _f(e["peak_rss_mib"], 0)))
    if "edge_real" in idx:
        r = idx["edge_real"]
        rows.append((f"upsert into Edge (real, {r['points']:,.0f} points)",
                     f"{_f(r['points_per_s'], 0)} points/s",
                     f"{r['upsert_s']:.1f} s; {_f(r.get('points_per_cpu_s'), 0)} points per "
                     f"CPU-second; `VectorStore.upsert`, batches of 1024; {r['repeats']} runs",
                     _f(r["upsert_peak_rss_mib"], 0)))
        shipped = next((v for s in results["scales"] if s["kind"] == "real"
                        for v in s["variants"] if v.get("role") == "shipped"), None)
        rows.append((f"HNSW build (real, {r['points']:,.0f} points"
                     + (f", {_short(shipped['name'])})" if shipped else ")"),
                     f"{r['build_s']:.1f} s",
                     f"`EdgeStore.build_index` (optimize + flush); {r['repeats']} runs",
                     _f(r["build_peak_rss_mib"], 0)))
    for scale in results["scales"]:
        for v in scale["variants"]:
            if not v.get("load"):
                continue
            it, us = v["load"]["items"], v["load"]["users"]
            rows.append((f"{scale['name']}: {_short(v['name'])}",
                         f"{it['build_s']:.1f} s build",
                         f"{it['points']:,} items: upsert {_f(it['points_per_s'], 0)} points/s "
                         f"({_f(it.get('points_per_cpu_s'), 0)} per CPU-second); "
                         f"{us['points']:,} profiles: upsert {us['upsert_s']:.1f} s, build "
                         f"{us['build_s']:.1f} s; 1 run",
                         _f(max(it["upsert_peak_rss_mib"], it["build_peak_rss_mib"]), 0)))
        if "client_local_load" in scale:
            r = scale["client_local_load"]["items"]
            rows.append((f"{scale['name']}: upsert into qdrant-client :memory:",
                         f"{_f(r['points_per_s'], 0)} points/s",
                         f"{r['points']:,} items in {r['upsert_s']:.1f} s",
                         _f(r["upsert_peak_rss_mib"], 0)))
    if "reindex" in idx:
        r = idx["reindex"]
        t = r["timings"]
        rows.append((f"incremental re-index, {r['changed_items']} of {r['items']:,} titles "
                     "changed", f"{r['total_s']:.1f} s",
                     f"`index_dataset`: embedded {r['items_embedded']} items, rewrote "
                     f"{r['profiles_written']:,} of {r['user_profiles']:,} profiles; " + ", ".join(
                         f"{k} {v:.1f} s" for k, v in t.items() if k != "total") +
                     f"; a no-op re-index before it: {r['noop_s']:.1f} s",
                     _f(r["peak_rss_mib"], 0)))
    method = next((v.get("memory_method") for v in idx.values() if isinstance(v, dict)
                   and v.get("memory_method")), "")
    return _table(["step", "figure", "details", "peak RSS MiB"], rows) + (
        f"\n\nMemory: {method} of the benchmark process, which also holds every vector as "
        "NumPy arrays (1M x 384 float32: 1.5 GiB) and, for the synthetic scale, its payloads."
        if method else "")


def _calibration(cal: dict[str, Any], results: dict[str, Any]) -> str:
    keys = list(cal["real_nn_cosine"])
    rows = [("real items: nearest-neighbour cosine", *(_f(cal["real_nn_cosine"][k], 3)
                                                        for k in keys)),
            ("synthetic: nearest-neighbour cosine", *(_f(cal["synthetic_nn_cosine"][k], 3)
                                                       for k in keys)),
            ("synthetic: cluster spread sigma", *(_f(cal["sigma_percentiles"][k], 3)
                                                  for k in keys))]
    return (_table(["distribution", *keys], rows) +
            f"\n\nMean cosine of random pairs: real {cal['real_pair_cosine_mean']:.3f}, "
            f"synthetic {cal['synthetic_pair_cosine_mean']:.3f} (shared direction weight "
            f"alpha = {cal['alpha']:.3f}); {cal['cluster_size']:.0f} points per cluster on "
            "average. Nearest neighbours of 2,000 sampled points, exact." + _query_table(results))


def _query_table(results: dict[str, Any]) -> str:
    scales = [s for s in results["scales"] if "query_scores" in s["info"]]
    if not scales:
        return ""
    keys = list(scales[0]["info"]["query_scores"])
    rows = [(s["name"], *(_f(s["info"]["query_scores"][k], 3) for k in keys)) for s in scales]
    return ("\n\nThe queries (cross-domain users): median over queries of the cosine of their "
            "exact nearest target-domain items (1st, 10th, 200th), of the domain's median item, "
            "and of the nearest item of their own domain. The gap between the 10th and the 200th "
            "is what the approximate search has to resolve.\n\n" + _table(["scale", *keys], rows))


def plots(results: dict[str, Any], out: Path) -> dict[str, str]:
    """latency.png (distribution of per-query latency) and recall.png (recall vs latency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = results["scales"]
    files = {}
    if not scales:
        return files
    fig, axes = plt.subplots(1, len(scales), figsize=(6.5 * len(scales), 6.5), squeeze=False)
    for ax, scale in zip(axes[0], scales, strict=True):
        for key, ms in scale["latencies_ms"].items():
            engine, _, what = key.partition(": ")
            if "as shipped" in what or engine == "NumPy brute force (exact)":
                continue  # the API as shipped and multi-threaded BLAS: in the tables only
            x = np.sort(np.asarray(ms))
            if len(x) == 0:
                continue
            full = what.startswith("full path")
            if "with re-ranker" in what:
                kind = "trained + re-ranker"
            elif "re-ranker off" in what:
                kind = "trained, re-ranker off"
            else:
                kind = "full path" if full else "search"
            ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", lw=1.8 if full else 1,
                    ls="-" if full else "--", label=f"{kind}: {_short(engine)}")
        ax.set_xscale("log")
        ax.set_xlabel("latency per query (ms, log)")
        ax.set_ylabel("fraction of queries")
        ax.set_title(scale["name"])
        ax.axhline(0.99, color="grey", lw=0.5, ls=":")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)
    files["latency distribution (ECDF; dotted line: p99)"] = "latency.png"

    limit, candidates = results["config"]["limit"], results["config"]["candidates"]
    fig, axes = plt.subplots(1, len(scales), figsize=(6.5 * len(scales), 5.5), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, scale in zip(axes[0], scales, strict=True):
        names = list(dict.fromkeys(r["index"] for r in scale["recall"]))
        by_index: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in scale["recall"]:
            by_index.setdefault((r["index"], r["limit"]), []).append(r)
        for (index, n), rows in by_index.items():
            rows.sort(key=lambda r: r["hnsw_ef"])
            xs = [r["p50_ms"] for r in rows]
            ys = [r[f"recall@{limit}"] for r in rows]
            colour = colours[names.index(index) % len(colours)]
            ax.plot(xs, ys, marker="o" if n == limit else "s", ls="-" if n == limit else "--",
                    color=colour, label=f"{_short(index)}, limit {n}")
            for r, x, y in zip(rows, xs, ys, strict=True):
                ax.annotate(f"{r['hnsw_ef']}*" if r.get("production") else str(r["hnsw_ef"]),
                            (x, y), fontsize=6, textcoords="offset points", xytext=(3, -8),
                            color=colour)
        ax.axhline(TARGETS["recall10"], color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("search latency p50 (ms, log)")
        ax.set_ylabel(f"recall@{limit} vs exact")
        ax.set_title(scale["name"], fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"HNSW recall@{limit} vs search latency. Labels: hnsw_ef (Qdrant searches at "
                 f"least the limit, x oversampling with int8); *: the retriever's "
                 f"{candidates}-candidate search at its default ef", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "recall.png", dpi=120)
    plt.close(fig)
    files["recall vs latency"] = "recall.png"
    return files


RESULTS_BEGIN = "<!-- performance: written by `python benchmarks/run.py`; edits here are lost -->"
RESULTS_END = "<!-- end of performance -->"


def check_results_md(path: Path) -> None:
    """Refuse a report that has one of the section's markers without the other (an edit lost
    it): the section would be appended a second time instead of replaced."""
    content = path.read_text() if path.is_file() else ""
    if (RESULTS_BEGIN in content) != (RESULTS_END in content):
        raise SystemExit(f"{path} has one of the performance section's two markers; put "
                         f"back the other ({RESULTS_BEGIN!r} or {RESULTS_END!r}) where the "
                         f"section begins or ends, or remove both")


def update_results_md(path: Path, text: str, out: Path) -> None:
    """Put ``text`` (a ``performance.md``) into the performance section of ``path``
    (``benchmarks/RESULTS.md``) between :data:`RESULTS_BEGIN` and :data:`RESULTS_END`, the
    rest of the file untouched: headings one level down, plots linked from where ``path`` is."""
    import os
    import re

    rel = Path(os.path.relpath(out, path.parent))
    body = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)
    body = re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"]({(rel / m.group(1)).as_posix()})", body)
    section = f"{RESULTS_BEGIN}\n{body.rstrip()}\n{RESULTS_END}\n"
    check_results_md(path)
    content = path.read_text() if path.is_file() else "# Results\n"
    if RESULTS_BEGIN in content:
        head, _, rest = content.partition(RESULTS_BEGIN)
        _, _, tail = rest.partition(RESULTS_END)
        content = head + section.rstrip("\n") + tail
    else:
        content = content.rstrip("\n") + "\n\n" + section
    path.write_text(content)


def write(results: dict[str, Any], out: Path) -> str:
    """Write performance.md, latency.png, recall.png (and latencies.json) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figures = plots(results, out)
    latencies = {s["name"]: s.pop("latencies_ms") for s in results["scales"]
                 if "latencies_ms" in s}
    (out / "latencies.json").write_text(json.dumps(latencies))
    text = markdown(results, figures)
    (out / "performance.md").write_text(text)
    return text
