"""The lightweight re-ranker: a linear model over cheap features of (user, candidate).

The nearest-neighbour search hands over ``candidates`` (200) items; each gets

====================  ==========================================================================
``score``             the model's score: scale * cosine + item bias
``cosine``            cosine between the user vector and the item
``log_popularity``    log(1 + interactions of train users with the item)
``cooccurrence``      log(1 + sum over history items h of train users having both h and the item)
``cooccurrence_norm`` that sum with each pair divided by sqrt(pop(h) * pop(item)) (cosine-like)
``cooccurrence_cond`` that sum with each pair divided by pop(h) + 50 (a damped P(item | h))
``text_overlap``      share of the item's text tokens (category path, brand) in the history's text
====================  ==========================================================================

and the re-ranker orders them by ``w . standardised(features)``. It is trained listwise (softmax
over a user's candidates) on train users the tower did not see, and served in the target domains
where it lifts ndcg@10 on valid users. Everything is NumPy: about 0.1 ms for 200 candidates.

The candidates are the union of the tower's nearest neighbours and the items that co-occur most
with the history (:meth:`ItemStats.cooccurring`): the tower finds items by content, the
co-occurrence table finds what train users with the same items bought, and the re-ranker weighs
the two.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

FEATURES = ("score", "cosine", "log_popularity", "cooccurrence", "cooccurrence_norm",
            "cooccurrence_cond", "text_overlap")
COND_SHRINK = 50.0  # damps P(item | h) for history items few train users have
# A train user's pairs grow with the square of their history: counted over every item, a few
# users with thousands of items fill memory (100 such users with 3,000 items per domain took
# 17 GB in `finetune`) and drown everybody else's pairs. Co-occurrence counts each user's most
# recent distinct items per domain, up to this many (no amazon-arts-office user has more than
# 57 in a domain: nothing there changes).
COOCCURRENCE_HISTORY = 100
# Words of any script: letters and digits (an ASCII class cut "für" into "f" and "r", which
# then overlapped with every other German text)
_TOKEN = re.compile(r"[^\W_]+")
# Saved with a token index: an index of another version (1: ASCII words) is built anew
TOKENS_VERSION = 2


def tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


def overlap_text(title: str, text: str) -> str:
    """An item's text as the text-overlap feature reads it: training counts and serving
    compares the same words."""
    return f"{title} {text}"


def recent_distinct(history: Sequence[str], n: int) -> tuple[str, ...]:
    """The last ``n`` distinct items of ``history`` (oldest first, each at its latest place)."""
    seen: set[str] = set()
    out: list[str] = []
    for item in reversed(history):
        if item not in seen:
            seen.add(item)
            out.append(item)
            if len(out) == n:
                break
    return tuple(reversed(out))


def pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 byte array and their offsets: what ``np.savez`` stores at their own
    size (a unicode array pads every string to the longest: amazon-arts-office's item texts
    took 211 MB so, 6.3 MB packed)."""
    encoded = [t.encode() for t in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def unpack_strings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    """The strings of :func:`pack_strings`."""
    data, at = blob.tobytes(), offsets.tolist()
    return [data[a:b].decode() for a, b in zip(at[:-1], at[1:], strict=True)]


@dataclass(frozen=True, slots=True)
class HistoryCooccurrence:
    """A history's co-occurrence with every item train users had together with one of its items
    (the other domain's), summed over the history: the co-occurrence features of any candidate."""

    rows: np.ndarray  # the history's known rows, sorted, each once
    complete: bool  # the statistics know every item of the history
    items: np.ndarray  # rows of the items co-occurring with any of them, ascending
    count: np.ndarray  # sum over history items h of cooc(h, item)
    norm: np.ndarray  # the same with each pair divided by sqrt(pop(h) * pop(item)) + 1
    cond: np.ndarray  # the same with each pair divided by pop(h) + COND_SHRINK

    def lookup(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, norm, cond) of the items at ``rows``; 0 where an item co-occurs with none of
        the history (and for rows -1)."""
        out = [np.zeros(len(rows), dtype=np.float32) for _ in range(3)]
        if len(self.items):
            at = np.minimum(np.searchsorted(self.items, rows), len(self.items) - 1)
            found = self.items[at] == rows
            for column, values in zip(out, (self.count, self.norm, self.cond), strict=True):
                column[found] = values[at[found]]
        return out[0], out[1], out[2]


@dataclass
class ItemStats:
    """Collaborative statistics of train users: popularity and cross-domain co-occurrence.

    ``cooc`` is (n_items, n_items) CSR over ``ids``: entry (h, c) counts train users who
    interacted with both h and c, for h and c of different domains."""

    ids: list[str]
    popularity: np.ndarray  # (n_items,)
    cooc: sp.csr_matrix
    domains: np.ndarray | None = None  # (n_items,) domain of each item (for candidates)
    texts: list[str] | None = None  # each item's title and text (for text_overlap)

    def __post_init__(self) -> None:
        self.row = {iid: r for r, iid in enumerate(self.ids)}
        self.cooc.sort_indices()  # row_features() looks pairs up by binary search
        self._tokens: dict[int, set[str]] = {}
        # every item's distinct text tokens as ids into one vocabulary, CSR-like (built on
        # first use): text_overlap of 200 candidates is then a few array operations
        self._token_ptr: np.ndarray | None = None
        self._token_ids = np.zeros(0, dtype=np.int32)
        self._vocab: dict[str, int] = {}
        self._popular: dict[str, list[str]] = {}  # per domain, computed once
        self._codes: np.ndarray | None = None
        self._code: dict[str, int] = {}
        if self.domains is not None:
            names, codes = np.unique(self.domains, return_inverse=True)
            self._code = {str(d): c for c, d in enumerate(names)}
            self._codes = codes.astype(np.int32)

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Each item's row, -1 for an item the statistics do not know."""
        return np.fromiter((self.row.get(i, -1) for i in item_ids), np.int64, len(item_ids))

    def history_rows(self, history: Sequence[str]) -> np.ndarray:
        """The known rows of a history, sorted, each once."""
        rows = self.rows_of(history)
        return np.unique(rows[rows >= 0])

    def _gather(self, hist_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The co-occurrence rows of ``hist_rows`` (sorted) as flat arrays: which of them
        (index into ``hist_rows``), column, count; columns ascending within each row. Work in
        proportion to those rows' entries, not to the catalog (1M items cost as 38k do)."""
        owner, pos = self._flat(self.cooc.indptr, hist_rows)
        return owner, self.cooc.indices[pos], self.cooc.data[pos]

    def history_cooccurrence(self, history: Sequence[str]) -> HistoryCooccurrence:
        """What the history's items co-occur with, summed over them (see
        :class:`HistoryCooccurrence`): computed once per query, read by both
        :meth:`cooccurring_rows` and :func:`row_features`."""
        hist_rows = self.history_rows(history)
        owner, cols, counts = self._gather(hist_rows)
        # each history row's columns are ascending: a stable sort merges those runs (a third
        # of np.unique's time for the 14,000 entries of a long history)
        order = np.argsort(cols, kind="stable")
        owner, cols, counts = owner[order], cols[order], counts[order]
        starts = np.flatnonzero(np.diff(cols, prepend=-1))
        hist_pop = self.popularity[hist_rows][owner]

        def summed(values: np.ndarray) -> np.ndarray:
            return np.add.reduceat(values, starts) if len(values) else values

        return HistoryCooccurrence(
            hist_rows, len(hist_rows) == len(set(history)), cols[starts].astype(np.int64),
            summed(counts),
            summed(counts / (np.sqrt(hist_pop * self.popularity[cols]) + 1.0)),
            summed(counts / (hist_pop + COND_SHRINK)))

    def popular(self, domain: str) -> list[str]:
        """The items of ``domain`` by popularity among train users, most first (ties in
        catalog order); empty without domains."""
        found = self._popular.get(domain)
        if found is None:
            code = self._code.get(domain)
            if code is None:  # no domains, or not this one
                return []
            rows = np.flatnonzero(self._codes == code)
            rows = rows[np.argsort(-self.popularity[rows], kind="stable")]
            found = self._popular[domain] = [self.ids[r] for r in rows]
        return found

    def tokens_of(self, row: int) -> set[str]:
        """The item's text tokens (cached: the serving path asks for the same items often)."""
        found = self._tokens.get(row)
        if found is None:
            found = self._tokens[row] = tokens(self.texts[row]) if self.texts else set()
        return found

    def index_tokens(self) -> None:
        """Build the token ids of every item's text (what :func:`row_features` reads; a saved
        model's are read with it)."""
        ptr, ids, vocab = [0], [], {}
        for text in self.texts or ():  # sorted: a set's order changes with the process's hash
            # seed, and the vocabulary is saved with the model (the same training, the same files)
            found = {vocab.setdefault(t, len(vocab)) for t in sorted(tokens(text))}
            ids.extend(sorted(found))
            ptr.append(len(ids))
        # published whole, the pointer last: a thread that sees it finds the rest built
        self._vocab, self._token_ids = vocab, np.asarray(ids, dtype=np.int32)
        self._token_ptr = np.asarray(ptr if self.texts else [0] * (len(self.ids) + 1), np.int64)

    def _flat(self, ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The entries of ``rows`` of a CSR-like (``ptr``, entries) as flat positions, with
        the index into ``rows`` each belongs to (work in proportion to those rows only)."""
        starts = ptr[rows].astype(np.int64)
        lengths = ptr[rows + 1] - starts
        owner = np.repeat(np.arange(len(rows)), lengths)
        pos = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return owner, pos + starts[owner]

    def text_overlap(self, rows: np.ndarray, history_tokens: np.ndarray) -> np.ndarray:
        """Share of each item's distinct tokens that are in ``history_tokens`` (sorted token
        ids); 0 for rows -1 and for items without text."""
        if self._token_ptr is None:
            self.index_tokens()
        known = np.flatnonzero(rows >= 0)
        out = np.zeros(len(rows), dtype=np.float32)
        owner, pos = self._flat(self._token_ptr, rows[known])
        # a mask over the vocabulary: a gather instead of np.isin's sort (40 us, not 230)
        in_history = np.zeros(len(self._vocab), dtype=bool)
        in_history[history_tokens] = True
        hit = in_history[self._token_ids[pos]]
        sizes = np.bincount(owner, minlength=len(known))
        shared = np.bincount(owner, weights=hit, minlength=len(known))
        out[known] = np.where(sizes > 0, shared / np.maximum(sizes, 1), 0.0)
        return out

    def knows_texts(self, found: HistoryCooccurrence) -> bool:
        """Whether the statistics hold the text of every item of the history ``found`` was
        summed over; if not, the history's own text stands in."""
        return self.texts is not None and found.complete

    def history_token_ids(self, hist_rows: np.ndarray, text: str | None = None) -> np.ndarray:
        """The sorted token ids of the history: of its items' texts (``hist_rows``), or of
        ``text`` (tokens no item has cannot overlap and are left out)."""
        if self._token_ptr is None:
            self.index_tokens()
        if text is not None:
            found = (self._vocab.get(t, -1) for t in tokens(text))
            ids = np.fromiter(found, np.int64)
            return np.unique(ids[ids >= 0])
        _, pos = self._flat(self._token_ptr, hist_rows)
        return np.unique(self._token_ids[pos])

    def cooccurring(self, history: Sequence[str], domain: str, k: int) -> list[str]:
        """Up to ``k`` items of ``domain`` that most train users had together with the
        history's items (summed over the history; the history itself left out), best first."""
        return [self.ids[r] for r in self.cooccurring_rows(history, domain, k).tolist()]

    def cooccurring_rows(self, history: Sequence[str], domain: str, k: int,
                         found: HistoryCooccurrence | None = None) -> np.ndarray:
        """:meth:`cooccurring` as rows of the statistics (``found``: the history's
        :meth:`history_cooccurrence`, if the caller has it)."""
        code = self._code.get(domain)
        none = np.zeros(0, dtype=np.int64)
        if code is None or k < 1:
            return none
        found = found if found is not None else self.history_cooccurrence(history)
        cols, counts = found.items, found.count
        keep = (self._codes[cols] == code) & ~np.isin(cols, found.rows)
        cols, counts = cols[keep], counts[keep]
        if len(cols) > k:  # the k best, and every item tied with the k-th (ordered below)
            top = counts >= np.partition(counts, len(counts) - k)[len(counts) - k]
            cols, counts = cols[top], counts[top]
        # ties by popularity, then catalog order: the same order on every call
        order = np.lexsort((cols, -self.popularity[cols], -counts))[:k]
        return cols[order]

    @classmethod
    def fit(cls, ids: list[str], histories: dict[str, dict[str, tuple[str, ...]]],
            domains: Sequence[str] | None = None, texts: Sequence[str] | None = None,
            max_history: int = COOCCURRENCE_HISTORY) -> ItemStats:
        """Count ``histories`` (user -> domain -> item ids); ``domains`` and ``texts`` give each
        item's domain and text, in ``ids`` order. Popularity counts every interaction; the
        co-occurrence each user's ``max_history`` most recent distinct items per domain."""
        row = {iid: r for r, iid in enumerate(ids)}
        n = len(ids)
        every: list[int] = []  # every interaction, for popularity
        # per domain of the histories, a binary (users, items) matrix; the co-occurrence is the
        # sum of their products over ordered pairs of different domains (a user's item pairs
        # listed one by one cost memory in proportion to the heaviest users' history squared)
        entries: dict[str, tuple[list[int], list[int]]] = {}
        for user, per_domain in enumerate(histories.values()):
            for d, h in per_domain.items():
                every.extend(row[i] for i in h)
                counted = recent_distinct(h, max_history)  # a repeated item counts once
                users, items = entries.setdefault(d, ([], []))
                users.extend([user] * len(counted))
                items.extend(row[i] for i in counted)
        popularity = np.bincount(every, minlength=n).astype(np.float32)
        shape = (len(histories), n)
        by_domain = [sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)),
                                   shape=shape) for users, items in entries.values()]
        cooc = sp.csr_matrix((n, n), dtype=np.float32)
        for a, left in enumerate(by_domain):
            for b, right in enumerate(by_domain):
                if a != b:
                    cooc = cooc + (left.T @ right).tocsr()
        cooc = cooc.astype(np.float32).tocsr()
        cooc.eliminate_zeros()
        return cls(list(ids), popularity, cooc,
                   None if domains is None else np.asarray(domains, dtype=str),
                   None if texts is None else list(texts))

    def save(self, path: Path) -> None:
        """Write the statistics to ``path`` (``.npz``), with the texts' token index, so that
        a process that loads them does not tokenize the catalog before its first answer."""
        extra = {} if self.domains is None else {"domains": self.domains}
        if self.texts is not None:
            if self._token_ptr is None:
                self.index_tokens()
            extra["text_bytes"], extra["text_offsets"] = pack_strings(self.texts)
            extra["vocab_bytes"], extra["vocab_offsets"] = pack_strings(list(self._vocab))
            extra["token_ids"], extra["token_ptr"] = self._token_ids, self._token_ptr
            extra["tokens_version"] = np.array(TOKENS_VERSION)
        np.savez(path, ids=np.array(self.ids), popularity=self.popularity,
                 data=self.cooc.data, indices=self.cooc.indices, indptr=self.cooc.indptr, **extra)

    @classmethod
    def load(cls, path: Path) -> ItemStats:
        with np.load(path, allow_pickle=False) as z:
            n = len(z["ids"])
            cooc = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(n, n))
            domains = z["domains"] if "domains" in z.files else None
            texts = None
            if "text_bytes" in z.files:
                texts = unpack_strings(z["text_bytes"], z["text_offsets"])
            elif "texts" in z.files:  # saved before the texts were packed
                texts = z["texts"].tolist()
            stats = cls(z["ids"].tolist(), z["popularity"], cooc, domains, texts)
            saved = int(z["tokens_version"]) if "tokens_version" in z.files else 1
            if "token_ptr" in z.files and saved == TOKENS_VERSION:  # else indexed when first read
                vocab = unpack_strings(z["vocab_bytes"], z["vocab_offsets"])
                stats._vocab = {token: k for k, token in enumerate(vocab)}
                stats._token_ids, stats._token_ptr = z["token_ids"], z["token_ptr"]
            return stats


