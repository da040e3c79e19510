"""Hot-path records: plain frozen dataclasses, validated once at the edge by the readers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Payload fields the indexer keeps beside an item's own in the store: whether its vector
# (the encoder text's hash) and its other fields are current. Not names a catalog may use.
TEXT_HASH, FIELDS_HASH = "text_hash", "fields_hash"
INDEX_FIELDS = (TEXT_HASH, FIELDS_HASH)


def payload_int(value: int) -> int | str:
    """An integer as a payload holds it: Qdrant stores signed 64-bit integers, so one beyond
    is kept as its digits (as a float it would lose them). Files and the HTTP service both
    ask this, so that an item stores the same payload whichever way it came in."""
    return value if -(2**63) <= value < 2**63 else str(value)


def domain_problem(domain: str) -> str | None:
    """Why ``domain`` cannot name a domain, or None: '->' joins the two domains of a direction
    ('a->b->c' would be ambiguous). Every way in (files, the HTTP service) asks this."""
    if "->" in domain:
        return f"'{domain}' must not contain '->' (it joins the two domains of a direction)"
    return None


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog item of one domain.

    ``extra`` keeps every other field of the input row; it travels to the store as payload.
    """

    item_id: str
    domain: str
    title: str
    text: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user-item event. ``order`` is the position or the timestamp (seconds): only its
    order within a user's history matters."""

    user_id: str
    item_id: str
    domain: str
    order: float
    rating: float | None = None
