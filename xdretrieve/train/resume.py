"""Epoch checkpoints of full mode's encoder fine-tuning: a run cut short (a preempted GPU, a lost
session) resumes after its last finished epoch when the same command runs again.

The checkpoint lives beside the model directory (``.NAME.resume``), not in the staging folder
that an interrupted run removes, and is deleted once the model is published. It holds the
weights, the optimizer and schedule, the batch sampler's random state, the best epoch so far
and the counters; a run resumes from it only when its key matches: the same data, base model,
hyper-parameters and number of processes (another run's checkpoint is discarded, with a
warning). Dropout is reseeded at every epoch, so a resumed run trains the weights an
uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
SUMMARY = "checkpoint.json"  # what the checkpoint holds, readable without loading it


def resume_dir_of(out: str | Path) -> Path:
    """Where the checkpoints of a run writing model directory ``out`` are kept."""
    out = Path(out).resolve()  # '.' has no name of its own
    return out.with_name(f".{out.name}.resume")


def saved_epoch(out: str | Path) -> int | None:
    """The last finished epoch a run writing ``out`` has a checkpoint of (None: none)."""
    try:
        return int(json.loads((resume_dir_of(out) / SUMMARY).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_key(*parts: Any) -> str:
    """A digest of what decides a run's trajectory: JSON-able values, strings and arrays."""
    digest = hashlib.sha1()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str(part.dtype).encode() + str(part.shape).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        digest.update(b"\x1f")
    return digest.hexdigest()


class EpochCheckpoints:
    """The last finished epoch's state of one run (keyed by :func:`run_key`)."""

    def __init__(self, folder: str | Path, key: str):
        self.folder, self.key = Path(folder), key
        self.path = self.folder / CHECKPOINT

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None: none saved, or one of another run (then removed)."""
        import torch

        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: start over, say why
            log.warning("cannot read the checkpoint %s (%s): starting over", self.path, e)
            self.clear()
            return None
        if state.get("key") != self.key:
            log.warning("the checkpoint in %s is of another run (other data, base model, "
                        "settings or number of processes): starting over", self.folder)
            self.clear()
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` whole (a temporary file renamed over the last one)."""
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "key": self.key}, tmp)
        os.replace(tmp, self.path)
        (self.folder / SUMMARY).write_text(json.dumps({"epoch": state["epoch"],
                                                       "done": state["done"]}))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
