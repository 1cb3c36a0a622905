"""Zeroth-order gradient estimation (method.md, "Zeroth-order estimator").

Two-point (central) estimator of method.md, with Gaussian directions ``u_d ~ N(0, I)``:

    g = (1/D) sum_d [F(x + delta u_d) - F(x - delta u_d)] / (2 delta) * u_d

For a quadratic F the estimate is unbiased: E[g] = grad F(x) (the even terms cancel in
the central difference and E[u u^T] = I). For smooth F its bias is O(delta^2). It costs
2 D evaluations and never uses F(x) itself.

Forward (one-sided) variant with a shared centre value (Nesterov & Spokoiny 2017,
"Random gradient-free minimization of convex functions"): with the centre value F(x)
known (the sampler evaluates it anyway, to accept or reject its steps) each direction
costs one evaluation:

    F(x + v_d) - F(x) = v_d . g + O(|v_d|^2),     d = 1..D

where ``v_d`` is the displacement actually evaluated (``delta u_d`` after projection onto
the box and rounding to the parameters' steps). ``g`` is the minimum-norm least-squares
solution ``V^+ dF``. For orthonormal ``u_d`` inside the box it is
``sum_d [F(x + delta u_d) - F(x)] / delta * u_d``, the gradient projected onto the span of
the directions, with bias O(delta); with ``D = dim`` it is the full finite-difference
gradient in a random rotation of the axes.
"""

from __future__ import annotations

import numpy as np

from .seeding import derive_seed


def gaussian_directions(seed: int, iteration: int, n: int, dim: int) -> np.ndarray:
    """``n`` standard normal directions in R^dim, determined by (seed, iteration, d)."""
    return np.stack(
        [np.random.default_rng(derive_seed(seed, iteration, d)).standard_normal(dim) for d in range(n)]
    ).reshape(n, dim)


def orthonormal_directions(seed: int, iteration: int, n: int, dim: int) -> np.ndarray:
    """``n <= dim`` orthonormal directions (rows), uniformly random rotation of the axes,
    determined by (seed, iteration)."""
    if not 1 <= n <= dim:
        raise ValueError(f"need 1 <= n <= dim, got n={n}, dim={dim}")
    g = np.random.default_rng(derive_seed(seed, iteration, 7919)).standard_normal((dim, dim))
    q, r = np.linalg.qr(g)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)  # Haar-uniform (Mezzadri 2007)
    return q.T[:n].copy()


def two_point_estimate(
    f_plus: np.ndarray, f_minus: np.ndarray, directions: np.ndarray, delta: float
) -> np.ndarray:
    """Average of the central-difference estimates along each direction."""
    f_plus, f_minus = np.asarray(f_plus, float), np.asarray(f_minus, float)
    slopes = (f_plus - f_minus) / (2.0 * delta)
    return (slopes[:, None] * directions).mean(axis=0)


def forward_estimate(displacements: np.ndarray, f_points: np.ndarray, f_centre: float) -> np.ndarray:
    """Minimum-norm least-squares gradient from one-sided differences (module docstring)."""
    V = np.asarray(displacements, float)
    df = np.asarray(f_points, float) - float(f_centre)
    if not (np.all(np.isfinite(V)) and np.all(np.isfinite(df))):
        return np.zeros(V.shape[1])
    return np.linalg.pinv(V, rcond=1e-10) @ df
