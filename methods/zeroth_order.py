"""Two-point zeroth-order gradient estimation (method.md, "Zeroth-order estimator").

    g = (1/D) sum_d [F(x + delta u_d) - F(x - delta u_d)] / (2 delta) * u_d,   u_d ~ N(0, I)

For a quadratic F the estimate is unbiased: E[g] = grad F(x) (the even terms cancel in
the central difference and E[u u^T] = I). For smooth F its bias is O(delta^2).
"""

from __future__ import annotations

import numpy as np

from .seeding import derive_seed


def gaussian_directions(seed: int, iteration: int, n: int, dim: int) -> np.ndarray:
    """``n`` standard normal directions in R^dim, determined by (seed, iteration, d)."""
    return np.stack(
        [np.random.default_rng(derive_seed(seed, iteration, d)).standard_normal(dim) for d in range(n)]
    )


def two_point_estimate(
    f_plus: np.ndarray, f_minus: np.ndarray, directions: np.ndarray, delta: float
) -> np.ndarray:
    """Average of the central-difference estimates along each direction."""
    f_plus, f_minus = np.asarray(f_plus, float), np.asarray(f_minus, float)
    slopes = (f_plus - f_minus) / (2.0 * delta)
    return (slopes[:, None] * directions).mean(axis=0)
