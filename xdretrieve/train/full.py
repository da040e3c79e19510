"""Full mode: contrastive fine-tuning of the shared transformer (GPU, bf16, torchrun-ready), then
the adapter stage over the fine-tuned encoder's item vectors.

Stage 1 (:func:`finetune_encoder`) trains the sentence-transformers model itself on pairs from
train users only (valid users select the epoch and stop early):

- cross-domain pairs: a domain prompt and the last titles of a user's source history ->
  each of that user's target-domain items (every ordered pair of domains);
- same-domain pairs: the same kind of query over a history prefix -> the next item.

The document side is the item text exactly as ``index`` embeds it (``Settings.text_template``).
Loss: InfoNCE (scale 20, i.e. temperature 0.05) of each query over the positives of its global
batch (one target domain per step; gathered across processes) and mined hard negatives (items the
current encoder ranks high for the query that the user never interacted with; mined at the start
of every epoch). Columns holding an item the row's user has (duplicates of the positive included)
are masked. Every column's logit is corrected by the log of its item's sampling probability
(logQ, Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", RecSys 2019): in-batch negatives are drawn by popularity, and without the
correction the encoder learns to push popular items down. Ranking then adds the log popularity
back, which is how valid users are scored here: ``scale * cos + log(1 + train popularity)``.

Stage 2 (:func:`train_full`) embeds every item with the fine-tuned encoder and runs
:func:`xdretrieve.train.adapter.train_adapter` over those vectors; the model directory is that of
adapter mode plus the encoder in ``MODEL_DIR/encoder`` (the manifest's ``base_model``, relative, so
the directory can move) and a ``finetune`` entry in the manifest (``kind: "full"``).

Several GPUs: launch with ``torchrun --nproc_per_node=N``; every process loads the data and takes
an equal share of each global batch (``batch_size`` pairs per process); the document embeddings
are gathered across processes with gradients (an all-gather whose backward all-reduces), DDP
averages the gradients, and only rank 0 validates and writes.

Given ``resume_dir`` (``finetune`` gives ``.NAME.resume`` beside the output), stage 1 keeps a
checkpoint of each finished epoch there and a rerun goes on after the last
(:mod:`xdretrieve.train.resume`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from xdretrieve.data import Dataset
from xdretrieve.encoder import item_text
from xdretrieve.errors import XDRetrieveError
from xdretrieve.train import selection_score
from xdretrieve.train.catalog import Catalog
from xdretrieve.train.checks import (
    above,
    at_least,
    check_fields,
    fraction,
    optional,
    rank_range,
)
from xdretrieve.train.distributed import (
    Dist,
    gather,
    how_many_say,
    rank0_says,
    setup,
    wrap_ddp,
)
from xdretrieve.train.pairs import Pairs, build_pairs, global_batches, query_text, shard
from xdretrieve.train.resume import EpochCheckpoints, run_key

log = logging.getLogger(__name__)

ENCODER_DIR = "encoder"  # the fine-tuned encoder inside the model directory


@dataclass
class FullConfig:
    """Hyper-parameters of the encoder fine-tuning (stage 1)."""

    epochs: int = 3
    batch_size: int = 256  # pairs per step and process; the global batch is batch_size * processes
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of the steps with a linear warm-up; then linear decay to 0
    scale: float = 20.0  # 1 / temperature of the softmax over cosines
    history_titles: int = 10  # titles of the history in a query text, most recent first
    same_domain: bool = True  # also train on history prefix -> next item in the same domain
    max_pairs: int | None = None  # per epoch, a random sample of at most this many pairs
    hard_negatives: int = 1  # mined per pair and epoch (0: in-batch negatives only)
    hard_negative_ranks: tuple[int, int] = (3, 50)  # sampled from these ranks, the user's items left out
    logq: bool = True
    dropout: bool = True  # False: no dropout in training (deterministic steps, for tests)
    patience: int = 2  # epochs without a better valid ndcg@10 before stopping
    time_budget_s: float | None = None  # stop after the step that passes it (then validate)
    # tokenizing processes per training process [CUDA: see loader_workers, CPU: 0]
    num_workers: int | None = None
    # texts per batch when validation and mining embed: large batches feed a GPU, small ones
    # run faster on a CPU (measured with MiniLM on 2 cores: 150 items/s at 64, 83 at 512)
    eval_batch_size: int | None = None  # [CUDA: 512, CPU: 64]
    # recompute each layer's activations in the backward pass instead of holding them: one more
    # forward pass for a fraction of the memory (MiniLM, steps of 256 pairs on 2 cores: 7 GiB
    # at the peak with it, killed at 24 GiB without) [None: on the CPU, off on CUDA]
    gradient_checkpointing: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, epochs=at_least(1), batch_size=at_least(1), lr=above(0),
                     weight_decay=at_least(0), warmup=fraction(), scale=above(0),
                     history_titles=at_least(1), max_pairs=optional(at_least(1)),
                     hard_negatives=at_least(0), hard_negative_ranks=rank_range(),
                     patience=at_least(1), time_budget_s=optional(at_least(0)),
                     num_workers=optional(at_least(0)), eval_batch_size=optional(at_least(1)),
                     seed=at_least(0))

    def on(self, device: torch.device) -> FullConfig:
        """This config with the defaults that depend on the device (None above) filled in."""
        cuda = device.type == "cuda"
        return replace(self, **{k: v for k, v in {
            "num_workers": loader_workers() if cuda else 0, "eval_batch_size": 512 if cuda else 64,
            "gradient_checkpointing": not cuda}.items() if getattr(self, k) is None})


def loader_workers(cpus: int | None = None, local_processes: int | None = None) -> int:
    """Tokenizing processes per training process on CUDA: this process's share of the CPU
    cores less 4 (the training process, its tokenizer threads), from 2 to 12. Tokenizing a step's
    768 texts is what an H200 waits on (steps of 256 pairs, 16 cores, one run: 2 workers 1,384
    pairs/s, 8 workers 3,722; 12 workers 4,156 over three epochs of amazon-arts-office)."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(2, min(12, (cpus or 1) // max(1, local) - 4))


