import numpy as np
import pytest

from xdretrieve.users import pool, recency_weights


def test_recency_weights_halve_every_half_life() -> None:
    np.testing.assert_allclose(recency_weights(5, 2.0), [0.25, 0.5 ** 1.5, 0.5, 0.5 ** 0.5, 1.0])


def test_pool_mean_and_recency() -> None:
    v = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(pool(v, "mean"), [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    recent = pool(v, "recency", half_life=1.0)  # weights 0.5, 1 -> (0.5, 1) normalised
    np.testing.assert_allclose(recent, np.array([0.5, 1.0]) / np.sqrt(1.25), atol=1e-6)
    with pytest.raises(ValueError, match="empty history"):
        pool(np.zeros((0, 2)), "mean")
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(v, "max")
