"""A persistent embedding cache keyed by encoder and text, so that reruns do not re-encode.

One SQLite file per encoder fingerprint; keys are sha1 digests of the text. SQLite gives atomic
writes for free: an interrupted run leaves a consistent cache that the next run extends.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_VARS = 500  # SQLite's host-parameter limit is 999 on old builds


def _key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Maps text -> float32 vector for one encoder (named by ``namespace``)."""

    def __init__(self, directory: Path, namespace: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{namespace}.sqlite"
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, vec BLOB)")
        self._writable = True

    @classmethod
    def open(cls, directory: Path, namespace: str) -> EmbeddingCache | None:
        """The cache, or None, with a warning, where it cannot be opened (a read-only home, a
        file in the way): it only saves time, so embedding goes on without it."""
        try:
            return cls(directory, namespace)
        except (OSError, sqlite3.Error) as e:
            log.warning("the embedding cache in %s cannot be used (%s): embedding without it "
                        "(set XDR_CACHE_DIR to a writable folder to keep vectors for reruns)",
                        directory, e)
            return None

    def get(self, texts: list[str]) -> dict[int, np.ndarray]:
        """Cached vectors by position in ``texts``."""
        keys = [_key(t) for t in texts]
        found: dict[bytes, np.ndarray] = {}
        for start in range(0, len(keys), _VARS):
            chunk = keys[start:start + _VARS]
            rows = self._db.execute(
                f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return {i: found[k] for i, k in enumerate(keys) if k in found}

    def put(self, texts: list[str], vectors: np.ndarray) -> None:
        """Store vectors; a cache that cannot be written (read-only, a full disk) is still read,
        and said so once."""
        if not self._writable:
            return
        rows = [(_key(t), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for t, v in zip(texts, vectors, strict=False)]
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)", rows)
        except sqlite3.Error as e:
            log.warning("the embedding cache %s cannot be written (%s): new vectors are not kept "
                        "for reruns", self.path, e)
            self._writable = False

    def close(self) -> None:
        self._db.close()
