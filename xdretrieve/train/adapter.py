"""Adapter-mode training over frozen, cached encoder vectors (CPU-friendly).

What is learned, on train users only (valid users select the epoch):

- an item adapter per domain (a linear map of the encoder vector; cf. UniSRec's adaptor) into one
  shared space, where a history of one domain lands near the other domain's items it leads to;
- a user tower: attention pooling over the history's item vectors with learned recency
  positions, a target-domain token and a residual MLP;
- a per-item bias and a logit scale: score(u, i) = exp(s) * cos(u, v_i) + b_i. The bias absorbs
  popularity, which in-batch training would otherwise fight (logQ, Yi et al., RecSys 2019);
- optionally a CORAL term (Sun & Saenko, 2016) aligning the second-order statistics of the
  domains' item vectors (every pair of them).

Loss: for a user with source history H and target items G, the mean over g in G of the full
softmax cross-entropy over every target item (no sampled negatives).

The trained module is :class:`xdretrieve.train.tower.Tower`; the re-ranker saved beside it is
fitted on its candidates by :mod:`xdretrieve.train.rerank_fit`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xdretrieve.data import Dataset
from xdretrieve.errors import XDRetrieveError
from xdretrieve.model import MANIFEST, MODEL_FORMAT, WEIGHTS
from xdretrieve.train import POOLINGS, selection_score
from xdretrieve.train.catalog import Catalog
from xdretrieve.train.checks import above, at_least, check_fields, fraction, one_of
from xdretrieve.train.rerank_fit import SCORE_CHUNK, Users, fit_served_reranker

if TYPE_CHECKING:
    from xdretrieve.evaluate.protocol import Direction
    from xdretrieve.train.tower import Tower

log = logging.getLogger(__name__)


# A batch's logits over a large target domain are computed in blocks of columns. One (batch,
# items) tensor above about 32 MB is mapped afresh from the OS at every step (glibc's
# allocator keeps blocks up to that size for reuse), and zeroing the fresh pages of the logits,
# the softmax and their gradients took half of a step at 79k items (blocks of 16 MB: epochs of
# 60 s instead of 107 s on a 2-core Xeon, benchmarks/RESULTS.md). Up to this size the whole
# softmax is one tensor.
LOGITS_BYTES = 32 << 20


def softmax_loss(logits, n: int, targets, block: int | None = None):
    """Mean over the batch of the full softmax cross-entropy over every item of a domain, each
    user's label spread evenly over its target items.

    Args:
        logits: ``logits(index)`` -> the batch's (B, k) logits over the domain's items at
            ``index`` (a slice of local positions).
        n: the domain's number of items.
        targets: per user, its target items' unique local positions.
        block: items per block of logits (default: the whole domain while the batch's logits
            fit in ``LOGITS_BYTES``, else blocks of half that size). The blocked form gives the
            same loss up to floating point: logsumexp over the blocks minus the targets' logits,
            each read from its block.
    """
    import torch

    b = len(targets)
    if block is None:
        block = n if 4 * b * n <= LOGITS_BYTES else max(1, LOGITS_BYTES // (8 * b))
    if block >= n:
        y = torch.zeros(b, n)
        for r, t in enumerate(targets):
            y[r, t] = 1.0 / len(t)
        return -(y * torch.log_softmax(logits(slice(0, n)), dim=1)).sum(1).mean()
    sizes = [len(t) for t in targets]
    row = torch.from_numpy(np.repeat(np.arange(b), sizes))
    col = torch.from_numpy(np.concatenate(targets).astype(np.int64))
    weight = torch.from_numpy(np.repeat(1.0 / np.asarray(sizes, dtype=np.float32), sizes))
    lse, positive = [], 0.0
    for lo in range(0, n, block):
        z = logits(slice(lo, lo + block))
        lse.append(torch.logsumexp(z, 1))
        here = (col >= lo) & (col < lo + block)
        positive = positive + (weight[here] * z[row[here], col[here] - lo]).sum()
    return (torch.logsumexp(torch.stack(lse, 1), 1).sum() - positive) / b


def coral_distance(samples):
    """CORAL's distance between domains: the squared Frobenius distance of the covariances of
    ``samples`` (one (n, D) tensor of item vectors per domain), over 4 D^2, averaged over every
    pair of domains."""
    covs = []
    for sample in samples:
        sample = sample - sample.mean(0, keepdim=True)
        covs.append(sample.T @ sample / (len(sample) - 1))
    pairs = [(a, b) for a in range(len(covs)) for b in range(a + 1, len(covs))]
    dim = covs[0].shape[0]
    return sum(((covs[a] - covs[b]) ** 2).sum() for a, b in pairs) / (4 * dim * dim * len(pairs))


@dataclass
class AdapterConfig:
    """Hyper-parameters; the defaults were chosen on valid users of amazon-arts-office."""

    dim: int = 128
    max_history: int = 50
    epochs: int = 40
    patience: int = 4
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dropout: float = 0.2
    coral: float = 0.0
    pooling: str = "attention"  # or "mean": the user tower's pooling (an ablation)
    time_budget_s: float = 600.0
    rerank_fraction: float = 0.15  # train users held out of the tower to fit the re-ranker
    rerank_candidates: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, dim=at_least(1), max_history=at_least(1), epochs=at_least(1),
                     patience=at_least(1), batch_size=at_least(1), lr=above(0),
                     weight_decay=at_least(0), dropout=fraction(), coral=at_least(0),
                     pooling=one_of(*POOLINGS), time_budget_s=at_least(0),
                     rerank_fraction=fraction(), rerank_candidates=at_least(1), seed=at_least(0))


@dataclass
class _Examples:
    """Per direction: padded source histories (global item rows) and target sets (local)."""

    source: int
    target: int
    histories: list[np.ndarray]
    targets: list[np.ndarray]


def _examples(users: list[str], histories: dict[str, dict[str, tuple[str, ...]]],
              catalog: Catalog, d: Direction, max_history: int) -> _Examples:
    """The users of ``users`` active in both domains of direction ``d``."""
    hs, ts = [], []
    for u in users:
        h = histories.get(u, {})
        src, tgt = h.get(d.source, ()), h.get(d.target, ())
        if src and tgt:
            hs.append(np.array([catalog.row_of[i] for i in src[-max_history:]], dtype=np.int64))
            ts.append(np.unique(np.array([catalog.local_of[i] for i in tgt], dtype=np.int64)))
    return _Examples(catalog.domains.index(d.source), catalog.domains.index(d.target), hs, ts)


def train_adapter(dataset: Dataset, base: np.ndarray, out_dir: str | Path, base_model: str,
                  base_fingerprint: str, config: AdapterConfig | None = None,
                  progress: bool = False) -> dict:
    """Train and save a model directory.

    Args:
        dataset: split by users.csv, or the seeded split without it (train users fit, valid
            users select).
        base: (n_items, base_dim) encoder vectors of ``dataset.items`` in order.
        out_dir: the model directory to write.
        base_model, base_fingerprint: the encoder that made ``base``.
        config: hyper-parameters.

    Returns:
        The manifest written (with the best epoch's validation metrics).
    """
    import torch

    from xdretrieve.evaluate.protocol import Protocol
    from xdretrieve.train.tower import Tower

    config = config or AdapterConfig()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    protocol = Protocol(dataset)  # the split evaluate uses (the training seed does not move it)
    catalog = Catalog.of(dataset)
    directions = protocol.directions()
    views = {d: protocol.train_view(d) for d in directions}
    train_users = list(protocol.split.train)
    fold = set(rng.choice(train_users, size=int(config.rerank_fraction * len(train_users)),
                          replace=False).tolist()) if config.rerank_fraction > 0 else set()
    tower_users = [u for u in train_users if u not in fold]

    def examples(users: list[str]) -> list[_Examples]:
        return [_examples(users, views[d].histories, catalog, d, config.max_history)
                for d in directions]

    train = examples(tower_users)
    untaken = [str(d) for d, ex in zip(directions, train, strict=True) if not ex.histories]
    if len(untaken) == len(directions):
        raise XDRetrieveError("no train user has interactions in two domains, so there is "
                              "nothing to train on (a model learns from users active in both "
                              "a source and a target domain)")
    if untaken:  # e.g. a catalog's domain that nobody has bought from yet
        log.warning("no train user has both domains of %s: those directions are not trained",
                    ", ".join(untaken))
        train = [ex for ex in train if ex.histories]
    held = examples(sorted(fold))
    valid = [(catalog.domains.index(d.source), catalog.domains.index(d.target),
              [np.array([catalog.row_of[i] for i in q[-config.max_history:]])
               for q in views[d].valid.queries],
              list(views[d].valid.truth)) for d in directions]

    model = Tower(torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32)),
                  catalog.rows_by_domain, config)
    # Start the bias at log popularity (the softmax then begins as the popularity ranking,
    # which the content term has to beat), counted over the tower's users.
    counts = np.zeros(len(catalog.ids), dtype=np.float32)
    for ex in train:
        for t in ex.targets:
            counts[catalog.rows_by_domain[ex.target][t]] += 1
    with torch.no_grad():
        model.bias.copy_(torch.from_numpy(np.log1p(counts)))
    best_epoch, history, tower_seconds = _fit_tower(model, train, valid, directions, config, rng,
                                                    progress)

    reranker, rerank_report = None, {}
    if fold:
        reranker, rerank_report = fit_served_reranker(
            model, dataset, catalog, views[directions[0]].histories,
            [(ex.source, ex.target, ex.histories, ex.targets) for ex in held], valid,
            tower_users, train_users, directions, config.seed, config.rerank_candidates,
            progress)
    return _save(model, out_dir, catalog.domains, catalog.ids, config, base_model,
                 base_fingerprint, best_epoch, history, tower_seconds, reranker, rerank_report,
                 protocol.split)


def _fit_tower(model: Tower, train: list[_Examples], valid: list[Users],
               directions: list[Direction], config: AdapterConfig, rng: np.random.Generator,
               progress: bool) -> tuple[int, list[dict], float]:
    """Train ``model`` on the examples until valid users stop gaining (``patience`` epochs) or
    the time budget is spent, and leave it at its best epoch. Returns that epoch, every epoch's
    loss and valid metrics, and the seconds it took."""
    import torch
    from tqdm.auto import tqdm

    from xdretrieve.train.tower import pad

    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best, best_state, best_epoch, stale = -1.0, None, -1, 0
    history = []
    t0 = time.perf_counter()
    for epoch in range(config.epochs):
        batches = [(ex, idx) for ex in train
                   for idx in np.array_split(rng.permutation(len(ex.histories)),
                                             max(1, len(ex.histories) // config.batch_size))]
        rng.shuffle(batches)
        total = 0.0
        for ex, idx in tqdm(batches, desc=f"epoch {epoch + 1}", disable=not progress,
                            leave=False):
            X, M = pad([ex.histories[i] for i in idx])
            U, t = model.users(X, M, ex.source, ex.target), ex.target
            loss = softmax_loss(lambda index, U=U, t=t: model.user_scores(U, t, index=index),
                                len(model.rows[t]), [ex.targets[i] for i in idx])
            if config.coral:
                loss = loss + config.coral * coral_distance(model.item_sample())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        metrics = _validate(model, valid, directions)
        score = selection_score(metrics)
        history.append({"epoch": epoch + 1, "loss": total / len(batches), **metrics,
                        "seconds": time.perf_counter() - t0})
        log.info("epoch %d loss %.4f valid ndcg@10 %.4f", epoch + 1, total / len(batches), score)
        if progress:
            print(f"epoch {epoch + 1}: loss {total / len(batches):.4f}, valid "
                  + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
        if score > best:
            best, best_epoch, stale = score, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if stale >= config.patience or time.perf_counter() - t0 > config.time_budget_s:
            break
    model.load_state_dict(best_state)
    return best_epoch, history, time.perf_counter() - t0


def _validate(model: Tower, valid: list[Users], directions: list[Direction]) -> dict[str, float]:
    """ndcg@10 and recall@10 of valid users in each direction (full ranking of the target
    domain by the model's score)."""
    import torch

    from xdretrieve.evaluate.methods import stable_top
    from xdretrieve.evaluate.metrics import score_rankings
    from xdretrieve.train.tower import pad

    model.eval()
    out = {}
    with torch.no_grad():
        for (s, t, hs, truth), d in zip(valid, directions, strict=True):
            if not hs:
                continue
            U, V = model.users(*pad(hs), s, t), model.domain_items(t)
            top = np.concatenate([  # a chunk of users at a time (memory: see SCORE_CHUNK)
                stable_top(model.user_scores(U[lo:lo + SCORE_CHUNK], t, V).numpy(), 50)
                for lo in range(0, len(hs), SCORE_CHUNK)])
            m = score_rankings(top, truth, len(model.rows[t]), ks=(10,))
            out[f"{d}/ndcg@10"] = float(m["ndcg@10"].mean())
            out[f"{d}/recall@10"] = float(m["recall@10"].mean())
    model.train()
    return out


def _save(model, out_dir, domains, ids, config, base_model, base_fingerprint, best_epoch,
          history, seconds, reranker, rerank_report, split) -> dict:
    from xdretrieve.evaluate.protocol import users_digest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    weights = {
        "pos": sd["pos"], "logit_scale": sd["logit_scale"],
        "att_w1": sd["att.0.weight"].T, "att_b1": sd["att.0.bias"],
        "att_w2": sd["att.2.weight"][0], "att_b2": sd["att.2.bias"][0],
        "mlp_w1": sd["mlp.0.weight"].T, "mlp_b1": sd["mlp.0.bias"],
        "mlp_w2": sd["mlp.2.weight"].T, "mlp_b2": sd["mlp.2.bias"],
        "bias_ids": np.array(ids), "bias": sd["bias"],
    }
    for k, d in enumerate(domains):
        weights[f"proj_w_{d}"] = sd[f"proj.{k}.weight"].T
        weights[f"proj_b_{d}"] = sd[f"proj.{k}.bias"]
        weights[f"tgt_{d}"] = sd["tgt"][k]
    np.savez(out / WEIGHTS, **weights)
    for stale in ("reranker.json", "item_stats.npz"):
        (out / stale).unlink(missing_ok=True)
    if reranker is not None:
        reranker.save(out)
    manifest = {
        "format": MODEL_FORMAT, "kind": "adapter", "base_model": base_model,
        "base_fingerprint": base_fingerprint, "dim": config.dim, "domains": domains,
        "max_history": config.max_history, "config": asdict(config), "best_epoch": best_epoch,
        "train_seconds": round(seconds, 1), "history": history, "reranker": rerank_report,
        "created_at": datetime.now(timezone.utc).isoformat(),
        # which users it learned from: evaluate refuses a model trained on another split
        "split": {"source": ("users.*, valid drawn from its train users" if split.valid_drawn
                             else "users.*" if split.from_file else "seeded"),
                  "train": len(split.train), "valid": len(split.valid), "test": len(split.test),
                  "train_digest": users_digest(split.train)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