class _Steps:
    """Map-style dataset for the DataLoader: step k -> this process's tokenized share of global
    batch k, with the labels, the mask and the logQ term over the gathered columns.

    Column layout (what ``all_gather`` of each process's documents produces): for each process r
    in order, its positives, then its hard negatives (pair-major)."""

    def __init__(self, batches, pairs: Pairs, negatives: np.ndarray, doc_texts: list[str],
                 logq: np.ndarray, preprocess, rank: int, world_size: int):
        self.batches, self.pairs, self.negatives = batches, pairs, negatives
        self.doc_texts, self.logq, self.preprocess = doc_texts, logq, preprocess
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        p, batch = self.pairs, self.batches[k]
        parts = [shard(batch, r, self.world_size) for r in range(self.world_size)]
        cols = np.concatenate([np.concatenate([p.item[part], self.negatives[part].ravel()])
                               for part in parts])  # (world * b * (1 + n_neg),) item rows
        local = parts[self.rank]
        b, width = len(local), len(cols) // self.world_size
        labels = self.rank * width + np.arange(b)  # row i: its positive's column
        mask = np.stack([np.isin(cols, p.known[p.query_user[p.query[i]]]) for i in local])
        mask[np.arange(b), labels] = False  # (b, n_cols): items the row's user has, but its own
        docs = [self.doc_texts[c] for c in np.concatenate(
            [p.item[local], self.negatives[local].ravel()])]
        return (dict(self.preprocess([p.query_texts[p.query[i]] for i in local])),
                dict(self.preprocess(docs)), torch.from_numpy(labels), torch.from_numpy(mask),
                torch.from_numpy(self.logq[cols].astype(np.float32)))


# -- the model -----------------------------------------------------------------------------------

