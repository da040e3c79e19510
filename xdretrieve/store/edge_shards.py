"""A collection of the embedded store on disk: its Qdrant Edge shards.

Two layouts of ``<store>/<collection>/``:

* **one shard per domain** (``shards.json`` names them): what a collection with a ``domain``
  field gets when ``hnsw_per_domain`` is on, the default. Every query searches one domain, and
  here that is one shard with its own HNSW graph and no filter to check. The shards share
  nothing, so a large load writes them from separate processes at once
  (:mod:`xdretrieve.store.edge_load`): the binding holds the GIL while it converts and writes
  points, which rules out threads.
* **one shard** (``edge_config.json`` in the collection's directory): every point in one shard,
  a query of one domain filtered on the indexed ``domain`` field. Its graph covers all points
  (``hnsw_per_domain`` off) or, in stores built before per-domain shards, is one graph per
  domain inside the shard (``m=0``, ``payload_m``: Qdrant's multitenancy layout), which a search
  without a domain cannot use: it scans.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from xdretrieve.errors import StoreError

SHARDS_FILE = "shards.json"
SHARD_CONFIG = "edge_config.json"
# In KiB of vectors: a segment with fewer gets no graph in optimize(), and a search of fewer
# scans them. Qdrant's default, 10,000, left a domain's shard of the trained model's 128-d
# vectors unindexed (19k items: 9.7 MB), and scanning it made the re-ranked path at 38k slower
# (p50 2.35-2.42 ms against 2.19-2.25 with a graph; the same queries, alternated): 2,000 gives
# a graph from about 4,000 items at 128 dimensions, 1,300 at 384.
INDEXING_KB = 2_000
FULL_SCAN_KB = 2_000
WRITE_BATCH = 1024  # points per engine call


@dataclass(frozen=True)
class ShardSpec:
    """What a collection's shards are created with (kept in ``shards.json``, so that a domain
    first seen later gets a shard like the others whatever the settings of the day)."""

    dim: int
    hnsw_m: int
    hnsw_ef_construct: int
    quantization: str  # "int8" (scalar, in RAM, rescored on the originals) or "none"
    search_threads: int  # 0: the engine's pool, one thread per CPU
    keyword_fields: tuple[str, ...]
    domain_graphs: bool = False  # one shard, one graph per domain (m=0, payload_m)

    def edge_config(self) -> qe.EdgeConfig:
        quantization = (qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99,
                                                    memory=qe.Memory.Pinned)
                        if self.quantization == "int8" else None)
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(m=0 if self.domain_graphs else self.hnsw_m,
                                           ef_construct=self.hnsw_ef_construct,
                                           full_scan_threshold=FULL_SCAN_KB,
                                           payload_m=self.hnsw_m if self.domain_graphs else None),
            quantization_config=quantization,
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_KB),
            wal_enabled=False,  # every write call ends with a flush instead (see EdgeStore)
            max_search_threads=self.search_threads or None,
        )

    def create(self, path: Path) -> qe.EdgeShard:
        path.mkdir(parents=True, exist_ok=True)
        shard = qe.EdgeShard.create(str(path), self.edge_config())
        for name in self.keyword_fields:
            shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
        return shard


def write_points(shard: qe.EdgeShard, ids: Sequence[int], vectors: np.ndarray,
                 payloads: Sequence[dict[str, Any]]) -> None:
    """Upsert into one shard, :data:`WRITE_BATCH` points per engine call (no flush)."""
    # The vectors go in as slices of one flat float32 memoryview: the binding reads any
    # sequence of floats, and these slices cost no copy and no Python float list, several
    # times cheaper than ``ndarray.tolist()`` (which was the largest cost of an upsert).
    dim = vectors.shape[1]
    flat = memoryview(np.ascontiguousarray(vectors, dtype=np.float32)).cast("B").cast("f")
    for start in range(0, len(ids), WRITE_BATCH):
        end = min(start + WRITE_BATCH, len(ids))
        points = [qe.Point(ids[k], flat[k * dim:(k + 1) * dim], payloads[k])
                  for k in range(start, end)]
        shard.update(qe.UpdateOperation.upsert_points(points))


def open_shard(path: Path, store: Path) -> qe.EdgeShard:
    try:
        return qe.EdgeShard.load(str(path))
    except Exception as e:  # the engine reports a held WAL lock as a plain error
        if "WouldBlock" in str(e) or "lock" in str(e).lower():
            raise StoreError(f"the store {store} is open in another process or object; close "
                             f"that first (or serve it over HTTP): {e}") from e
        raise StoreError(f"cannot open the store {store} ({path}): {e}") from e


class ShardSet:
    """The shards of one collection, opened when first used.

    ``by_domain``: one shard per domain, keyed by the domain; otherwise one shard, keyed
    ``None``, holding every point.
    """

    def __init__(self, path: Path, store: Path, by_domain: bool, spec: ShardSpec | None,
                 dirs: dict[str | None, str]):
        self.path, self.store, self.by_domain, self.spec = path, store, by_domain, spec
        self.dirs = dirs  # domain -> directory under path ("" for the one shard)
        self._open: dict[str | None, qe.EdgeShard] = {}
        self._opening = threading.Lock()  # a shard is opened once, also by threads together
        self.domain_graphs = False  # one shard whose graphs are per domain: no graph over all
        if not by_domain:
            config = json.loads((path / SHARD_CONFIG).read_text())
            self.domain_graphs = config.get("hnsw_config", {}).get("m", 1) == 0

    @staticmethod
    def exists(path: Path) -> bool:
        return (path / SHARDS_FILE).is_file() or (path / SHARD_CONFIG).is_file()

    @classmethod
    def create(cls, path: Path, store: Path, spec: ShardSpec, by_domain: bool) -> ShardSet:
        if not by_domain:
            shard = spec.create(path)
            sset = cls(path, store, False, None, {None: ""})
            sset._open[None] = shard
            return sset
        path.mkdir(parents=True, exist_ok=True)
        sset = cls(path, store, True, spec, {})
        sset._save()
        return sset

    @classmethod
    def load(cls, path: Path, store: Path) -> ShardSet:
        listing = path / SHARDS_FILE
        if not listing.is_file():
            return cls(path, store, False, None, {None: ""})
        data = json.loads(listing.read_text())
        spec = ShardSpec(**{**data["spec"], "keyword_fields": tuple(data["spec"]["keyword_fields"])})
        return cls(path, store, True, spec, dict(data["domains"]))

    def _save(self) -> None:
        """Write ``shards.json`` atomically: a crash leaves the previous listing."""
        assert self.spec is not None
        tmp = self.path / (SHARDS_FILE + ".tmp")
        tmp.write_text(json.dumps({"spec": asdict(self.spec), "domains": self.dirs}, indent=2))
        os.replace(tmp, self.path / SHARDS_FILE)

    # -- shards by domain --------------------------------------------------------------------
    @property
    def domains(self) -> list[str]:
        return sorted(d for d in self.dirs if d is not None)

    def shard_dir(self, domain: str | None) -> Path:
        return self.path / self.dirs[domain]

    def shard(self, domain: str | None) -> qe.EdgeShard | None:
        """The shard that holds ``domain``'s points (the one shard when not by domain), or
        ``None`` when there is none yet."""
        key = domain if self.by_domain else None
        found = self._open.get(key)
        if found is None and key in self.dirs:
            with self._opening:
                found = self._open.get(key)
                if found is None:
                    found = self._open[key] = open_shard(self.shard_dir(key), self.store)
        return found

    def shard_for_writing(self, domain: str | None) -> qe.EdgeShard:
        """The shard of ``domain``, created (and listed) if it is the domain's first point."""
        found = self.shard(domain)
        if found is not None:
            return found
        assert self.by_domain and self.spec is not None and domain is not None
        name = f"domain-{len(self.dirs)}"
        shutil.rmtree(self.path / name, ignore_errors=True)  # left by a crash before listing
        self._open[domain] = self.spec.create(self.path / name)
        self.dirs[domain] = name
        self._save()
        return self._open[domain]

    def shards(self) -> Iterator[qe.EdgeShard]:
        """Every shard, in the order of their domains."""
        for key in (self.domains if self.by_domain else [None]):
            found = self.shard(key)
            if found is not None:
                yield found

    def route(self, payloads: Sequence[dict[str, Any]]) -> dict[str | None, list[int]]:
        """Positions of the points by the shard that takes them."""
        if not self.by_domain:
            return {None: list(range(len(payloads)))}
        groups: dict[str | None, list[int]] = {}
        for k, payload in enumerate(payloads):
            domain = payload.get("domain")
            if not isinstance(domain, str):
                raise ValueError(f"point {k} of the upsert has no string 'domain' in its payload: "
                                 f"{self.path.name} keeps one shard per domain")
            groups.setdefault(domain, []).append(k)
        return groups

    def release(self, domain: str | None) -> None:
        """Close the shard of ``domain`` here (another process is about to write it)."""
        shard = self._open.pop(domain if self.by_domain else None, None)
        if shard is not None:
            shard.flush()
            shard.close()

    def flush(self) -> None:
        for shard in self._open.values():
            shard.flush()

    def close(self) -> None:
        for key in list(self._open):
            self.release(key)
