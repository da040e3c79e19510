"""Derive a second domain pair from amazon-arts-office, to check that training defaults carry.

Issue 4 asks that the defaults chosen on amazon-arts-office work unchanged on another pair, and
../shared holds only that one. This script cuts a different pair out of it: two sub-categories
of *Arts, Crafts & Sewing* (by the category path that starts each item's text), by default
painting & drawing (domain ``paint``) against sewing, needlework, fabric and knitting (domain
``sewing``). Users active in both keep their split from users.csv; office items and interactions
are dropped. It is written in other formats than the original (interactions as Parquet with a
unix ``timestamp`` instead of ``position``, items as JSONL with an extra field), so the readers'
other paths are exercised too.

    python benchmarks/derive_pair.py --data ../shared/data/amazon-arts-office --out /tmp/paint-sewing
    xdretrieve finetune --data /tmp/paint-sewing --out /tmp/paint-sewing.model
    xdretrieve evaluate --data /tmp/paint-sewing --model /tmp/paint-sewing.model --no-rerank-row

``--with-office`` keeps the office items as a third domain (six directions; users active in at
least two of the three): whether the defaults carry to a dataset of more than two domains.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Category path prefixes (after "arts crafts sewing") of each derived domain.
DOMAINS = {
    "paint": ("painting drawing",),
    "sewing": ("sewing", "needlework", "fabric", "knitting"),
}
EPOCH = 1_400_000_000  # positions become hourly unix timestamps from here


def domain_of(item: dict, with_office: bool = False) -> str | None:
    if item["domain"] != "arts":
        return "office" if with_office and item["domain"] == "office" else None
    path = " ".join(item.get("text", "").split()[3:5])
    for name, prefixes in DOMAINS.items():
        if path.startswith(prefixes):
            return name
    return None


def derive(data: Path, out: Path, with_office: bool = False) -> dict[str, int]:
    domains = [*DOMAINS, "office"] if with_office else list(DOMAINS)
    items = {}
    with open(data / "items.jsonl", encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            domain = domain_of(item, with_office)
            if domain is not None:
                items[item["item_id"]] = {**item, "domain": domain, "source_domain": item["domain"]}

    rows_by_user = defaultdict(list)
    with open(data / "interactions.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["item_id"] in items:
                rows_by_user[row["user_id"]].append(row)
    # users active in two domains or more: the others cannot be asked across domains
    both = {u for u, rows in rows_by_user.items()
            if len({items[r["item_id"]]["domain"] for r in rows}) >= 2}

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        for item in items.values():
            f.write(json.dumps(item) + "\n")
    kept = [r for u in sorted(both) for r in rows_by_user[u]]
    pq.write_table(pa.table({
        "user_id": [r["user_id"] for r in kept],
        "item_id": [r["item_id"] for r in kept],
        "domain": [items[r["item_id"]]["domain"] for r in kept],
        "timestamp": [EPOCH + 3600 * int(r["position"]) for r in kept],
    }), out / "interactions.parquet")
    splits = {}
    with open(data / "users.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["user_id"] in both:
                splits[row["user_id"]] = row["split"]
    with open(out / "users.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "split"])
        writer.writerows(splits.items())
    counts = {f"items_{d}": sum(1 for i in items.values() if i["domain"] == d) for d in domains}
    counts.update(interactions=len(kept), users=len(both),
                  **{s: sum(1 for v in splits.values() if v == s)
                     for s in ("train", "valid", "test")})
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="amazon-arts-office directory")
    parser.add_argument("--out", type=Path, required=True, help="directory to write the pair to")
    parser.add_argument("--with-office", action="store_true",
                        help="keep the office items as a third domain")
    args = parser.parse_args()
    print(json.dumps(derive(args.data, args.out, args.with_office), indent=1))


if __name__ == "__main__":
    main()