def _load(path: Path, device: torch.device, max_seq_length: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()
    model = SentenceTransformer(str(path), device=str(device), local_files_only=True)
    model.max_seq_length = min(max_seq_length, model.max_seq_length or max_seq_length)
    return model


def _checkpoint_layers(model) -> None:
    """Gradient (activation) checkpointing in the transformers of a sentence-transformers
    model, non-reentrant (what DDP and frozen inputs need)."""
    from transformers import PreTrainedModel

    kwargs = {"use_reentrant": False}
    for module in model.modules():
        if not isinstance(module, PreTrainedModel) or not module.supports_gradient_checkpointing:
            continue
        if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.2x
            module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _preprocess_fn(model):
    return getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers < 5: tokenize


def _to(features: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in features.items()}


def _autocast(device: torch.device):
    """bf16 autocast on CUDA; fp32 elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=device.type == "cuda")


def _freeze_unused(model, device: torch.device) -> list[str]:
    """Parameters no embedding depends on (e.g. BERT's pooler under mean pooling) stop
    requiring gradients, so that DDP can run without unused-parameter detection (which does not
    allow two forwards per backward). Deterministic: the same on every process."""
    feats = _to(_preprocess_fn(model)(["a probe", "another probe text"]), device)
    model(feats)["sentence_embedding"].float().sum().backward()
    frozen = []
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            frozen.append(name)
    model.zero_grad(set_to_none=True)
    return frozen


class _TextBatches:
    """Map-style dataset for the DataLoader: batch k -> (the texts' positions, their tokenized
    features); the texts go longest first, so that a batch pads little."""

    def __init__(self, texts: Sequence[str], batch_size: int, preprocess):
        self.texts, self.batch_size, self.preprocess = texts, batch_size, preprocess
        self.order = np.argsort([-len(t) for t in texts], kind="stable")

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)

    def __getitem__(self, k: int):
        idx = self.order[k * self.batch_size:(k + 1) * self.batch_size]
        return torch.from_numpy(idx), dict(self.preprocess([self.texts[i] for i in idx]))


@torch.no_grad()
def _embed(model, texts: Sequence[str], device: torch.device, batch_size: int,
           desc: str | None = None, workers: int | None = 0) -> torch.Tensor:
    """(len(texts), dim) float32 unit vectors on ``device``; with ``desc``, a progress bar (a
    catalogue takes minutes on a CPU). Up to ``workers`` processes tokenize the next batches (no
    more than there are batches beyond the first): in the training process alone, tokenizing an
    epoch's queries for mining leaves a GPU idle for most of a minute."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    batches = _TextBatches(texts, batch_size, _preprocess_fn(model))
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False,
                                         num_workers=max(0, min(workers or 0, len(batches) - 1)),
                                         pin_memory=device.type == "cuda")
    out = None
    with _autocast(device):
        for idx, features in tqdm(loader, desc=desc, unit="batch", disable=desc is None,
                                  leave=False):
            emb = model(_to(features, device))["sentence_embedding"]
            emb = F.normalize(emb.float(), dim=-1)
            if out is None:
                out = torch.empty(len(texts), emb.shape[1], device=device)
            out[idx.to(device)] = emb
    model.train(was_training)
    return out if out is not None else torch.empty(0, 0, device=device)


def info_nce(q: torch.Tensor, d: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
             logq: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Mean softmax cross-entropy of each query over the columns.

    Args:
        q: (b, dim) unit query vectors.
        d: (n_cols, dim) unit document vectors.
        labels: (b,) column of each query's positive.
        mask: (b, n_cols) True where a column must not count as a negative.
        logq: (n_cols,) log sampling probability of each column's item, subtracted (logQ).
        scale: 1 / temperature.
    """
    logits = scale * (q @ d.T)  # (b, n_cols)
    if logq is not None:
        logits = logits - logq
    return F.cross_entropy(logits.masked_fill(mask, float("-inf")), labels)


# -- hard negatives ------------------------------------------------------------------------------

def _mine(model, pairs: Pairs, used: np.ndarray, doc_texts: list[str], rows_by_domain,
          config: FullConfig, rng_u: np.ndarray, ctx: Dist, item_vecs: dict[int, torch.Tensor],
          progress: bool = False) -> np.ndarray:
    """(n_pairs, n_neg) hard negatives (global item rows; -1 for pairs not used this epoch).

    Each process embeds its share of the epoch's queries, ranks the target domain's items and,
    for every pair of those queries, picks items among ranks ``hard_negative_ranks`` of the
    ranking without the user's own items (``rng_u``: the same uniform draws everywhere, so the
    choice does not depend on the number of processes). ``item_vecs``: target domain ->
    its items' vectors under the current weights where already embedded (by validation)."""
    n_neg = config.hard_negatives
    lo, hi = config.hard_negative_ranks
    out = np.full((len(pairs), n_neg), -1, dtype=np.int64)
    queries = np.unique(pairs.query[used])[ctx.rank::ctx.world_size]
    mine = used[np.isin(pairs.query[used], queries)]
    n_items = sum(len(r) for r in rows_by_domain)
    for t, rows in enumerate(rows_by_domain):
        qs = queries[pairs.query_target[queries] == t]  # sorted, as np.unique returns them
        if not len(qs):
            continue
        col_of = np.full(n_items, -1, dtype=np.int64)  # global row -> column in domain t
        col_of[rows] = np.arange(len(rows))
        items = item_vecs.get(t)
        if items is None:
            items = _embed(model, [doc_texts[r] for r in rows], ctx.device,
                           config.eval_batch_size, _desc(progress, "mining: target items"),
                           config.num_workers)
        width = min(hi, len(rows))
        Q_all = _embed(model, [pairs.query_texts[q] for q in qs], ctx.device,
                       config.eval_batch_size, _desc(progress, "mining: queries"),
                       config.num_workers)
        for start in range(0, len(qs), 4096):
            chunk = qs[start:start + 4096]
            S = Q_all[start:start + 4096] @ items.T  # (chunk, n_t)
            r_idx, c_idx, n_known = [], [], np.zeros(len(chunk), dtype=np.int64)
            for r, q in enumerate(chunk):
                cols = col_of[pairs.known[pairs.query_user[q]]]
                cols = cols[cols >= 0]
                r_idx.append(np.full(len(cols), r, dtype=np.int64))
                c_idx.append(cols)
                n_known[r] = len(cols)
            S[torch.from_numpy(np.concatenate(r_idx)).to(S.device),
              torch.from_numpy(np.concatenate(c_idx)).to(S.device)] = float("-inf")
            top = S.topk(width, dim=1).indices.cpu().numpy()  # (chunk, width) local columns
            sel = mine[np.isin(pairs.query[mine], chunk)]  # this chunk's pairs
            r = np.searchsorted(chunk, pairs.query[sel])  # (n_sel,) row of each pair's query
            valid = np.minimum(width, len(rows) - n_known[r])  # ranks holding none of the user's
            first = np.where(valid > lo, lo, 0)
            u = rng_u[sel]  # (n_sel, n_neg)
            pick = first[:, None] + (u * np.maximum(valid - first, 1)[:, None]).astype(np.int64)
            negs = rows[top[r[:, None], np.minimum(pick, width - 1)]]
            # a user who has every item: any item (masked in the loss)
            anything = rows[(u * len(rows)).astype(np.int64)]
            out[sel] = np.where((valid > 0)[:, None], negs, anything)
    if ctx.world_size > 1:
        parts = [None] * ctx.world_size
        dist.all_gather_object(parts, (mine, out[mine]))
        for idx, negs in parts:
            out[idx] = negs
    return out


# -- validation ----------------------------------------------------------------------------------

def _validate(model, valid, doc_texts, rows_by_domain, config: FullConfig,
              device: torch.device, progress: bool = False
              ) -> tuple[dict[str, float], dict[int, torch.Tensor]]:
    """ndcg@10 of valid users' cross-domain queries over every target item: with the
    log-popularity prior (``scale * cos + log(1 + popularity)``: what selects) and by cosine;
    and the target items' vectors it embedded (the next epoch's mining reuses them)."""
    from xdretrieve.evaluate.methods import stable_top
    from xdretrieve.evaluate.metrics import score_rankings

    out: dict[str, float] = {}
    item_vecs: dict[int, torch.Tensor] = {}
    for name, t, texts, truth, prior in valid:
        if t not in item_vecs:
            item_vecs[t] = _embed(model, [doc_texts[r] for r in rows_by_domain[t]], device,
                                  config.eval_batch_size,
                                  _desc(progress, f"validation {name}: target items"),
                                  config.num_workers)
        Q = _embed(model, texts, device, config.eval_batch_size, workers=config.num_workers)
        cos = (Q @ item_vecs[t].T).cpu().numpy()  # (n_valid, n_t)
        for key, S in ((f"{name}/ndcg@10", config.scale * cos + prior),
                       (f"{name}/ndcg@10_cosine", cos)):
            top = stable_top(S, 10)
            out[key] = float(score_rankings(top, truth, S.shape[1], ks=(10,))["ndcg@10"].mean())
    return out, item_vecs


def _desc(progress: bool, desc: str) -> str | None:
    """``_embed``'s bar label where progress is shown, else no bar."""
    return desc if progress else None


# -- stage 1 -------------------------------------------------------------------------------------

@dataclass
class _Task:
    """What stage 1 trains and validates on, built alike on every process from the dataset."""

    pairs: Pairs
    doc_texts: list[str]  # every item's text as `index` embeds it, by catalog row
    rows_by_domain: list[np.ndarray]
    logq: np.ndarray  # an item's log probability of being a column (its share of positives)
    # per direction with valid users: (name, target domain, query texts, truth, log-popularity)
    valid: list[tuple]


def _task(dataset: Dataset, config: FullConfig, text_template: str) -> _Task:
    from xdretrieve.evaluate.protocol import Protocol

    protocol = Protocol(dataset)  # the split evaluate uses (the training seed does not move it)
    catalog = Catalog.of(dataset)
    domains, ids, row_of = catalog.domains, catalog.ids, catalog.row_of
    directions = protocol.directions()
    views = {d: protocol.train_view(d) for d in directions}
    histories = views[directions[0]].histories
    pairs = build_pairs(histories, list(protocol.split.train), domains, dataset.items, row_of,
                        config.history_titles, config.same_domain)
    if not len(pairs):
        raise XDRetrieveError("no training pairs: train users need histories")
    counts = np.bincount(pairs.item, minlength=len(ids)).astype(np.float64)
    logq = np.zeros(len(ids))
    for rows in catalog.rows_by_domain:
        logq[rows] = np.log((counts[rows] + 1.0) / (counts[rows].sum() + len(rows)))
    valid = []
    for d in directions:
        task, view = views[d].valid, views[d]
        if not len(task):
            continue
        texts = [query_text([dataset.items[i].title for i in q], d.source, d.target,
                            config.history_titles) for q in task.queries]
        valid.append((str(d), domains.index(d.target), texts, list(task.truth),
                      np.log1p(view.popularity(d.target))[None, :]))
    return _Task(pairs, [item_text(dataset.items[i], text_template) for i in ids],
                 catalog.rows_by_domain, logq, valid)


@dataclass
class _Progress:
    """What the epochs so far have left: the selection and the counters. An epoch's checkpoint
    keeps it whole (the keys of the checkpoint are its fields)."""

    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None  # the best epoch's weights, on rank 0 only
    best: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # epochs since the best
    step_seconds: float = 0.0  # time in training steps, data loading included
    n_seen: int = 0  # pairs over every process
    step: int = 0
    done: bool = False  # stopped early, out of time, or through every epoch

    def keep_if_best(self, score: float, epoch: int, model) -> None:
        if score > self.best:
            self.best, self.best_epoch, self.stale = score, epoch, 0
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in model.state_dict().items()}
        else:
            self.stale += 1

    def state(self) -> dict:
        """The fields as a checkpoint keeps them (the same objects: no copy of the weights)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _optimiser(model, config: FullConfig, device: torch.device, total_steps: int):
    """AdamW (no decay of biases and norms) with linear warm-up and linear decay to 0."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr,
                            fused=device.type == "cuda")
    warm = max(1, int(config.warmup * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total_steps - s) / max(1, total_steps - warm))))
    return opt, sched


