"""The ``xdretrieve`` command line: a thin layer over the Python API.

Library errors (:class:`XDRetrieveError`) and the system's (a path that cannot be written) become
one clear line on stderr and exit code 1 (:mod:`xdretrieve.cli_checks`); usage errors exit
with 2. Heavy modules are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import click

from xdretrieve import __version__
from xdretrieve.cli_checks import (
    COMMAND_CONTEXT,
    OutputDir,
    UserPath,
    bad_rows_options,
    check_device,
    fail_cleanly,
    make_settings,
    read_dataset,
    store_options,
)
from xdretrieve.paths import output_dir_problem

DEMO_DIR = Path(__file__).parent / "demo_data"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@click.group(context_settings=COMMAND_CONTEXT)
@click.version_option(__version__, prog_name="xdretrieve")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Cross-domain retrieval for cold-start users.

    Index items and users of two domains with one shared text encoder into Qdrant, then
    recommend target-domain items to a user known only from another domain.

    \b
    Quick start (the model takes a few minutes on a CPU; without one, index stores the
    pretrained encoder's vectors: fine for text search, not for cold-start users):
      xdretrieve demo
      xdretrieve finetune --data ../shared/data/amazon-arts-office --out arts-office.model
      xdretrieve index --data ../shared/data/amazon-arts-office --model arts-office.model \\
          --store shop.xdr
      xdretrieve query --store shop.xdr --user A7PVZNHRTX1J7 --domain office
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--data", type=UserPath(exists=True, file_okay=False, path_type=Path),
              help="A folder with items.*, interactions.* and optionally users.* "
                   "(instead of --items/--interactions).")
@click.option("--items", type=UserPath(path_type=Path),
              help="Items file (.jsonl, .csv, .parquet; .jsonl.gz, .csv.gz).")
@click.option("--interactions", type=UserPath(path_type=Path), help="Interactions file.")
@store_options
@click.option("--pooling", type=click.Choice(["mean", "recency"]), default=None,
              help="How the pretrained encoder's item vectors of a history become a user "
                   "vector (with a trained model of two domains its user tower does that, "
                   "and this is not used). [default: recency]")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N. [default: auto]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Encoder batch size. [default: 64]")
@click.option("--no-users", is_flag=True, help="Store items only, no user profiles.")
@click.option("--recreate", is_flag=True, help="Drop what the store holds first (to change encoder).")
@bad_rows_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@fail_cleanly
def index(data: Path | None, items: Path | None, interactions: Path | None, store: Path | None,
          url: str | None, model: str | None, pooling: str | None, device: str | None,
          batch_size: int | None, no_users: bool, recreate: bool, skip_bad_rows: bool,
          rejects: Path, quiet: bool) -> None:
    """Embed items and users and upsert them into Qdrant.

    Input is validated before anything is written: a bad row stops the command with its file,
    line and field (or is skipped with --skip-bad-rows). Rerunning on the same input changes
    nothing; on a changed catalog only changed items are re-embedded and updated.
    """
    from xdretrieve.encoder import resolve_model
    from xdretrieve.indexer import index_dataset
    from xdretrieve.store.edge import store_dir_problem

    if data is None and (items is None or interactions is None):
        raise click.UsageError("give --data DIR, or both --items and --interactions")
    settings = make_settings(store=store, url=url, model=model, pooling=pooling, device=device,
                             batch_size=batch_size)
    # before the data is read, not after: a folder that cannot be made, or one of other files
    problem = None if settings.url else store_dir_problem(Path(settings.store))
    if problem is not None:
        raise click.BadParameter(problem, param_hint="'--store'")
    resolve_model(settings.model)  # a wrong --model, too
    check_device(settings.device)  # and a CUDA device this machine lacks
    dataset = read_dataset(data, skip_bad_rows, rejects, items, interactions)
    click.echo(f"read {len(dataset.items):,} items in {len(dataset.domains)} domains "
               f"({', '.join(dataset.domains)}), {len(dataset.interactions):,} interactions "
               f"of {len(dataset.histories):,} users", err=True)
    try:
        report = index_dataset(dataset, settings, users=not no_users, recreate=recreate,
                               progress=not quiet)
    except KeyboardInterrupt:  # click then prints "Aborted!"
        click.echo("\ninterrupted: the same command goes on from where this one stopped (the "
                   "embedding cache keeps what was embedded, the store what was written)",
                   err=True)
        raise
    t = report.timings
    rows = [
        ("items", f"{report.items:,}", f"{report.items_embedded:,} embedded, "
         + (f"{report.items_rewritten:,} rewritten (other fields), " if report.items_rewritten
            else "") + f"{report.items_deleted:,} deleted"),
        ("user profiles", f"{report.user_profiles:,}", f"{report.profiles_written:,} written, "
         f"{report.profiles_deleted:,} deleted"),
    ]
    click.echo(format_table(("", "total", "changed"), rows))
    # a rate of what the encoder ran on only ("0 items/s" on a rerun reads as a fault, and
    # vectors read from the cache are no measure of the encoder)
    computed, cached = report.items_embedded - report.items_from_cache, report.items_from_cache
    parts = [f"{computed / t['embed']:,.0f} items/s"] if computed and t["embed"] else []
    parts += [f"{'all ' if not computed else ''}{cached:,} from the embedding cache"] if cached else []
    rate = f" ({', '.join(parts)})" if parts else ""
    click.echo(f"\nload encoder {t.get('load_encoder', 0):.1f} s, embed {t['embed']:.1f} s"
               f"{rate}, upsert {t['upsert_items']:.1f} s,"
               f" users {t.get('users', 0):.1f} s, HNSW build {t['build_index']:.1f} s, "
               f"total {t['total']:.1f} s")
    click.echo(f"store: {settings.url or settings.store}"
               + (" (complete now: an interrupted run had written part of it)" if report.resumed
                  else "" if report.changed else " (already up to date: nothing changed)"))
    if report.items_new_to_model:
        click.echo(f"note: {report.items_new_to_model:,} of the {report.items:,} items are new "
                   f"to the trained model (added since it was trained, it learned no bias for "
                   f"them): they seldom reach a user's top 10 until it is trained again with "
                   f"them (`xdretrieve finetune`)", err=True)


@main.command()
@click.option("--user", "user_id", help="A stored user's id.")
@click.option("--history", help="Comma-separated item ids: a user the store has never seen.")
@click.option("--text", help="A free-text query.")
@click.option("--users", "users_file", type=click.File("r", encoding="utf-8-sig"), metavar="FILE",
              help="A batch: a file of stored users' ids, one per line ('-': standard input; "
                   "blank lines, '#' comments and a first line 'user_id', a column's header, "
                   "skipped). Writes JSON Lines, one object per "
                   "user in the file's order, as --json writes one.")
@click.option("--out", type=UserPath(dir_okay=False, path_type=Path),
              help="With --users: write the JSON Lines here (replaced whole when the batch is "
                   "done, untouched if it fails) instead of to standard output.")
@click.option("--unknown-users", type=click.Choice(["stop", "popular"]), default="stop",
              show_default=True,
              help="With --users: what an id the store does not know gets. 'stop': the batch "
                   "stops naming its line (a typo, or a table given for a column); 'popular': "
                   "the target domain's most popular items, as a user with no history gets "
                   "(its answer says so), and a count of such users at the end.")
@click.option("--domain", required=True, help="The target domain to recommend from.")
@click.option("--limit", "-k", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="How many items to return (the k of top-k).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--explain", is_flag=True,
              help="Also show why the re-ranker put each item there: the model's score, how "
                   "often a train user had it together with one of the history's items "
                   "(co-bought), its popularity, its text overlap with the history, and the "
                   "feature that counted most (in JSON: every feature and its part of the "
                   "score).")
@store_options
@fail_cleanly
def query(user_id: str | None, history: str | None, text: str | None, users_file: TextIO | None,
          out: Path | None, unknown_users: str, domain: str, limit: int, as_json: bool,
          explain: bool, store: Path | None, url: str | None, model: str | None) -> None:
    """Recommend items of --domain for a user, a history, a text or a batch of users.

    \b
    Exactly one of:
      --user ID              a stored user (their other domains' history is the query)
      --history ID,ID,...    a cold-start user given by item ids, oldest first
      --text "..."           a free-text query
      --users FILE           a batch of stored users, one id per line -> JSON Lines
    """
    from xdretrieve.retriever import Retriever

    given = [x for x in (user_id, history, text, users_file) if x is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --user, --history, --text, --users")
    if out is not None and users_file is None:
        raise click.UsageError("--out goes with --users (one answer prints to standard output)")
    if unknown_users != "stop" and users_file is None:
        raise click.UsageError("--unknown-users goes with --users (--user names one user, and "
                               "--history '' is a user with no history)")
    with Retriever(make_settings(store=store, url=url, model=model)) as retriever:
        if users_file is not None:
            return _query_batch(retriever, users_file, out, domain, limit, explain,
                                popular_for_unknown=unknown_users == "popular")
        if user_id is not None:
            q = retriever.user_query(user_id.strip(), domain)  # ids are read stripped
        elif history is not None:
            q = retriever.history_query([i.strip() for i in history.split(",") if i.strip()],
                                        domain)
        else:
            q = retriever.text_query(text or "", domain)
        hits = retriever.search(q, domain, limit)
    if as_json:
        click.echo(json.dumps(_answer(q, domain, hits, explain), indent=2))
        return
    click.echo(f"{q.source} -> {domain}")
    if explain and hits and hits[0].why is not None:
        click.echo(format_table(
            ("rank", "item_id", "score", *EXPLAINED, "counted most", "title"),
            [(r, h.item_id, f"{h.score:.4f}", *_explained(h), h.title[:50])
             for r, h in enumerate(hits, start=1)]))
        return
    if explain:
        click.echo("(no re-ranker ordered this answer: it is the model's score or the nearest "
                   "neighbours, nothing more to explain)")
    click.echo(format_table(("rank", "item_id", "score", "title"),
                            [(r, h.item_id, f"{h.score:.4f}", h.title[:70])
                             for r, h in enumerate(hits, start=1)]))


def _answer(q: Any, domain: str, hits: Sequence[Any], explain: bool) -> dict[str, Any]:
    """One answer as --json prints it."""
    return {"query": q.source, "domain": domain, "hits": [
        {"rank": r, "item_id": h.item_id, "title": h.title, "score": round(h.score, 6),
         **({"why": h.why} if explain else {})}
        for r, h in enumerate(hits, start=1)]}


def _query_batch(retriever: Any, users_file: TextIO, out: Path | None, domain: str,
                 limit: int, explain: bool, popular_for_unknown: bool = False) -> None:
    """Answer every user id of ``users_file`` into JSON Lines. An unknown user stops the batch
    with the file and line, or (``popular_for_unknown``) gets the answer of a user with no
    history; ``out`` is written to a temporary file beside it and moved over it only when
    every user is answered, so a failed or interrupted run leaves it as it was."""
    from tqdm.auto import tqdm

    from xdretrieve.errors import NotFoundError

    retriever.check_domain(domain)  # before the file: a wrong domain is not any line's fault
    where = getattr(users_file, "name", "<stdin>")
    try:  # utf-8-sig: a list saved by a spreadsheet starts with a byte-order mark
        users = [(n, line.strip()) for n, line in enumerate(users_file, start=1)
                 if line.strip() and not line.lstrip().startswith("#")]
    except UnicodeDecodeError as e:
        raise click.ClickException(f"{where}: not UTF-8 text ({e.reason}); save it "
                                   f"as UTF-8") from None
    if users and users[0][1] == "user_id":  # the column's header (`cut -d, -f1 users.csv`)
        users = users[1:]
    sink, tmp = sys.stdout, None
    if out is not None:
        problem = output_dir_problem(out.parent)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="'--out'")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # the umask's mode, as `out`
        sink = open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed below, then moved
    unknown = 0
    try:
        for n, user in tqdm(users, desc=f"recommending {domain}", unit="user", disable=None):
            try:
                q = retriever.user_query(user, domain)
            except NotFoundError as e:
                if not popular_for_unknown:  # (the domain was checked: the user is unknown)
                    hint = (" (one id per line: the file looks like a table; give its user_id "
                            "column)" if "," in user or "\t" in user else "")
                    raise click.ClickException(f"{where}, line {n}: {e}{hint}") from e
                unknown += 1
                q = replace(retriever.history_query([], domain),
                            source=f"unknown user {user}: the most popular items")
            answer = _answer(q, domain, retriever.search(q, domain, limit), explain)
            sink.write(json.dumps({"user_id": user, **answer}) + "\n")
        if tmp is not None:
            sink.close()
            os.replace(tmp, out)
            tmp = None
            click.echo(f"wrote {len(users):,} answer{'' if len(users) == 1 else 's'} to {out}",
                       err=True)
        if unknown:
            click.echo(f"{unknown:,} of {len(users):,} users unknown to the store got the most "
                       f"popular items of {domain}", err=True)
    finally:
        if tmp is not None:
            sink.close()
            os.unlink(tmp)


EXPLAINED = ("model", "co-bought", "popularity", "overlap")
REASONS = {"score": "model score", "cosine": "similarity", "log_popularity": "popularity",
           "cooccurrence": "co-bought", "cooccurrence_norm": "co-bought (normalised)",
           "cooccurrence_cond": "co-bought (conditional)", "text_overlap": "text overlap"}


def _explained(hit) -> tuple[str, ...]:
    """The --explain columns of a re-ranked hit: the model's score, the train users' pairs of a
    history item and this one, train interactions with it, the share of its text tokens in
    the history's text, and the feature with the largest part of the re-ranker's score."""
    why = hit.why
    f, parts = why["features"], why["contributions"]
    top = max(parts, key=parts.get)
    # a part counts for a value below the usual where the weight is negative: say so, or an
    # item no train user had reads as recommended for its popularity
    reason = ("low " if why["standardised"][top] < 0 else "") + REASONS.get(top, top)
    return (f"{f['score']:.2f}", f"{round(math.expm1(f['cooccurrence'])):,}",
            f"{round(math.expm1(f['log_popularity'])):,}", f"{f['text_overlap']:.0%}",
            f"{reason} ({parts[top]:+.2f})")


@main.command()
@store_options
@fail_cleanly
def info(store: Path | None, url: str | None, model: str | None) -> None:
    """Show what built a store and what it holds (and what its trained model learned)."""
    from xdretrieve.store import ITEMS, USERS, open_store

    settings = make_settings(store=store, url=url, model=model)
    with open_store(settings) as s:
        meta = s.read_info()
        if meta is None:
            raise click.ClickException(f"no xdretrieve store at {settings.url or settings.store}")
        out = meta.summary()
        out["points"] = {c: s.count(c) for c in (ITEMS, USERS) if s.exists(c)}
    if meta.extra.get("trained"):
        from xdretrieve.model import model_summary

        out["model"] = model_summary(Path(meta.extra["trained"]))
    click.echo(json.dumps(out, indent=2))


@main.command()
@click.option("--store", type=OutputDir(), default=Path(".xdretrieve-demo"), show_default=True,
              help="Where to build the store (rebuilt on every run); the model goes to STORE.model.")
@fail_cleanly
def demo(store: Path) -> None:
    """Train a model on the small packaged books/movies sample, index the sample with it and
    answer cold-start users: the whole pipeline (finetune, index, query) in seconds.

    Runs on the embedded Qdrant and the packaged encoder: no server, no GPU, no network.
    """
    from xdretrieve.data import Dataset
    from xdretrieve.indexer import index_dataset
    from xdretrieve.retriever import Retriever
    from xdretrieve.train.finetune import finetune
    from xdretrieve.train.rerank_fit import describe_rerank

    dataset = Dataset.from_dir(DEMO_DIR)
    model_dir = store.with_name(store.name + ".model")
    base = make_settings()
    n_train = sum(1 for s in (dataset.splits or {}).values() if s == "train")
    click.echo(f"training a model on the demo sample ({len(dataset.items)} items: "
               f"{', '.join(dataset.domains)}; {n_train} train users) into {model_dir} ...")
    manifest = finetune(dataset, model_dir, base)
    click.echo(f"done in {manifest['train_seconds']:.1f} s; "
               f"{describe_rerank(manifest['reranker'])}")
    settings = make_settings(store=store, model=str(model_dir))
    click.echo(f"indexing the sample with it into {store} ...")
    report = index_dataset(dataset, settings, recreate=True, progress=True)
    click.echo(f"done in {report.timings['total']:.1f} s "
               f"({report.items_embedded} items embedded)\n")
    test_users = [u for u, s in (dataset.splits or {}).items() if s == "test"][:2]
    with Retriever(settings) as retriever:
        for user in test_users:
            per_domain = dataset.histories[user]
            source, target = sorted(per_domain, key=lambda d: d != "books")[:2]
            history = per_domain[source]
            click.echo(f"user {user}, treated as cold-start in {target}: the query is their "
                       f"{len(history)} {source} only")
            for iid in history:
                click.echo(f"   {source}: {dataset.items[iid].title}")
            hits = retriever.recommend_history(history, target, limit=5)
            click.echo(format_table(("rank", target, "score"),
                                    [(r, h.title, f"{h.score:.3f}")
                                     for r, h in enumerate(hits, start=1)]))
            truth = set(per_domain[target])
            found = sum(h.item_id in truth for h in hits)
            verb = "is" if found == 1 else "are"
            click.echo(f"   ({found} of these 5 {verb} in the user's held-out {target} history)\n")
    click.echo(f"Try: xdretrieve query --store {store} --history book-01,book-05 --domain movies\n"
               f"     xdretrieve query --store {store} --history book-01,book-05 --domain movies "
               f"--explain\n"
               f"     xdretrieve query --store {store} --text 'space opera' --domain movies")


def _register_own_modules() -> None:
    """Commands that live in their own modules (which import cli_checks, not this module)."""
    from xdretrieve.evaluate.cli import evaluate
    from xdretrieve.serve_cli import serve
    from xdretrieve.train.cli import finetune

    for command in (evaluate, finetune, serve):
        main.add_command(command)


_register_own_modules()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
