"""A persistent embedding cache keyed by encoder and text, so that reruns do not re-encode.

One SQLite file per encoder fingerprint; keys are sha1 digests of the text. SQLite gives atomic
writes for free: an interrupted run leaves a consistent cache that the next run extends.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np

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
        rows = [(_key(t), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for t, v in zip(texts, vectors, strict=False)]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)", rows)

    def close(self) -> None:
        self._db.close()