def finetune_encoder(dataset: Dataset, base_path: str | Path, out_path: str | Path,
                     config: FullConfig | None = None, *, device: str = "auto",
                     text_template: str = "{title}. {text}", max_seq_length: int = 128,
                     progress: bool = False, resume_dir: str | Path | None = None) -> dict | None:
    """Fine-tune a local sentence-transformers model on train users' pairs; rank 0 saves the
    best epoch's model (by valid ndcg@10; epoch 0 is the model as given) to ``out_path``.

    Args:
        dataset: split by users.csv, or the seeded split (train users give the pairs, valid
            users select).
        base_path: the sentence-transformers directory to start from.
        out_path: where the fine-tuned model is saved (replaced).
        config: hyper-parameters.
        device: 'auto', 'cuda', 'cpu', ...; under torchrun each process takes cuda:LOCAL_RANK.
        text_template: how an item becomes document text (as ``index`` embeds it).
        max_seq_length: tokens per query and document text.
        resume_dir: keep a checkpoint of every finished epoch there, and resume from the one
            there when it is of this run (:mod:`xdretrieve.train.resume`); the processes of a
            torchrun launch must share it (one machine, or a shared disk).

    Returns:
        On rank 0 the report (pairs, epochs, seconds, pairs/s, device, world size, history);
        None on the other processes.
    """
    config = config or FullConfig()
    ctx = setup(device)
    try:
        report = _finetune(dataset, Path(base_path), Path(out_path), config, ctx, text_template,
                           max_seq_length, progress and ctx.main,
                           None if resume_dir is None else Path(resume_dir))
        if ctx.own_group and ctx.world_size > 1:
            # every process done (rank 0 writes the model last) before any tears its group
            # down, so that none leaves while another still talks to it. (It did not stop a
            # rare abort at exit, SIGABRT "terminate called without an active exception", that
            # the two-process test met in CI after this function had returned: not understood;
            # see tests/test_train_full.py::_worker.)
            dist.barrier()
        return report
    finally:
        if ctx.own_group and dist.is_initialized():
            dist.destroy_process_group()


