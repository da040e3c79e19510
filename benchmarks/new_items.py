"""Items added to the catalog after training: does the trained model recommend them?

A shop's catalog grows between trainings. This leaves a seeded share of one domain's items (and
every interaction with them) out of training, trains a model with the default settings on the
rest, indexes the whole catalog with it (the left-out items go through the item adapter like any
other item, with no learned bias), and counts, for the test users of each direction into that
domain, how many of the left-out items reach their top 10, with and without the re-ranker,
against how many of the users' target items are left-out ones.

    python benchmarks/new_items.py --data ../shared/data/amazon-arts-office --domain office \
        --work /tmp/new-items                 # about 2 minutes on 2 cores, cache warm
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/new_items.py` puts benchmarks/ first
    sys.path.insert(0, str(ROOT))

from xdretrieve.config import Settings  # noqa: E402
from xdretrieve.data import Dataset  # noqa: E402
from xdretrieve.evaluate.protocol import Protocol, Split  # noqa: E402
from xdretrieve.indexer import index_dataset  # noqa: E402
from xdretrieve.retriever import Retriever  # noqa: E402
from xdretrieve.train.finetune import finetune  # noqa: E402

K = 10


def left_out(dataset: Dataset, domain: str, share: float, seed: int) -> set[str]:
    """A seeded ``share`` of ``domain``'s items."""
    ids = sorted(item.item_id for item in dataset.items_in(domain))
    return set(random.Random(seed).sample(ids, round(share * len(ids))))


def without(dataset: Dataset, held: set[str]) -> Dataset:
    """The catalog as it was before ``held`` were added: those items and their interactions
    gone, each user in the split the whole dataset has (without users.*, a split drawn on the
    smaller dataset could train on users the whole one tests)."""
    split = Split.of(dataset)
    groups = {"train": split.train, "valid": split.valid, "test": split.test}
    return Dataset({i: item for i, item in dataset.items.items() if i not in held},
                   [x for x in dataset.interactions if x.item_id not in held],
                   {u: name for name, users in groups.items() for u in users},
                   f"{dataset.name} without {len(held)} items")


def count(settings: Settings, protocol: Protocol, domain: str, held: set[str]) -> dict:
    """Per direction into ``domain``: left-out items among the test users' top 10 (and of
    those, the users' own), with and without the re-ranker, and among their target items."""
    found: dict[str, dict] = {}
    for rerank in (True, False):
        name = "re-ranked" if rerank else "re-ranker off"
        with Retriever(settings.model_copy(update={"rerank": rerank})) as retriever:
            for direction in protocol.directions():
                if direction.target != domain:
                    continue
                task = protocol.task(direction)
                truth = [{task.target_items[j] for j in t} for t in task.truth]
                row = found.setdefault(str(direction), {
                    "users": len(task), "target items": sum(map(len, truth)),
                    "left-out among them": sum(len(t & held) for t in truth)})
                shown = relevant = 0
                for history, mine in zip(task.queries, truth, strict=True):
                    top = [h.item_id for h in retriever.recommend_history(
                        list(history), domain, limit=K)]
                    shown += sum(i in held for i in top)
                    relevant += sum(i in held and i in mine for i in top)
                row[f"left-out in top {K}, {name}"] = shown
                row[f"relevant left-out in top {K}, {name}"] = relevant
    return found


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--domain", required=True, help="the domain whose new items are counted")
    p.add_argument("--share", type=float, default=0.1, help="share of its items left out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", required=True, type=Path, help="model and store go here")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    dataset = Dataset.from_dir(args.data)
    if not 0 < args.share < 1:
        raise SystemExit(f"--share {args.share}: a share between 0 and 1")
    if args.domain not in dataset.domains:
        raise SystemExit(f"--domain {args.domain}: the data has {', '.join(dataset.domains)}")
    held = left_out(dataset, args.domain, args.share, args.seed)
    model, store = args.work / "model", args.work / "store"
    finetune(without(dataset, held), model, progress=True)
    settings = Settings(model=str(model), store=store)
    index_dataset(Dataset(dict(dataset.items), []), settings, users=False, recreate=True)
    report = {"data": str(args.data), "domain": args.domain, "left out": len(held),
              "of": len(dataset.items_in(args.domain)), "seed": args.seed,
              "directions": count(settings, Protocol(dataset), args.domain, held)}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
