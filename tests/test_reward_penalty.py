"""The bank-based penalty of method.md (Application 1): stable log-mean-exp, the derivative
against finite differences of the *estimated* penalty, known answers and the sign."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from diffhpo.tasks.reward import penalty as P


def _bank(n=400, seed=0, rho=0.6):
    rng = np.random.default_rng(seed)
    r2 = rng.normal(size=n)
    r1 = rho * r2 + math.sqrt(1 - rho**2) * rng.normal(size=n)
    return r1, r2


def test_log_mean_exp_is_stable_and_exact():
    a = np.array([1e4, 1e4 - 1.0, -1e4])
    assert P.log_mean_exp(a) == pytest.approx(logsumexp(a) - math.log(3), rel=1e-15)
    rng = np.random.default_rng(1)
    b = rng.normal(size=1000) * 50
    assert P.log_mean_exp(b) == pytest.approx(logsumexp(b) - math.log(1000), rel=1e-12)
    with pytest.raises(ValueError):
        P.log_mean_exp([])
    with pytest.raises(ValueError):
        P.log_mean_exp([0.0, np.nan])


@pytest.mark.parametrize("lam", [0.01, 0.1, 1.0, 10.0, 100.0])
@pytest.mark.parametrize("gamma", [1.0, 10.0, 1e3, 1e4])
@pytest.mark.parametrize("spread", ["unit", "scaled"])
def test_derivative_matches_finite_differences_of_the_estimated_penalty(lam, gamma, spread):
    """Central differences of :func:`penalty` against :func:`penalty_grad`. ``scaled``: r2 of
    spread ~ lambda, so the weights are far from collapsed at every lambda; ``unit``: rewards of
    unit spread (at lambda = 0.01 the tilt sits on the best sample and the derivative is tiny)."""
    r1, r2 = _bank()
    if spread == "scaled":
        r2 = r2 * min(1.0, 3 * lam)
    h = lam * 1e-4
    fd = (P.penalty(r1, r2, lam + h, gamma) - P.penalty(r1, r2, lam - h, gamma)) / (2 * h)
    g = P.penalty_grad(r1, r2, lam, gamma)
    rounding = 1e-14 * max(abs(P.penalty(r1, r2, lam, gamma)), 1.0) / h  # float64 error of the FD quotient
    assert abs(fd - g) <= 1e-6 * abs(g) + rounding, (fd, g, rounding)
    if spread == "scaled":
        assert abs(g) > 100 * rounding  # a real check, not one passed on the rounding allowance


def test_two_point_case_known_answer_and_sign():
    """p_pre uniform on two points (the bank *is* p_pre): x1 with r1 = r2 = 1, x2 with r1 = r2 = 0.
    p*_lambda(x1) = sigmoid(1/lambda), so E[r1] = sigmoid(1/lambda) falls as lambda grows and
    dL/dlambda -> -dE[r1]/dlambda = sigmoid'(1/lambda) / lambda^2 > 0 as gamma grows."""
    r1, r2 = np.array([1.0, 0.0]), np.array([1.0, 0.0])
    for lam in (0.3, 1.0, 3.0):
        sig = 1 / (1 + math.exp(-1 / lam))
        assert P.tilted_mean(r1, r2, lam) == pytest.approx(sig, rel=1e-12)
        exact = sig * (1 - sig) / lam**2
        g = P.penalty_grad(r1, r2, lam, gamma=1e6)
        assert g > 0
        assert g == pytest.approx(exact, rel=1e-4)
        # the value tends to -E[r1] with an O(1/gamma) error
        assert P.penalty(r1, r2, lam, 1e6) == pytest.approx(-sig, abs=1e-5)
    # anti-aligned rewards: more tilting lowers E[r1], the sign flips
    assert P.penalty_grad(-r1, r2, 1.0, 1e6) < 0


def test_gaussian_case_closed_form():
    """u ~ N(0, 1), r2 = a u, r1 = b u: p*_lambda = N(a/lambda, 1), E[r1] = ab/lambda,
    KL = a^2/(2 lambda^2), and the exact penalty derivative is ab/lambda^2 + b^2/(2 gamma lambda^2)."""
    rng = np.random.default_rng(0)
    u = rng.normal(size=400_000)
    a, b = 0.5, 1.0
    for lam, gamma in [(1.0, 10.0), (2.0, 3.0), (0.8, 100.0)]:
        est = P.estimate([(b * u, a * u)], lam, gamma)
        exact = a * b / lam**2 + b**2 / (2 * gamma * lam**2)
        assert est.grad == pytest.approx(exact, rel=0.05)
        assert est.grad > 0  # aligned rewards: a larger lambda lowers the upper score
        assert est.upper == pytest.approx(a * b / lam, rel=0.05)
        assert est.kl == pytest.approx(a**2 / (2 * lam**2), rel=0.05)
        assert est.lower == pytest.approx(a**2 / lam, rel=0.05)


def test_weights_kl_and_ess_bounds():
    r1, r2 = _bank(n=300)
    for lam in (0.01, 1.0, 1e6):
        w = P.tilt_weights(r2, lam)
        assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
        assert 1.0 <= P.effective_sample_size(r2, lam) <= 300 + 1e-9
        assert P.kl_tilted(r2, lam) >= 0
    assert P.effective_sample_size(r2, 1e6) == pytest.approx(300, rel=1e-4)  # no tilt: every sample
    assert P.effective_sample_size(r2, 1e-3) == pytest.approx(1.0, abs=1e-6)  # collapses on the best
    assert P.kl_tilted(r2, 1e-3) == pytest.approx(math.log(300), rel=1e-6)  # a point mass on the bank


def test_estimate_averages_prompts_and_checks_shapes():
    b1, b2 = _bank(seed=1), _bank(seed=2)
    e = P.estimate([b1, b2], 1.0, 10.0)
    assert e.grad == pytest.approx((P.penalty_grad(*b1, 1.0, 10.0) + P.penalty_grad(*b2, 1.0, 10.0)) / 2)
    assert e.value == pytest.approx((P.penalty(*b1, 1.0, 10.0) + P.penalty(*b2, 1.0, 10.0)) / 2)
    with pytest.raises(ValueError):
        P.estimate([(np.zeros(3), np.zeros(4))], 1.0, 1.0)