def _finetune(dataset: Dataset, base_path: Path, out_path: Path, config: FullConfig, ctx: Dist,
              text_template: str, max_seq_length: int, progress: bool,
              resume_dir: Path | None) -> dict | None:
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    config = config.on(ctx.device)
    rng = np.random.default_rng(config.seed)  # the same on every process: the same batches
    task = _task(dataset, config, text_template)
    pairs = task.pairs
    if not task.valid:
        log.warning("no valid users in any direction: the last epoch is kept")
    if ctx.device.type == "cpu" and config.max_pairs is None and config.time_budget_s is None:
        log.warning("full fine-tuning on the CPU, unbounded: %d pairs per epoch (all-MiniLM-L6-v2 "
                    "trains at about 2 pairs/s on 2 cores); use a GPU, or bound it with "
                    "--max-pairs or --time-budget", len(pairs))

    model = _load(base_path, ctx.device, max_seq_length)
    torch.manual_seed(config.seed + ctx.rank)  # dropout differs per process; weights come from rank 0
    frozen = _freeze_unused(model, ctx.device)
    if config.gradient_checkpointing:
        _checkpoint_layers(model)
    model.train(config.dropout)  # eval mode only switches dropout off
    net = wrap_ddp(model, ctx)
    epoch_batches = global_batches(pairs.target, config.batch_size, ctx.world_size, rng,
                                   config.max_pairs)
    if not epoch_batches:
        raise XDRetrieveError(f"too few pairs ({len(pairs)}) for a step: every target domain "
                              f"needs at least 2 pairs per process")
    opt, sched = _optimiser(model, config, ctx.device,
                            max(1, config.epochs * len(epoch_batches)))
    if config.num_workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked tokenizers

    run = _Progress()
    item_vecs: dict[int, torch.Tensor] = {}  # target items under the current weights
    first_epoch, checkpoints, saved = 1, None, None
    if resume_dir is not None:
        checkpoints = EpochCheckpoints(resume_dir, run_key(
            str(base_path.resolve()), {k: v for k, v in asdict(config).items()
                                       if k not in ("num_workers", "time_budget_s")},
            ctx.world_size, max_seq_length, task.doc_texts, pairs.query_texts, pairs.query,
            pairs.item, pairs.target))
        saved = checkpoints.load()
        if 0 < how_many_say(saved is not None, ctx) < ctx.world_size:  # every process stops
            raise XDRetrieveError(f"only some processes see a checkpoint in {resume_dir}: the "
                                  f"processes of a launch must share it (one machine, or a "
                                  f"shared disk)")
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        rng.bit_generator.state = saved["rng"]
        run = _Progress(**{f.name: saved[f.name] for f in fields(_Progress)})
        if not ctx.main:
            run.best_state = None
        first_epoch = saved["epoch"] + 1
        t_start -= saved["seconds"]  # the time budget counts the run's time before
        _say(progress, tqdm, f"resuming encoder fine-tuning after epoch {saved['epoch']} "
             f"(checkpoint in {resume_dir})")
        del saved
    elif ctx.main:
        metrics, item_vecs = _validate(model, task.valid, task.doc_texts, task.rows_by_domain,
                                       config, ctx.device, progress)
        run.keep_if_best(selection_score(metrics), 0, model)
        run.history.append({"epoch": 0, **metrics, "seconds": time.perf_counter() - t_start})
        _say(progress, tqdm, f"encoder before fine-tuning: valid {_fmt(metrics)}")
    n_neg = config.hard_negatives
    for epoch in range(first_epoch, config.epochs + 1):
        if run.done:  # a resumed run that had finished its epochs
            break
        if epoch > 1:
            epoch_batches = global_batches(pairs.target, config.batch_size, ctx.world_size, rng,
                                           config.max_pairs)
        used = np.concatenate(epoch_batches) if epoch_batches else np.zeros(0, dtype=np.int64)
        rng_u = rng.random((len(pairs), n_neg))  # drawn on every process alike
        if n_neg:
            negatives = _mine(model, pairs, used, task.doc_texts, task.rows_by_domain, config,
                              rng_u, ctx, item_vecs, progress)
        else:
            negatives = np.zeros((len(pairs), 0), dtype=np.int64)
        item_vecs = {}  # stale once the weights move
        # dropout's stream starts here each epoch: a resumed run, which embeds for mining what
        # the validation before had embedded (a data loader draws a seed), trains the same
        torch.manual_seed(config.seed + ctx.rank + 7919 * epoch)
        steps = _Steps(epoch_batches, pairs, negatives, task.doc_texts, task.logq,
                       _preprocess_fn(model), ctx.rank, ctx.world_size)
        loader = torch.utils.data.DataLoader(steps, batch_size=None, shuffle=False,
                                             num_workers=config.num_workers,
                                             pin_memory=ctx.device.type == "cuda")
        bar = tqdm(loader, desc=f"fine-tuning epoch {epoch}", unit="step", disable=not progress,
                   leave=False)
        loss, n_steps = _train_epoch(net, model, opt, sched, bar, config, ctx, run, t_start)
        bar.close()
        del loader
        if ctx.main:
            metrics, item_vecs = _validate(model, task.valid, task.doc_texts,
                                           task.rows_by_domain, config, ctx.device, progress)
            run.history.append({"epoch": epoch, "loss": loss, "steps": n_steps, **metrics,
                                "seconds": time.perf_counter() - t_start})
            _say(progress, tqdm, f"fine-tuning epoch {epoch}: loss {loss:.4f}, "
                 f"{run.n_seen / max(run.step_seconds, 1e-9):.0f} pairs/s, valid {_fmt(metrics)}")
            # without valid users of any direction: the last epoch
            run.keep_if_best(selection_score(metrics) if task.valid else float(epoch), epoch, model)
        run.done = rank0_says(run.done or run.stale >= config.patience, ctx)
        if checkpoints is not None and ctx.main:
            checkpoints.save({
                **run.state(),
                "epoch": epoch, "done": run.done or epoch == config.epochs,
                "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
                "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": rng.bit_generator.state, "seconds": time.perf_counter() - t_start})
        if run.done:
            break
    if not ctx.main:
        return None
    model.load_state_dict(run.best_state)
    if out_path.exists():
        shutil.rmtree(out_path)
    model.save(str(out_path), create_model_card=False)
    report = _report(pairs, run, time.perf_counter() - t_start, config, ctx, frozen)
    del net, model, opt, run
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return report


