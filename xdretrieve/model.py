"""A trained xdretrieve model directory, and its inference in NumPy (no torch at query time).

Layout of ``MODEL_DIR``::

    xdretrieve_model.json   manifest: kind, base encoder and its fingerprint, dim, domains,
                            training configuration, validation metrics
    weights.npz             item adapter per domain, user tower, per-item bias
    reranker.json           the re-ranker's weights (when training kept it), with
    item_stats.npz          the train users' popularity and co-occurrence it reads, and
                            the items' texts with their token index (text overlap)

The base encoder embeds item text as before (and its embedding cache keeps working); the item
adapter maps those vectors per domain into the shared, domain-aligned space that is stored in
Qdrant; the user tower turns a history of stored item vectors into a query vector for a target
domain; the per-item bias (learned, popularity-like) re-scores the nearest neighbours.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xdretrieve.errors import XDRetrieveError

MANIFEST = "xdretrieve_model.json"
WEIGHTS = "weights.npz"
MODEL_FORMAT = 1  # of the directory: a newer xdretrieve that changes it writes another number


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the model directory at ``path``.

    Raises:
        XDRetrieveError: it cannot be read, or was written in another format (a newer
            xdretrieve): said with the file, not as a KeyError deep in loading.
    """
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise XDRetrieveError(f"{file}: not a readable model manifest ({e}); train the model "
                              f"again (`xdretrieve finetune`)") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != MODEL_FORMAT:
        raise XDRetrieveError(
            f"{file}: model format {found!r}, but this xdretrieve reads format {MODEL_FORMAT} "
            f"(a model written by another version): train it again with this one")
    return manifest


def model_summary(path: Path) -> dict[str, Any] | str:
    """What a store's trained model learned, from its manifest: how, on which users, its best
    epoch's valid metrics, and where its re-ranker serves."""
    if not is_model_dir(path):
        return f"not found at {path} (moved? give --model where it is now)"
    m = read_manifest(path)
    best = next((h for h in m["history"] if h["epoch"] == m["best_epoch"]), {})
    kept = (m.get("reranker") or {}).get("kept")
    summary = {
        "kind": m["kind"], "base_model": _base_of(m),
        "trained_at": m["created_at"], "users": m.get("split"), "best_epoch": m["best_epoch"],
        "epochs": len(m["history"]), "valid": {k: round(v, 4) for k, v in best.items() if "@" in k},
        "reranker": ("none" if not m.get("reranker") else f"served into {', '.join(kept)}" if kept
                     else "served nowhere (no target domain gained on valid users)")}
    if "finetune" in m:  # full mode: the encoder's own fine-tuning
        ft = m["finetune"]
        summary["encoder_fine_tuning"] = {k: ft.get(k) for k in (
            "device", "world_size", "pairs", "epochs", "best_epoch", "pairs_per_s", "seconds")}
    return summary


def pretrained_base(model: str) -> str:
    """The encoder that ``model`` started from before any training: ``model`` itself for an
    encoder; for a trained model directory, the encoder its manifest names (for full mode, the
    one its encoder was fine-tuned from, not the fine-tuned one inside the directory)."""
    return _base_of(read_manifest(model)) if is_model_dir(model) else model


def _base_of(manifest: dict[str, Any]) -> str:
    """The pretrained encoder a model's manifest started from (full mode: the one its encoder
    was fine-tuned from)."""
    return manifest.get("finetune", {}).get("base_model") or manifest["base_model"]


def check_domains(path: str | Path, known: Sequence[str], wanted: Sequence[str]) -> None:
    """Raise :class:`XDRetrieveError` unless the model at ``path``, trained on the domains
    ``known``, knows every domain in ``wanted`` (it has an item adapter for those only)."""
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise XDRetrieveError(
            f"the trained model '{path}' knows the domains {', '.join(known)}, not "
            f"{', '.join(unknown)}: train a model on data with those domains (`xdretrieve "
            f"finetune`) and index with it (a store indexed without a trained model takes "
            f"items of any domain)")


def trained_items(path: str | Path) -> set[str]:
    """The ids of the items the model at ``path`` learned a bias for (its training catalog);
    items added since count as bias 0 and seldom reach a user's top 10 (README)."""
    return set(read_weights(path, ["bias_ids"])["bias_ids"].tolist())


