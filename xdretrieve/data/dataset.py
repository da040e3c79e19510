"""A validated cross-domain dataset: items, interactions ordered into histories, the split."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xdretrieve.data.readers import (
    FORMATS,
    RejectLog,
    read_interactions,
    read_items,
    read_users,
)
from xdretrieve.data.records import Interaction, Item
from xdretrieve.errors import DataError


@dataclass
class Dataset:
    """Items of every domain, interactions, and each user's history per domain.

    ``histories[user][domain]`` lists item ids oldest first (by position or timestamp; equal
    values keep file order). ``splits`` maps users to train/valid/test when users.csv was given.
    """

    items: dict[str, Item]
    interactions: list[Interaction]
    splits: dict[str, str] | None = None
    name: str = ""
    histories: dict[str, dict[str, tuple[str, ...]]] = field(init=False, repr=False)
    domains: tuple[str, ...] = field(init=False)
    # what is computed from the data once and shared (the split, keyed by its seed): the data
    # are not changed after loading
    derived: dict[Any, Any] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        by_user: dict[str, list[tuple[float, int, Interaction]]] = defaultdict(list)
        for i, x in enumerate(self.interactions):
            by_user[x.user_id].append((x.order, i, x))
        self.histories = {}
        for user, events in by_user.items():
            events.sort(key=lambda e: (e[0], e[1]))
            per_domain: dict[str, list[str]] = defaultdict(list)
            for _, _, x in events:
                per_domain[x.domain].append(x.item_id)
            self.histories[user] = {d: tuple(ids) for d, ids in per_domain.items()}
        self.domains = tuple(sorted({item.domain for item in self.items.values()}))

    def __repr__(self) -> str:
        # counts, not the records: a notebook that shows a real catalog must not print megabytes
        split = ""
        if self.splits is not None:
            counts = Counter(self.splits.values())
            split = ", split " + " / ".join(f"{counts[r]:,} {r}" for r in sorted(counts))
        return (f"Dataset({self.name!r}: {len(self.items):,} items in "
                f"{', '.join(self.domains) or 'no domain'}, {len(self.interactions):,} "
                f"interactions of {len(self.histories):,} users{split})")

    @classmethod
    def load(
        cls,
        items: str | Path,
        interactions: str | Path,
        users: str | Path | None = None,
        rejects: RejectLog | None = None,
    ) -> Dataset:
        """Read and validate the files. See :mod:`xdretrieve.data.readers` for the errors."""
        item_map = read_items(items, rejects)
        events = read_interactions(interactions, item_map, rejects)
        splits = read_users(users, rejects) if users is not None else None
        return cls(item_map, events, splits, name=Path(items).resolve().parent.name)

    @classmethod
    def from_dir(cls, directory: str | Path, rejects: RejectLog | None = None) -> Dataset:
        """Load ``items.*``, ``interactions.*`` and, when present, ``users.*`` from a folder."""
        directory = Path(directory)
        if not directory.is_dir():
            what = "a file, not a folder" if directory.exists() else "no such folder"
            raise DataError(str(directory), None, None,
                            f"{what}: give the dataset's folder (or load files with "
                            f"Dataset.load(items, interactions))")

        def find(stem: str, required: bool) -> Path | None:
            found = [p for p in (directory / f"{stem}{ext}" for ext in FORMATS) if p.is_file()]
            if len(found) > 1:  # which one is meant is not ours to guess
                raise DataError(str(directory), None, None,
                                f"more than one {stem} file: {', '.join(p.name for p in found)}; "
                                f"keep one")
            if found:
                return found[0]
            if required:
                others = sorted(p.name for p in directory.glob(f"{stem}.*") if p.is_file())
                also = f"; found {', '.join(others)}: not one of these formats" if others else ""
                names = ", ".join(stem + e for e in FORMATS if not e.endswith(".gz"))
                raise DataError(str(directory), None, None,
                                f"no {stem} file ({names}; .gz for a gzipped text one){also}")
            return None

        return cls.load(find("items", True), find("interactions", True), find("users", False),
                        rejects)

    def history(self, user_id: str, domain: str) -> tuple[str, ...]:
        """The user's items in ``domain``, oldest first (empty if none)."""
        return self.histories.get(user_id, {}).get(domain, ())

    def items_in(self, domain: str) -> list[Item]:
        """The domain's items in file order."""
        return [it for it in self.items.values() if it.domain == domain]