def _train_epoch(net, model, opt, sched, steps, config: FullConfig, ctx: Dist, run: _Progress,
                 t_start: float) -> tuple[float, int]:
    """One pass over an epoch's ``steps``; returns the mean loss and the number of steps. The
    time budget, by rank 0's clock, ends the pass (and sets ``run.done``) on every process."""
    total, n_steps = 0.0, 0
    t_loop = time.perf_counter()  # pairs/s counts tokenizing and waiting on data too
    for q_feats, d_feats, labels, mask, lq in steps:
        with _autocast(ctx.device):
            q = net(_to(q_feats, ctx.device))["sentence_embedding"]
            d = net(_to(d_feats, ctx.device))["sentence_embedding"]
        q = F.normalize(q.float(), dim=-1)  # (b, dim)
        d = gather(F.normalize(d.float(), dim=-1), ctx.world_size)  # (n_cols, dim)
        loss = info_nce(q, d, labels.to(ctx.device), mask.to(ctx.device),
                        lq.to(ctx.device) if config.logq else None, config.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        value = loss.detach()
        if ctx.world_size > 1:
            dist.all_reduce(value)
            value = value / ctx.world_size
        total += float(value)
        n_steps += 1
        run.step += 1
        run.n_seen += len(labels) * ctx.world_size
        pace = run.n_seen / (run.step_seconds + time.perf_counter() - t_loop)
        steps.set_postfix(loss=f"{float(value):.3f}", pairs_s=f"{pace:.0f}")
        if config.time_budget_s is not None:
            run.done = rank0_says(time.perf_counter() - t_start > config.time_budget_s, ctx)
            if run.done:
                break
    run.step_seconds += time.perf_counter() - t_loop
    return total / max(1, n_steps), n_steps


def _report(pairs: Pairs, run: _Progress, seconds: float, config: FullConfig, ctx: Dist,
            frozen: list[str]) -> dict:
    """What the manifest's ``finetune`` entry records of stage 1."""
    return {
        "pairs": len(pairs), "cross_domain_pairs": int(pairs.cross.sum()),
        "same_domain_pairs": int((~pairs.cross).sum()), "pairs_seen": run.n_seen,
        "epochs": len(run.history) - 1, "best_epoch": run.best_epoch, "steps": run.step,
        "seconds": round(seconds, 1), "step_seconds": round(run.step_seconds, 1),
        "pairs_per_s": round(run.n_seen / run.step_seconds, 1) if run.step_seconds else 0.0,
        "device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu",
        "world_size": ctx.world_size, "global_batch": config.batch_size * ctx.world_size,
        "precision": "bf16" if ctx.device.type == "cuda" else "fp32",
        "gradient_checkpointing": config.gradient_checkpointing, "frozen": frozen,
        "config": asdict(config), "history": run.history,
    }


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _say(progress: bool, tqdm, message: str) -> None:
    log.info(message)
    if progress:
        tqdm.write(message)


# -- both stages ---------------------------------------------------------------------------------

def train_full(dataset: Dataset, out_dir: str | Path, base, settings, config: FullConfig | None = None,
               adapter_config=None, progress: bool = False,
               resume_dir: str | Path | None = None) -> dict | None:
    """Stage 1 (:func:`finetune_encoder`) into ``out_dir/encoder``, then the adapter stage over
    that encoder's item vectors into ``out_dir``.

    Args:
        dataset: split by users.csv, or the seeded split without it.
        out_dir: the model directory to write.
        base: :class:`xdretrieve.encoder.ModelRef` of the encoder to start from.
        settings: :class:`xdretrieve.config.Settings` (device, text template, sequence length,
            batch size and cache of the item embedding).
        config, adapter_config: hyper-parameters of the two stages.
        resume_dir: epoch checkpoints of stage 1 (see :func:`finetune_encoder`).

    Returns:
        The manifest written (rank 0); None on the other processes of a torchrun launch.
    """
    from xdretrieve.encoder import Encoder, resolve_model
    from xdretrieve.model import MANIFEST
    from xdretrieve.train.adapter import train_adapter

    out = Path(out_dir)
    report = finetune_encoder(dataset, base.path, out / ENCODER_DIR, config, device=settings.device,
                              text_template=settings.text_template,
                              max_seq_length=settings.max_seq_length, progress=progress,
                              resume_dir=resume_dir)
    if report is None:
        return None
    ref = resolve_model(str(out / ENCODER_DIR))
    encoder = Encoder(ref, settings.device, settings.batch_size, settings.max_seq_length,
                      settings.cache_dir)
    texts = [item_text(it, settings.text_template) for it in dataset.items.values()]
    vectors = encoder.encode(texts, progress=progress, desc="embedding items (fine-tuned)")
    del encoder
    gc.collect()
    manifest = train_adapter(dataset, vectors, out, ENCODER_DIR, ref.fingerprint, adapter_config,
                             progress=progress)
    report["base_model"], report["base_fingerprint"] = base.name, base.fingerprint
    manifest["kind"] = "full"
    manifest["finetune"] = report
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest

