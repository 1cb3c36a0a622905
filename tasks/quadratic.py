"""Task ``quadratic``: group ridge regression, an analytic bilevel problem.

The problem (all quantities closed-form, so every method can be checked against the truth):

* data: a seeded synthetic regression set. Features come in ``n_groups`` groups of
  ``group_size`` features; group k's true weights have scale ``s_k`` (log-spaced from
  ``scale_max`` down to ``scale_min``), so each group wants its own regularisation weight.
* lower level (method.md, "Bilevel hyperparameter optimisation"):
  ``g(alpha, w) = ||X_tr w - y_tr||^2 / (2 n_tr) + 1/2 sum_k alpha_k ||w_k||^2``,
  solved exactly: ``w*(alpha) = (A + D(alpha))^{-1} b`` with ``A = X_tr^T X_tr / n_tr``,
  ``b = X_tr^T y_tr / n_tr`` and ``D(alpha)`` the diagonal of per-feature weights.
* upper level: validation loss ``F(alpha) = f(w*(alpha))``,
  ``f(w) = ||X_val w - y_val||^2 / (2 n_val)``.
* hyperparameters: ``alpha_0 .. alpha_{K-1}``, log-uniform on ``[alpha_low, alpha_high]``.

The oracle gives either hypergradient:

* ``exact`` (implicit function theorem): ``dF/dalpha_k = -v_k . w*_k`` with
  ``v = (A + D)^{-1} grad f(w*)``.
* ``penalty`` (fully first-order, method.md; Kwon et al. 2023): with
  ``z = argmin_w g`` and ``y = argmin_w f + gamma g = (C + gamma H)^{-1}(c + gamma b)``,
  ``grad_alpha L_gamma = grad_alpha f + gamma (grad_alpha g(alpha, y) - grad_alpha g(alpha, z))``
  whose k-th entry is ``gamma/2 (||y_k||^2 - ||z_k||^2)``. Its error is O(1/gamma).

Costs: ``evaluate`` is one lower-level solve (1 unit). The oracle solves two linear
systems of the same size (z and y, or w* and the adjoint v): 2 units.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from optuna.distributions import FloatDistribution
from scipy.optimize import minimize

from ..bench.contracts.options import option
from ..bench.contracts.task import Metric, OracleContext, OracleResult, Task


@dataclass(frozen=True)
class QuadraticConfig:
    n_groups: int = option(5, "feature groups = hyperparameters alpha_0..alpha_{K-1}", ge=1, le=10)
    group_size: int = option(4, "features per group", ge=1, le=100)
    n_train: int = option(30, "training examples (lower level)", ge=1, le=100_000)
    n_val: int = option(100, "validation examples (upper level)", ge=1, le=100_000)
    n_test: int = option(2000, "test examples (reported)", ge=1, le=1_000_000)
    noise: float = option(1.0, "label noise std", ge=0, le=1e3)
    scale_max: float = option(2.0, "weight scale of the first group", gt=0, le=1e3)
    scale_min: float = option(0.03, "weight scale of the last group", gt=0, le=1e3)
    alpha_low: float = option(1e-3, "lower end of each alpha's (log) range", gt=0)
    alpha_high: float = option(1e3, "upper end of each alpha's (log) range", gt=0, le=1e12)
    data_seed: int = option(0, "seed of the synthetic data set", ge=0, le=2**31 - 1)
    hypergradient: str = option("penalty", "the oracle's estimate", choices=("penalty", "exact"))
    sleep_s: float = option(0.0, "simulated seconds per lower-level solve (tests, worker benchmarks)", ge=0, le=3600)
    budget: float = option(30.0, "lower-level solves per cell (every method)", gt=0, le=1e6)

    def rules(self):
        yield self.alpha_low < self.alpha_high, "alpha_low must be below alpha_high"
        yield self.scale_min <= self.scale_max, "scale_min must not exceed scale_max"


class QuadraticTask(Task):
    name = "quadratic"
    description = "group ridge regression with closed-form optimum (analytic check of every method)"
    cost_unit = "lower-level solves (ridge fits)"
    default_seeds = 10
    profiles = {
        "smoke": QuadraticConfig(n_groups=3, budget=12.0),
        # quick: 30 solves keeps the whole 5-method, 3-seed matrix under 2 minutes on 2 cores
        # (BoTorch's GP fit and acquisition search, about 1.3 s per trial, dominate it).
        "quick": QuadraticConfig(n_groups=5, budget=30.0),
        "paper": QuadraticConfig(n_groups=10, n_train=60, budget=200.0),
    }

    def __init__(self, profile: str = "quick", **options: Any) -> None:
        super().__init__(profile, **options)
        cfg = self.config
        self.data = _make_data(cfg)

    # -- declarations -------------------------------------------------------------------
    @property
    def metrics(self) -> list[Metric]:
        return [
            Metric("val_loss", "minimize", "upper-level objective: validation loss"),
            Metric("test_loss", "minimize", "loss on a held-out test split"),
            Metric("rel_gap", "minimize", "val_loss / true optimum - 1"),
        ]

    @property
    def param_names(self) -> list[str]:
        return [f"alpha_{k}" for k in range(self.config.n_groups)]

    def search_space(self) -> dict[str, FloatDistribution]:
        cfg = self.config
        return {
            n: FloatDistribution(cfg.alpha_low, cfg.alpha_high, log=True) for n in self.param_names
        }

    def default_grid(self) -> dict[str, list]:
        """Three log-spaced values per weight (a coarse grid of 3^K points)."""
        cfg = self.config
        values = list(np.geomspace(cfg.alpha_low, cfg.alpha_high, 3))
        return {n: [float(v) for v in values] for n in self.param_names}

    # -- maths ---------------------------------------------------------------------------
    def _alpha(self, params: Mapping[str, Any]) -> np.ndarray:
        return np.array([float(params[n]) for n in self.param_names])

    def _hessian(self, alpha: np.ndarray) -> np.ndarray:
        d = self.data
        return d.A + np.diag(np.repeat(alpha, self.config.group_size))

    def solve(self, alpha: np.ndarray) -> np.ndarray:
        """Lower-level solution w*(alpha)."""
        return np.linalg.solve(self._hessian(alpha), self.data.b)

    def upper(self, w: np.ndarray) -> float:
        d = self.data
        r = d.X_val @ w - d.y_val
        return float(r @ r / (2 * len(r)))

    def test_loss(self, w: np.ndarray) -> float:
        d = self.data
        r = d.X_test @ w - d.y_test
        return float(r @ r / (2 * len(r)))

    def value(self, alpha: np.ndarray) -> float:
        return self.upper(self.solve(alpha))

    def exact_hypergradient(self, alpha: np.ndarray) -> np.ndarray:
        """dF/dalpha by the implicit function theorem."""
        d = self.data
        H = self._hessian(alpha)
        w = np.linalg.solve(H, d.b)
        grad_f = d.C @ w - d.c
        v = np.linalg.solve(H, grad_f)
        return -(v * w).reshape(self.config.n_groups, -1).sum(axis=1)

    def penalty_hypergradient(self, alpha: np.ndarray, gamma: float) -> np.ndarray:
        """Fully first-order estimate gamma * (grad_alpha g(y) - grad_alpha g(z))."""
        d = self.data
        H = self._hessian(alpha)
        z = np.linalg.solve(H, d.b)
        y = np.linalg.solve(d.C + gamma * H, d.c + gamma * d.b)
        K = self.config.n_groups
        y2 = (y**2).reshape(K, -1).sum(axis=1)
        z2 = (z**2).reshape(K, -1).sum(axis=1)
        return 0.5 * gamma * (y2 - z2)

    def true_optimum(self) -> tuple[dict[str, float], float]:
        """Global minimum of F over the box, to high precision (cached per config)."""
        return _true_optimum(self.config)

    def known_optimum(self) -> float:
        """The minimal validation loss over the box (the final protocol is deterministic)."""
        return float(self.true_optimum()[1])

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, params: Mapping[str, Any], seed: int, *, final: bool = False) -> dict[str, float]:
        time.sleep(self.config.sleep_s)
        w = self.solve(self._alpha(params))
        val = self.upper(w)
        out = {"val_loss": val, "test_loss": self.test_loss(w)}
        if final:
            out["rel_gap"] = val / self.true_optimum()[1] - 1.0
        return out

    def oracle(self, params: Mapping[str, Any], seed: int, context: OracleContext) -> OracleResult:
        time.sleep(2 * self.config.sleep_s)
        alpha = self._alpha(params)
        w = self.solve(alpha)
        if self.config.hypergradient == "exact":
            g = self.exact_hypergradient(alpha)
        else:
            g = self.penalty_hypergradient(alpha, context.gamma)
        return OracleResult(
            metrics={"val_loss": self.upper(w), "test_loss": self.test_loss(w)},
            grad=dict(zip(self.param_names, map(float, g))),
            cost=2.0,
            evaluated=True,  # the same exact solve as evaluate()
        )


@dataclass(frozen=True)
class _Data:
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    A: np.ndarray
    b: np.ndarray
    C: np.ndarray
    c: np.ndarray


def _make_data(cfg: QuadraticConfig) -> _Data:
    rng = np.random.default_rng(cfg.data_seed)
    K, p = cfg.n_groups, cfg.group_size
    scales = np.geomspace(cfg.scale_max, cfg.scale_min, K) if K > 1 else np.array([cfg.scale_max])
    w_true = rng.standard_normal((K, p)) * scales[:, None]
    w_true = w_true.ravel()

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        X = rng.standard_normal((n, K * p))
        return X, X @ w_true + cfg.noise * rng.standard_normal(n)

    X_tr, y_tr = split(cfg.n_train)
    X_val, y_val = split(cfg.n_val)
    X_test, y_test = split(cfg.n_test)
    return _Data(
        X_val=X_val,
        y_val=y_val,
        X_test=X_test,
        y_test=y_test,
        A=X_tr.T @ X_tr / cfg.n_train,
        b=X_tr.T @ y_tr / cfg.n_train,
        C=X_val.T @ X_val / cfg.n_val,
        c=X_val.T @ y_val / cfg.n_val,
    )


@functools.lru_cache(maxsize=16)
def _true_optimum(cfg: QuadraticConfig) -> tuple[dict[str, float], float]:
    """L-BFGS-B in log(alpha) with the exact hypergradient, from the centre and 31 seeded
    random starts; the best local minimum is the global one for these small problems."""
    task = QuadraticTask.__new__(QuadraticTask)
    task.config, task.profile = cfg, "custom"
    task.data = _make_data(cfg)
    lo, hi = np.log(cfg.alpha_low), np.log(cfg.alpha_high)

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        alpha = np.exp(u)
        return task.value(alpha), task.exact_hypergradient(alpha) * alpha

    rng = np.random.default_rng(12345)
    starts = [np.full(cfg.n_groups, (lo + hi) / 2)]
    starts += list(rng.uniform(lo, hi, size=(31, cfg.n_groups)))
    best = None
    for u0 in starts:
        res = minimize(
            fun, u0, jac=True, method="L-BFGS-B", bounds=[(lo, hi)] * cfg.n_groups,
            options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000},
        )
        if best is None or res.fun < best.fun:
            best = res
    alpha = np.exp(best.x)
    return dict(zip(task.param_names, map(float, alpha))), float(task.value(alpha))
