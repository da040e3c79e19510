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


def test_a_history_whose_vectors_cancel_pools_to_zeros_not_nan() -> None:
    """Items pointing opposite ways sum to nothing: the pooled vector is zeros (it finds
    nothing in particular), not NaN, which a store refuses or answers with at random."""
    v = np.array([[0.6, 0.8], [-0.6, -0.8]], dtype=np.float32)
    with np.errstate(all="raise"):  # no 0/0 on the way either
        assert pool(v, "mean").tolist() == [0.0, 0.0]
