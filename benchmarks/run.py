"""Run the whole performance suite and write its report.

Usage:
    python benchmarks/run.py [--quick] [--store STORE] [--data DIR] [--model MODEL_DIR]
                             [--device cpu|cuda] [--out benchmarks/results] [--work DIR]

Without ``--store``, the real-data part (38k items) uses ``/tmp/arts.xdr`` when it exists
(build it with ``xdretrieve index --data ../shared/data/amazon-arts-office --store
/tmp/arts.xdr``) and is skipped otherwise. The store is copied before use, never written.
``--model`` names a trained model directory (``xdretrieve finetune``): the query path with its
user tower, re-score and re-ranker is measured on a store built with it; without one, those
rows are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` puts benchmarks/ first, not the root
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.suite import Config, run_suite  # noqa: E402

DEFAULT_STORE = Path("/tmp/arts.xdr")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "amazon-arts-office"
DEFAULT_RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes (30k synthetic vectors, 200 queries, 1 repetition)")
    p.add_argument("--store", type=Path, default=None, help="real xdretrieve store (copied)")
    p.add_argument("--data", type=Path, default=None,
                   help="the dataset of --store (embedding sample, incremental re-index)")
    p.add_argument("--device", default="cpu", help="encoder device: cpu, cuda, cuda:1, auto")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--results-md", type=Path, default=None,
                   help="the report to put the results into as its performance section "
                   "(default: benchmarks/RESULTS.md for a full run, none for --quick)")
    p.add_argument("--no-results-md", action="store_true", help="leave RESULTS.md alone")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--synthetic-n", type=int, default=None)
    p.add_argument("--queries", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--model", type=Path, default=None,
                   help="trained model directory: measure its query path and re-ranker")
    p.add_argument("--no-previous", action="store_true",
                   help="skip the previous release's index layout (a comparison)")
    p.add_argument("--previous-large", action="store_true",
                   help="compare with the previous layout at the synthetic scale too")
    p.add_argument("--no-real", action="store_true", help="skip the real-data part")
    p.add_argument("--threads", default=None, help="comma-separated caller counts, e.g. 1,2,4")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    store = args.store or (DEFAULT_STORE if (DEFAULT_STORE / "xdretrieve.json").is_file()
                           else None)
    if args.no_real:
        store = None
    data = args.data or (DEFAULT_DATA if store is not None and DEFAULT_DATA.is_dir() else None)
    if store is None and not args.no_real:
        logging.warning("no real store (--store, or %s): real-data figures are skipped",
                        DEFAULT_STORE)
    overrides = {k: v for k, v in {"synthetic_n": args.synthetic_n, "queries": args.queries,
                                   "repeats": args.repeats}.items() if v is not None}
    if args.no_previous:
        overrides["previous"] = False
    if args.previous_large:
        overrides["previous_large"] = True
    if args.model is not None:
        from xdretrieve.model import is_model_dir

        if not is_model_dir(args.model):
            raise SystemExit(f"--model {args.model}: not a trained model directory")
        overrides["model"] = args.model.resolve()
    if args.threads:
        overrides["threads"] = tuple(int(t) for t in args.threads.split(","))
    results_md = args.results_md or (None if args.quick else DEFAULT_RESULTS_MD)
    if args.no_results_md:
        results_md = None
    if results_md is not None:  # before the run, not after its 40 minutes
        report.check_results_md(results_md)
    with tempfile.TemporaryDirectory(prefix="xdr-bench-") as tmp:
        work = args.work or Path(tmp)
        make = Config.quick if args.quick else Config
        cfg = make(work=work, real_store=store, data=data, device=args.device, **overrides)
        args.out.mkdir(parents=True, exist_ok=True)
        partial = args.out / "performance.partial.json"

        def checkpoint(figures: dict) -> None:  # what survives a crash of a later stage
            partial.write_text(json.dumps(figures, indent=1))

        results = run_suite(cfg, checkpoint)
        partial.unlink(missing_ok=True)
    results["command"] = " ".join(["python benchmarks/run.py", *(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    (args.out / "performance.json").write_text(json.dumps(results))  # before any plotting
    text = report.write(results, args.out)  # also moves per-query latencies to latencies.json
    (args.out / "performance.json").write_text(json.dumps(results, indent=1))
    if results_md is not None:
        report.update_results_md(results_md, text, args.out)
        logging.info("performance section of %s updated", results_md)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
