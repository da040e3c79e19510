"""Training: the adapter mode (a small head over frozen, cached encoder vectors) that writes a
model directory (:mod:`xdretrieve.model`) which ``index``, ``query`` and ``evaluate`` load with
``--model``."""