def read_weights(path: str | Path, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of the weights file of the model directory at ``path`` (``keys`` only, when
    given), floats as float32.

    Raises:
        XDRetrieveError: the file is missing, cut short or lacks one of them, said with the
            file (not a zipfile or KeyError traceback).
    """
    file = Path(path) / WEIGHTS
    try:  # the file opened here: np.load leaves its own open when the zip is cut short
        with open(file, "rb") as f, np.load(f, allow_pickle=False) as npz:
            return {k: npz[k].astype(np.float32) if npz[k].dtype.kind == "f" else npz[k]
                    for k in (npz.files if keys is None else keys)}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # missing, cut short
        raise XDRetrieveError(f"{file}: the model's weights cannot be read ({e}); train the "
                              f"model again (`xdretrieve finetune`)") from None


def model_out_problem(out: str | Path) -> str | None:
    """Why a model cannot be written to ``out`` (the current folder, a file, a folder of other
    things), or None: a typo in ``--out`` must not scatter files into a folder or replace it."""
    resolved = Path(out).resolve()  # '.', 'models/..': a folder with a name to rename
    # publishing renames the folder: a shell in it would be left in a deleted folder
    if resolved == Path.cwd().resolve():
        return (f"{out} is the current folder: give the model a folder of its own (e.g. "
                f"--out shop.model)")
    if resolved.exists() and not (resolved.is_dir() and (
            is_model_dir(resolved) or not any(resolved.iterdir()))):
        return (f"{resolved} exists and is not an xdretrieve model directory (no {MANIFEST}): "
                f"give --out a new or empty folder, or one that a model was written to")
    return None


class StagedModelDir:
    """A model directory written whole or not at all: training writes into ``path``, a hidden
    sibling of ``out``, and :meth:`publish` puts it in ``out``'s place (an earlier model there
    is replaced only then). A run that fails or is interrupted leaves ``out`` as it was.

    Raises:
        XDRetrieveError: ``out`` is a file, or a folder with other things in it (not a model
            directory): a typo in ``--out`` must not scatter files into it.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out).resolve()  # '.', 'models/..': a folder with a name to rename
        problem = model_out_problem(out)
        if problem is not None:
            raise XDRetrieveError(problem)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.writing-",
                                          dir=self.out.parent))

    def publish(self) -> None:
        """Replace ``out`` with what was written (a rename on one file system)."""
        old = None
        if self.out.exists():
            old = self.out.with_name(f"{self.path.name}.old")
            self.out.rename(old)
        self.path.rename(self.out)
        if old is not None:
            shutil.rmtree(old)

    def __enter__(self) -> StagedModelDir:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)  # nothing there once published


def _normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _gelu(x: np.ndarray) -> np.ndarray:
    # tanh approximation: the training uses nn.GELU(approximate="tanh"), so this is exact
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))


