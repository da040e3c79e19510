"""``xdretrieve evaluate``: the protocol of shared/EVALUATION.md from the command line.

Registered into the main ``xdretrieve`` group, and runnable alone::

    python -m xdretrieve.evaluate.cli --data ../shared/data/amazon-arts-office --out results/

Only click is imported at module level, so that ``xdretrieve --help`` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from xdretrieve.cli_checks import (
    COMMAND_CONTEXT,
    OutputDir,
    UserPath,
    bad_rows_options,
    fail_cleanly,
    make_settings,
    read_dataset,
)
from xdretrieve.errors import XDRetrieveError


@click.command("evaluate", context_settings=COMMAND_CONTEXT)
@click.option("--data", required=True,
              type=UserPath(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder: items.*, interactions.* and optionally users.* (the split).")
@click.option("--direction", "directions", multiple=True, metavar="S->T",
              help="Direction to evaluate, e.g. 'arts->office'; repeatable. "
                   "[default: every ordered pair of domains]")
@click.option("--method", "methods", multiple=True, metavar="NAME",
              help="Method to evaluate; repeatable. Baselines: popularity, itemknn, userknn, "
                   "emcdr; retriever-backed: zeroshot (the pretrained encoder that --model "
                   "starts from, mean pooling), "
                   "xdretrieve (the configured pipeline, as `xdretrieve query` runs it). "
                   "[default: all of them]")
@click.option("--max-users", type=click.IntRange(min=1), default=None,
              help="Only the first N test users of each direction (users.csv order).")
@click.option("--out", type=OutputDir(), default=Path("results"),
              show_default=True, help="Folder for results.json, report.md and metrics.png, and "
                   "stores/ (the retriever-backed methods' Qdrant stores, about 50 MB each on "
                   "amazon-arts-office, which a rerun reuses).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the methods. (A dataset without users.csv gets one fixed seeded split, "
                   "the one finetune trains on: 10% of the users active in two domains test, "
                   "5% valid.)")
@click.option("--model", default=None, metavar="NAME|DIR",
              help="Encoder or trained model of the 'xdretrieve' method. [default: the packaged "
                   "all-MiniLM-L6-v2]")
@click.option("--pooling", type=click.Choice(["mean", "recency"]), default=None,
              help="User pooling of the 'xdretrieve' method over the pretrained encoder "
                   "(a trained --model's user tower pools instead). [default: recency]")
@click.option("--compare", "variants", multiple=True, metavar="NAME=DIR",
              help="Also evaluate method 'xdretrieve-NAME': the pipeline with the encoder or "
                   "trained model DIR (e.g. one trained without a part, for an ablation); "
                   "repeatable.")
@click.option("--no-rerank-row", is_flag=True,
              help="Also evaluate 'xdretrieve-no-rerank': the --model pipeline without its "
                   "re-ranker.")
@bad_rows_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@fail_cleanly
def evaluate(data: Path, directions: tuple[str, ...], methods: tuple[str, ...],
             max_users: int | None, out: Path, seed: int, model: str | None,
             pooling: str | None, variants: tuple[str, ...], no_rerank_row: bool,
             skip_bad_rows: bool, rejects: Path, quiet: bool) -> None:
    """Evaluate cold-start cross-domain recommendation (shared/EVALUATION.md).

    Test users are known only by their source-domain history; every method ranks every
    target-domain item; recall, ndcg and hit rate at 10 and 50 and mrr are averaged over the test
    users of each direction. Prints a table and writes results.json, report.md and metrics.png.

    \b
    Examples:
      xdretrieve evaluate --data ../shared/data/amazon-arts-office --max-users 200
      xdretrieve evaluate --data ../shared/data/amazon-arts-office --model arts-office.model \\
          --no-rerank-row --compare mean-pool=mean.model --compare coral=coral.model
    """
    from xdretrieve.evaluate.protocol import Direction
    from xdretrieve.evaluate.registry import BASELINES, METHODS
    from xdretrieve.evaluate.retrieval import RETRIEVER_METHODS, register_retriever_methods
    from xdretrieve.model import is_model_dir

    settings = make_settings(model=model, pooling=pooling)
    extra = {}
    for spec in variants:
        name, sep, where = spec.partition("=")
        if not sep or not name.strip() or not where.strip():
            raise click.BadParameter(f"'{spec}' is not NAME=DIR", param_hint="'--compare'")
        extra[f"xdretrieve-{name.strip()}"] = make_settings(model=where.strip(), pooling=pooling)
    if no_rerank_row:
        extra["xdretrieve-no-rerank"] = settings.model_copy(update={"rerank": False})
    register_retriever_methods(settings, out, extra)

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise click.BadParameter(f"unknown method '{unknown[0]}'; known methods: "
                                 f"{', '.join(METHODS)}", param_hint="'--method'")
    try:
        parsed = [Direction.parse(d) for d in directions]
    except XDRetrieveError as e:
        raise click.BadParameter(str(e), param_hint="'--direction'") from e
    from xdretrieve.evaluate.report import format_table, write_report
    from xdretrieve.evaluate.runner import evaluate as run

    chosen = list(methods) or [*BASELINES, *RETRIEVER_METHODS]
    chosen += [name for name in extra if name not in chosen]
    if "xdretrieve" in chosen and not is_model_dir(settings.model):  # ('~' read as home)
        # the row's name alone would pass an untrained encoder off as the trained pipeline
        click.echo(f"note: '{settings.model}' is not a model `xdretrieve finetune` wrote, so the "
                   f"'xdretrieve' row is that encoder untrained (no user tower, no re-ranker); "
                   f"give --model MODEL_DIR for the cold-start pipeline", err=True)
    dataset = read_dataset(data, skip_bad_rows, rejects)
    out.mkdir(parents=True, exist_ok=True)  # a folder that cannot be made fails now, not after
    results = run(dataset, directions=parsed or None, methods=chosen,
                  max_users=max_users, seed=seed, progress=not quiet)
    paths = write_report(results, out)
    click.echo(format_table(results))
    counts = ", ".join(f"{d}: {n}" for d, n in results.n_users.items())
    click.echo(f"\ntest users: {counts}; {results.runtime_seconds:.1f} s in all")
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":  # pragma: no cover - `python -m xdretrieve.evaluate.cli`
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    evaluate()
