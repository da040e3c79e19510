"""The folders xdretrieve writes (a store, a model, a report): whether one can be made, checked
before the work that fills it. No click, no numpy: the CLI and the store both call it."""

from __future__ import annotations

import os
from pathlib import Path


def output_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be created or written as a folder (a file in its place or on its way,
    a folder that is not writable), or None."""
    existing = next(p for p in (path, *path.parents) if p.exists())  # '.' or '/' at the end
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    return None
