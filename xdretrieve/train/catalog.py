"""The catalog as training sees it: item rows in items order, and each domain's rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xdretrieve.data import Dataset


@dataclass(frozen=True)
class Catalog:
    """``ids[r]`` is item row r (items order, the order of the encoder vectors);
    ``rows_by_domain[d]`` the rows of ``domains[d]``; ``local_of[item]`` an item's position
    among its domain's rows (a column of a full-softmax over that domain)."""

    domains: list[str]
    ids: list[str]
    row_of: dict[str, int]
    rows_by_domain: list[np.ndarray]
    local_of: dict[str, int]

    @classmethod
    def of(cls, dataset: Dataset) -> Catalog:
        domains = list(dataset.domains)
        ids = list(dataset.items)
        dom = np.array([domains.index(dataset.items[i].domain) for i in ids])
        rows_by_domain = [np.flatnonzero(dom == d) for d in range(len(domains))]
        local_of = {ids[r]: k for rows in rows_by_domain for k, r in enumerate(rows)}
        return cls(domains, ids, {iid: r for r, iid in enumerate(ids)}, rows_by_domain, local_of)
