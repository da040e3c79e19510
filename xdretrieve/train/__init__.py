"""Training: the adapter mode (a small head over frozen, cached encoder vectors) and the full
mode (the encoder itself fine-tuned first, on one or several GPUs, then the adapter over its
vectors); either writes a model directory (:mod:`xdretrieve.model`) which ``index``, ``query``
and ``evaluate`` load with ``--model``."""

# How the user tower may pool a history's item vectors; here so that the CLI offers the choices
# the config accepts without importing the training code.
POOLINGS = ("attention", "mean")