@dataclass
class TrainedModel:
    """Item adapter + user tower + item bias, loaded from a model directory."""

    path: Path
    manifest: dict[str, Any]
    weights: dict[str, np.ndarray]
    bias: dict[str, float]
    reranker: Any = None  # xdretrieve.rerank.Reranker, when training kept one
    _pids: np.ndarray | None = field(default=None, repr=False, compare=False)
    _item_point: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> TrainedModel:
        path = Path(path)
        manifest = read_manifest(path)
        weights = read_weights(path)
        bias = dict(zip(weights.pop("bias_ids").tolist(), weights.pop("bias").tolist(), strict=False))
        from xdretrieve.rerank import Reranker

        return cls(path, manifest, weights, bias, Reranker.load(path))

    @property
    def domains(self) -> list[str]:
        return list(self.manifest["domains"])

    @property
    def max_history(self) -> int:
        return int(self.manifest["max_history"])

    def window(self, history: Sequence[Any]) -> Sequence[Any]:
        """The part of a history (oldest first) the model reads: its last ``max_history`` items,
        which the user tower and the re-ranker were fitted on."""
        return history[-self.max_history:]

    @property
    def scale(self) -> float:
        return float(np.exp(self.weights["logit_scale"]))

    def item_vectors(self, base: np.ndarray, domains: list[str]) -> np.ndarray:
        """(n, base_dim) encoder vectors of items of the given domains -> (n, dim) unit vectors
        in the shared space."""
        out = np.zeros((len(base), int(self.manifest["dim"])), dtype=np.float32)
        domains_arr = np.asarray(domains)
        check_domains(self.path, self.domains, domains)
        for d in set(domains):
            rows = np.flatnonzero(domains_arr == d)
            out[rows] = base[rows] @ self.weights[f"proj_w_{d}"] + self.weights[f"proj_b_{d}"]
        return _normalize(out)

    def profile_target(self, domain: str) -> str | None:
        """The target domain a stored profile of ``domain`` is a query for: the model's other
        domain when it has two (what a cold-start question about that user asks), else None."""
        others = [d for d in self.domains if d != domain]
        return others[0] if len(self.domains) == 2 and len(others) == 1 else None

    def user_vector(self, history: np.ndarray, target: str) -> np.ndarray:
        """(L, dim) stored vectors of a history, oldest first -> (dim,) unit query vector for
        ``target`` (attention pooling with recency positions, then a residual MLP)."""
        w = self.weights
        x = self.window(history)  # (L, dim)
        x = x + w["pos"][self.max_history - len(x):]
        if self.manifest.get("config", {}).get("pooling", "attention") == "attention":
            a = np.tanh(x @ w["att_w1"] + w["att_b1"]) @ w["att_w2"] + w["att_b2"]  # (L,)
        else:  # a mean-pooled tower (the ablation)
            a = np.zeros(len(x), dtype=np.float32)
        a = np.exp(a - a.max())
        pooled = (a / a.sum()) @ x  # (dim,)
        h = _gelu((pooled + w[f"tgt_{target}"]) @ w["mlp_w1"] + w["mlp_b1"])
        return _normalize(pooled + h @ w["mlp_w2"] + w["mlp_b2"])

    def rescore(self, item_ids: list[str], cosines: np.ndarray) -> np.ndarray:
        """The model's score of candidates: scale * cosine + item bias."""
        bias = np.fromiter((self.bias.get(i, 0.0) for i in item_ids), np.float32, len(item_ids))
        return self.scale * cosines + bias

    def index_points(self) -> None:
        """Point ids of the model's items, sorted, with each one's bias and row in the
        re-ranker's statistics: the query path maps hundreds of neighbours by one binary
        search instead of hundreds of dictionary lookups. Built on first use; call it again
        after replacing ``bias`` or ``reranker``."""
        from xdretrieve.store.base import item_point_id

        items, values = list(self.bias), list(self.bias.values())
        pids = np.fromiter(map(item_point_id, items), np.int64, len(items))
        item_point = dict(zip(items, pids.tolist(), strict=True))
        if not items:  # a sentinel no point id equals (they are >= 0): lookups need no branch
            items, values, pids = [""], [0.0], np.array([-1])
        order = np.argsort(pids)
        pid_rows = (self.reranker.stats.rows_of([items[k] for k in order])
                    if self.reranker is not None else np.full(len(items), -1))
        # and the other way: the point id of each row of the statistics
        stats_ids = self.reranker.stats.ids if self.reranker is not None else []
        row_pids = np.fromiter((item_point[i] if i in item_point else item_point_id(i)
                                for i in stats_ids), np.int64, len(stats_ids))
        # published whole, the sorted ids last: a thread that sees them finds the rest built
        self._item_point, self._row_pids = item_point, row_pids
        self._pid_bias, self._pid_rows = np.asarray(values, dtype=np.float32)[order], pid_rows
        self._pids = pids[order]

    def _lookup(self, point_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(position in the sorted point ids, whether it is there) of each point id."""
        if self._pids is None:
            self.index_points()
        wanted = np.fromiter(point_ids, np.int64, len(point_ids))
        at = np.minimum(np.searchsorted(self._pids, wanted), len(self._pids) - 1)
        return at, self._pids[at] == wanted

    def point_of_item(self, item_id: str) -> int:
        """The store point id of an item (cached for the items the model was trained with)."""
        if self._pids is None:
            self.index_points()
        found = self._item_point.get(item_id)
        if found is None:
            from xdretrieve.store.base import item_point_id

            found = item_point_id(item_id)
        return found

    def row_points(self, rows: np.ndarray) -> np.ndarray:
        """The store point id of each row of the re-ranker's statistics."""
        if self._pids is None:
            self.index_points()
        return self._row_pids[rows]

    def stats_rows(self, point_ids: Sequence[int]) -> np.ndarray:
        """Each point's row in the re-ranker's statistics, -1 where they do not know it."""
        at, found = self._lookup(point_ids)
        return np.where(found, self._pid_rows[at], -1)

    def rescore_points(self, point_ids: Sequence[int], cosines: np.ndarray) -> np.ndarray:
        """:meth:`rescore` of candidates given by their store point ids."""
        at, found = self._lookup(point_ids)
        return self.scale * cosines + np.where(found, self._pid_bias[at], np.float32(0))
