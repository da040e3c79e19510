"""``finetune`` from Python: what ``xdretrieve finetune`` runs, for a stack that trains its own
models (the CLI is a thin layer over this)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from xdretrieve.config import Settings
from xdretrieve.data import Dataset
from xdretrieve.errors import ConfigError, XDRetrieveError


def finetune(dataset: Dataset, out_dir: str | Path, settings: Settings | None = None,
             config: Any = None, *, mode: str = "adapter", full_config: Any = None,
             progress: bool = False) -> dict | None:
    """Train a model directory on ``dataset``'s train users, valid users selecting (users.*,
    or without it the seeded split that ``evaluate`` draws too), and write it whole to
    ``out_dir`` (an earlier model there is replaced only once the new one is complete).

    Args:
        dataset: items and interactions of two or more domains.
        out_dir: new, empty, or an earlier model directory.
        settings: the base encoder (``settings.model``), device, text template, cache.
        config: :class:`~xdretrieve.train.adapter.AdapterConfig` (the adapter, user tower, bias
            and re-ranker; both modes end with it).
        mode: ``"adapter"`` (over the frozen, cached encoder vectors) or ``"full"`` (the
            encoder fine-tuned first, on a GPU; several under torchrun). Full mode keeps a
            checkpoint of each finished epoch of that stage beside ``out_dir``
            (``.NAME.resume``): the same call after an interruption resumes after the last.
        full_config: :class:`~xdretrieve.train.full.FullConfig` of full mode's first stage.
        progress: progress bars and per-epoch lines.

    Returns:
        The manifest written; None on the other processes of a torchrun launch.

    Raises:
        XDRetrieveError: fewer than two domains, no valid users (none can be drawn),
            ``settings.model`` is a trained model, ``out_dir`` is a folder that is not a model
            directory.

    Example:
        >>> from xdretrieve import Dataset, Settings, finetune, index_dataset  # doctest: +SKIP
        >>> shop = Dataset.from_dir("data/shop")
        >>> finetune(shop, "shop.model", progress=True)
        >>> index_dataset(shop, Settings(store="shop.xdr", model="shop.model"))
    """
    from xdretrieve.encoder import Encoder, item_text
    from xdretrieve.evaluate.protocol import Protocol
    from xdretrieve.model import StagedModelDir
    from xdretrieve.train.adapter import AdapterConfig, train_adapter
    from xdretrieve.train.resume import resume_dir_of

    if mode not in ("adapter", "full"):
        raise XDRetrieveError(f"unknown mode '{mode}': expected 'adapter' or 'full'")
    settings = settings or Settings()
    config = config or AdapterConfig()
    protocol = Protocol(dataset)
    protocol.directions()  # a dataset of one domain is refused before anything else
    name = dataset.name or "the dataset"
    if not protocol.split.train:
        why = "users.* marks none 'train'" if protocol.split.from_file else "too few users"
        raise XDRetrieveError(f"{name}: no train users to learn from ({why})")
    if not protocol.split.valid:
        raise XDRetrieveError(f"{name}: no valid users to select the model with (too few train "
                              f"users are active in two domains to draw any)")
    ref = base_encoder(settings.model)
    with StagedModelDir(out_dir) as stage:
        resume = resume_dir_of(stage.out)  # full mode's epoch checkpoints, kept until published
        if mode == "full":
            from xdretrieve.train.full import FullConfig, train_full

            manifest = train_full(dataset, stage.path, ref, settings,
                                  full_config or FullConfig(seed=config.seed), config,
                                  progress=progress, resume_dir=resume)
            if manifest is None:  # another process of a torchrun launch: rank 0 writes
                return None
        else:
            encoder = Encoder.from_settings(settings, ref)
            texts = [item_text(it, settings.text_template) for it in dataset.items.values()]
            base = encoder.encode(texts, progress=progress, desc="embedding items")
            manifest = train_adapter(dataset, base, stage.path, ref.name, ref.fingerprint,
                                     config, progress=progress)
        stage.publish()
    shutil.rmtree(resume, ignore_errors=True)
    return manifest


def base_encoder(model: str) -> Any:
    """The encoder training starts from (:class:`xdretrieve.encoder.ModelRef`).

    Raises:
        XDRetrieveError: ``model`` is not there, or is a model directory training wrote
            (:class:`ConfigError`: it cannot be trained again).
    """
    from xdretrieve.encoder import resolve_model

    ref = resolve_model(model)
    if ref.trained is not None:
        raise ConfigError("a model directory `xdretrieve finetune` wrote cannot be trained "
                          "again: give the encoder it started from (the base must be an "
                          "encoder, not a trained model directory)")
    return ref