def features(stats: ItemStats, history: Sequence[str], history_text: str,
             candidates: Sequence[str], candidate_texts: Sequence[str] | None,
             cosines: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(len(candidates), len(FEATURES)) raw features, columns as :data:`FEATURES`.

    ``candidate_texts`` None: the texts ``stats`` holds (an item it does not know has none)."""
    return row_features(stats, stats.rows_of(candidates), history, history_text,
                        candidate_texts, cosines, scores)


def row_features(stats: ItemStats, rows: np.ndarray, history: Sequence[str], history_text: str,
                 candidate_texts: Sequence[str] | None, cosines: np.ndarray,
                 scores: np.ndarray, cooccurrence: HistoryCooccurrence | None = None
                 ) -> np.ndarray:
    """:func:`features` of candidates given by their rows in ``stats`` (-1: unknown);
    ``cooccurrence``: the history's :meth:`ItemStats.history_cooccurrence`, if the caller has
    it."""
    known = rows >= 0
    pop = np.zeros(len(rows), dtype=np.float32)
    pop[known] = stats.popularity[rows[known]]
    if cooccurrence is None:
        cooccurrence = stats.history_cooccurrence(history)
    hist_rows = cooccurrence.rows
    cooc, norm, cond = cooccurrence.lookup(rows)
    every_known = stats.knows_texts(cooccurrence)
    if candidate_texts is not None:  # texts given (training): tokenize them
        if every_known:
            history_tokens = set().union(*map(stats.tokens_of, hist_rows.tolist()))
        else:
            history_tokens = tokens(history_text)
        overlap = np.array([len(t & history_tokens) / len(t) if t else 0.0
                            for t in map(tokens, candidate_texts)], dtype=np.float32)
    else:  # the statistics' texts, by token ids; the history's own text where one is unknown
        overlap = stats.text_overlap(rows, stats.history_token_ids(
            hist_rows, None if every_known else history_text))
    return np.column_stack([scores, cosines, np.log1p(pop), np.log1p(cooc), norm, cond, overlap])


@dataclass
class Reranker:
    """``w . (x[:, used] - mean) / std``: a linear listwise re-ranker over the columns of
    :data:`FEATURES` it was trained on (``names``; a model saved before a feature was added keeps
    loading), served for the target ``domains`` where it lifted valid users (None: every one,
    as in a model saved before that choice was made per domain)."""

    weights: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    stats: ItemStats
    names: tuple[str, ...] = FEATURES
    domains: tuple[str, ...] | None = None

    def serves(self, domain: str) -> bool:
        """Whether answers in target ``domain`` are re-ranked."""
        return self.domains is None or domain in self.domains

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in FEATURES]
        if unknown:
            raise ValueError(f"unknown re-ranker feature(s) {unknown}; known: {list(FEATURES)}")
        self.columns = np.array([FEATURES.index(n) for n in self.names], dtype=np.int64)

    def score(self, x: np.ndarray) -> np.ndarray:
        """(n,) scores of candidates from :func:`features`' (n, len(FEATURES)) matrix."""
        return ((x[:, self.columns] - self.mean) / self.std) @ self.weights

    def explain(self, row: np.ndarray) -> dict[str, dict[str, float]]:
        """One candidate's row of :func:`features`: the features by name, each used one's
        value in standard deviations from its mean over the fitted candidates, and its part of
        :meth:`score` (weight x that value; they sum to the score). A part is positive for a
        value below the mean where the weight is negative (a re-ranker may favour the less
        popular of the co-bought items): the standardised value tells which."""
        z = (row[self.columns] - self.mean) / self.std
        return {"features": {n: round(float(v), 6) for n, v in zip(FEATURES, row, strict=True)},
                "standardised": {n: round(float(v), 6) for n, v in zip(self.names, z, strict=True)},
                "contributions": {n: round(float(v), 6)
                                  for n, v in zip(self.names, z * self.weights, strict=True)}}

    def save(self, directory: Path) -> None:
        (directory / "reranker.json").write_text(json.dumps({
            "features": list(self.names), "weights": self.weights.tolist(),
            "mean": self.mean.tolist(), "std": self.std.tolist(),
            "domains": None if self.domains is None else list(self.domains)}, indent=2))
        self.stats.save(directory / "item_stats.npz")

    @classmethod
    def load(cls, directory: Path) -> Reranker | None:
        path = directory / "reranker.json"
        if not path.is_file():
            return None
        spec = json.loads(path.read_text())
        try:
            return cls(np.array(spec["weights"], dtype=np.float32),
                       np.array(spec["mean"], dtype=np.float32),
                       np.array(spec["std"], dtype=np.float32),
                       ItemStats.load(directory / "item_stats.npz"), tuple(spec["features"]),
                       None if spec.get("domains") is None else tuple(spec["domains"]))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def listwise_batch(groups: list[tuple[np.ndarray, np.ndarray]]):
    """``groups`` (per user: features (n_cand, F), labels (n_cand,) 0/1) as one padded batch
    for a listwise loss: (X (users, width, F) standardised, Y (users, width) each user's labels
    summing to 1, pad (users, width) True where padding) as torch tensors, and the features'
    mean and std. Users without a relevant candidate teach nothing and are dropped."""
    import torch

    groups = [(x, y) for x, y in groups if y.any()]
    if not groups:
        raise ValueError("no user has a relevant candidate: nothing to fit the re-ranker on")
    # users have different numbers of candidates: pad, and mask the padding out of the softmax
    width = max(len(x) for x, _ in groups)
    allx = np.concatenate([x for x, _ in groups])
    mean, std = allx.mean(0), allx.std(0) + 1e-6
    X = np.zeros((len(groups), width, allx.shape[1]), dtype=np.float32)
    Y = np.zeros((len(groups), width), dtype=np.float32)
    pad = np.ones((len(groups), width), dtype=bool)
    for g, (x, y) in enumerate(groups):
        X[g, :len(x)] = (x - mean) / std
        Y[g, :len(y)] = y / y.sum()
        pad[g, :len(x)] = False
    return torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(pad), mean, std


def fit_reranker(groups: list[tuple[np.ndarray, np.ndarray]], stats: ItemStats,
                 epochs: int = 200, lr: float = 0.05, seed: int = 0) -> Reranker:
    """Fit listwise: ``groups`` holds per user (features (n_cand, F), labels (n_cand,) 0/1);
    users without a relevant candidate teach nothing and are dropped."""
    import torch

    torch.manual_seed(seed)
    X, Y, pad, mean, std = listwise_batch(groups)
    w = torch.zeros(X.shape[-1], requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(epochs):
        logits = (X @ w).masked_fill(pad, -1e9)
        loss = -(Y * torch.log_softmax(logits, dim=1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Reranker(w.detach().numpy().astype(np.float32), mean.astype(np.float32),
                    std.astype(np.float32), stats)


def tower_head(total: int, share: float = 0.5) -> int:
    """How many of ``total`` re-ranker candidates are the tower's best, whatever co-occurs."""
    return total - int(share * total)


def candidate_union(ranked: Sequence[str], cooccurring: Sequence[str], total: int,
                    share: float = 0.5) -> list[str]:
    """The re-ranker's candidates: the first :func:`tower_head` of the tower's ranking, then
    co-occurring items not among them, then more of the tower's ranking, up to ``total``.
    Ids are compared as given (item ids or point ids)."""
    head = list(ranked[:tower_head(total, share)])
    seen = set(head)
    for item in (*cooccurring, *ranked[len(head):]):
        if len(head) >= total:
            break
        if item not in seen:
            seen.add(item)
            head.append(item)
    return head
