"""Stress variants of a dataset: does training and evaluation hold up on data unlike the shared?

A shop's data may be larger than amazon-arts-office, and real histories have a heavy tail (the
shared pair's were cut to about 50 items a user). Two variants, each a dataset folder that
``finetune`` and ``evaluate`` read as they read the original:

- ``--heavy-users N --heavy-items H``: the original plus N train users with H random items in
  each domain (noise: they buy everything). A user's co-occurring pairs grow with H squared, so
  this is what finds statistics whose memory follows the heaviest users.
- ``--copies K``: the catalog, users and interactions K times over with disjoint ids and the same
  texts (K times the items, users and interactions; the embedding cache embeds each text once,
  so only training and evaluation grow).

    python benchmarks/stress_pair.py --data ../shared/data/amazon-arts-office --out /tmp/heavy \\
        --heavy-users 100 --heavy-items 3000
    xdretrieve finetune --data /tmp/heavy --out /tmp/heavy.model

The input must be items.jsonl, interactions.csv and users.csv (the shared data's layout).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path


def _read_items(data: Path) -> list[dict]:
    with open(data / "items.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or ()), list(reader)


def _write(out: Path, items: list[dict], interactions: tuple[list[str], list[dict]],
           users: tuple[list[str], list[dict]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(item) + "\n" for item in items)
    for name, (fields, rows) in (("interactions.csv", interactions), ("users.csv", users)):
        with open(out / name, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def with_heavy_users(data: Path, out: Path, users: int, items: int, seed: int = 0) -> None:
    """The dataset plus ``users`` train users with ``items`` random items of every domain."""
    catalog = _read_items(data)
    fields, rows = _read_csv(data / "interactions.csv")
    split_fields, splits = _read_csv(data / "users.csv")
    by_domain: dict[str, list[str]] = {}
    for item in catalog:
        by_domain.setdefault(item["domain"], []).append(item["item_id"])
    rng = random.Random(seed)
    order = "position" if "position" in fields else "timestamp"
    for k in range(users):
        user = f"heavy-{k}"
        splits.append({"user_id": user, "split": "train"})
        bought = [(i, d) for d, ids in by_domain.items() for i in rng.sample(ids, min(items, len(ids)))]
        rng.shuffle(bought)
        rows += [{"user_id": user, "item_id": i, "domain": d, order: p}
                 for p, (i, d) in enumerate(bought)]
    _write(out, catalog, (fields, rows), (split_fields, splits))


def copies(data: Path, out: Path, k: int) -> None:
    """The dataset ``k`` times over: ids suffixed ``~0`` .. ``~k-1``, texts unchanged."""
    catalog = _read_items(data)
    fields, rows = _read_csv(data / "interactions.csv")
    split_fields, splits = _read_csv(data / "users.csv")
    _write(out,
           [{**item, "item_id": f"{item['item_id']}~{c}"} for c in range(k) for item in catalog],
           (fields, [{**r, "user_id": f"{r['user_id']}~{c}", "item_id": f"{r['item_id']}~{c}"}
                     for c in range(k) for r in rows]),
           (split_fields, [{**r, "user_id": f"{r['user_id']}~{c}"} for c in range(k) for r in splits]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the dataset to start from")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the variant to")
    parser.add_argument("--heavy-users", type=int, default=0, help="train users to add who "
                        "bought --heavy-items random items of every domain")
    parser.add_argument("--heavy-items", type=int, default=3000)
    parser.add_argument("--copies", type=int, default=0, help="the dataset this many times over")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.heavy_users > 0) == (args.copies > 0):
        parser.error("give one of --heavy-users and --copies")
    if args.heavy_users:
        with_heavy_users(args.data, args.out, args.heavy_users, args.heavy_items, args.seed)
    else:
        copies(args.data, args.out, args.copies)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
