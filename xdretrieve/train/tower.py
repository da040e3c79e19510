"""What adapter mode trains: an item adapter per domain, an item bias and the user tower.

score(u, i) = exp(logit_scale) * cos(u, v_i) + bias_i, where v_i is item i's encoder vector
through its domain's adapter (a linear map into the shared space), and u is a source history
pooled by attention (over the adapted item vectors plus learned recency positions) and refined
by a residual MLP given the target domain's token. :mod:`xdretrieve.model` serves the same
computation in numpy from the saved weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from xdretrieve.train.adapter import AdapterConfig


class Tower(nn.Module):
    """The adapters, bias and user tower over frozen encoder vectors.

    Args:
        vectors: (n_items, base_dim) encoder vectors by catalog row (not trained).
        rows_by_domain: the catalog rows of each domain.
        config: ``dim``, ``max_history``, ``dropout`` and ``pooling`` are read.
    """

    def __init__(self, vectors: torch.Tensor, rows_by_domain: list[np.ndarray],
                 config: AdapterConfig) -> None:
        super().__init__()
        n_domains, dim, self.max_history = len(rows_by_domain), config.dim, config.max_history
        self.attention = config.pooling == "attention"  # else mean pooling (an ablation)
        self.vectors = vectors
        self.rows = [torch.from_numpy(r) for r in rows_by_domain]
        # each domain's vectors gathered once: every step projects the whole target domain
        # (full softmax), and gathering it anew each time copied the domain's vectors per step
        self.domain_vectors = [vectors[r] for r in self.rows]
        self.proj = nn.ModuleList([nn.Linear(vectors.shape[1], dim) for _ in range(n_domains)])
        self.bias = nn.Parameter(torch.zeros(len(vectors)))
        self.pos = nn.Parameter(torch.zeros(self.max_history, dim))
        self.att = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))
        self.tgt = nn.Parameter(torch.zeros(n_domains, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(config.dropout)
        self.logit_scale = nn.Parameter(torch.tensor(2.5))

    def items(self, rows: torch.Tensor, d: int) -> torch.Tensor:
        """(..., dim) unit vectors of items (catalog rows) of domain d."""
        return F.normalize(self.proj[d](self.vectors[rows]), dim=-1)

    def domain_items(self, d: int, index=slice(None)) -> torch.Tensor:
        """(n_items of d, dim) unit vectors of every item of domain d, in ``rows[d]`` order
        (``index``: only those at these positions)."""
        return F.normalize(self.proj[d](self.domain_vectors[d][index]), dim=-1)

    def users(self, X: torch.Tensor, M: torch.Tensor, s: int, t: int) -> torch.Tensor:
        """(B, dim) unit query vectors into domain t of padded histories ``X`` (B, l) of
        domain s (catalog rows, right-aligned; ``M`` marks the real ones)."""
        x = self.items(X, s) + self.pos[self.max_history - X.shape[1]:]  # (B, l, dim)
        a = self.att(x).squeeze(-1) if self.attention else torch.zeros(M.shape)  # mean: equal
        a = a.masked_fill(~M, -1e9)
        pooled = self.drop((torch.softmax(a, dim=1).unsqueeze(-1) * x).sum(1))
        return F.normalize(pooled + self.mlp(pooled + self.tgt[t]), dim=-1)

    def user_scores(self, U: torch.Tensor, t: int, V: torch.Tensor | None = None,
                    index=slice(None)) -> torch.Tensor:
        """(B, n_target_items) logits of user vectors ``U`` (B, dim) over every item of domain
        t (``index``: only those at these positions; ``V``: those items' vectors, if the caller
        has them)."""
        V = self.domain_items(t, index) if V is None else V
        return self.logit_scale.exp() * (U @ V.T) + self.bias[self.rows[t][index]]

    def item_sample(self, n: int = 2048) -> list[torch.Tensor]:
        """Per domain, the adapted vectors of ``n`` of its items drawn at random (CORAL's)."""
        return [self.items(rows[torch.randint(len(rows), (n,))], d)
                for d, rows in enumerate(self.rows)]


def pad(histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Histories of catalog rows as one right-aligned (B, longest) batch and its mask."""
    width = max(len(h) for h in histories)
    X = np.zeros((len(histories), width), dtype=np.int64)
    M = np.zeros((len(histories), width), dtype=bool)
    for r, h in enumerate(histories):
        X[r, width - len(h):] = h
        M[r, width - len(h):] = True
    return torch.from_numpy(X), torch.from_numpy(M)
