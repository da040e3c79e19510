"""Training: the adapter mode (a small head over frozen, cached encoder vectors) and the full
mode (the encoder itself fine-tuned first, on one or several GPUs, then the adapter over its
vectors); either writes a model directory (:mod:`xdretrieve.model`) which ``index``, ``query``
and ``evaluate`` load with ``--model``."""

# How the user tower may pool a history's item vectors; here so that the CLI offers the choices
# the config accepts without importing the training code.
POOLINGS = ("attention", "mean")


def selection_score(metrics: dict[str, float]) -> float:
    """What picks the best epoch, in both modes: valid users' ndcg@10, averaged over the
    directions (0 without any)."""
    import numpy as np

    values = [v for k, v in metrics.items() if k.endswith("/ndcg@10")]
    return float(np.mean(values)) if values else 0.0
