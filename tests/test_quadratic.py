"""The analytic task: hypergradients and the true optimum."""

import numpy as np
import pytest

from diffhpo.tasks.quadratic import QuadraticTask


@pytest.fixture(scope="module")
def task():
    return QuadraticTask("quick")


def _central_fd(task, alpha, eps=1e-5):
    g = np.zeros_like(alpha)
    for i in range(len(alpha)):
        up, down = alpha.copy(), alpha.copy()
        up[i] *= np.exp(eps)
        down[i] *= np.exp(-eps)
        g[i] = (task.value(up) - task.value(down)) / (2 * eps) / alpha[i]  # d/dalpha from d/dlog(alpha)
    return g


@pytest.mark.parametrize("point", [0, 1, 2, 3])
def test_exact_hypergradient_matches_finite_differences(task, point):
    rng = np.random.default_rng(point)
    alpha = np.exp(rng.uniform(np.log(1e-2), np.log(1e2), task.config.n_groups))
    exact = task.exact_hypergradient(alpha)
    fd = _central_fd(task, alpha)
    rel = np.linalg.norm(exact - fd) / np.linalg.norm(fd)
    assert rel < 1e-3


def test_penalty_estimate_converges_to_exact_as_gamma_grows(task):
    alpha = np.full(task.config.n_groups, 1.0)
    exact = task.exact_hypergradient(alpha)
    errors = [
        np.linalg.norm(task.penalty_hypergradient(alpha, g) - exact) / np.linalg.norm(exact)
        for g in (1.0, 10.0, 100.0, 1000.0, 1e4)
    ]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-3
    # O(1/gamma): ten times gamma, about ten times less error
    assert 5 < errors[2] / errors[3] < 20


def test_true_optimum_is_a_minimum(task):
    params, value = task.true_optimum()
    alpha = np.array([params[n] for n in task.param_names])
    assert value == pytest.approx(task.value(alpha))
    # projected gradient (in log alpha) vanishes: interior zero, bounds push outwards
    g = task.exact_hypergradient(alpha) * alpha
    lo, hi = task.config.alpha_low, task.config.alpha_high
    for a, gi in zip(alpha, g):
        if np.isclose(a, hi, rtol=1e-6):
            assert gi <= 1e-8
        elif np.isclose(a, lo, rtol=1e-6):
            assert gi >= -1e-8
        else:
            assert abs(gi) < 1e-6
    rng = np.random.default_rng(7)
    samples = np.exp(rng.uniform(np.log(lo), np.log(hi), (500, task.config.n_groups)))
    assert min(task.value(a) for a in samples) > value


def test_evaluate_reports_metrics_and_relative_gap(task):
    params, value = task.true_optimum()
    m = task.evaluate(params, seed=0, final=True)
    assert set(m) == {"val_loss", "test_loss", "rel_gap"}
    assert m["val_loss"] == pytest.approx(value)
    assert abs(m["rel_gap"]) < 1e-12
    centre = task.evaluate(task.default_params(), seed=0, final=True)
    assert centre["rel_gap"] > 0.01


def test_options_override_profile_and_reject_unknown():
    from diffhpo.bench.contracts.errors import DiffhpoError

    t = QuadraticTask("smoke", n_groups="7")
    assert len(t.search_space()) == 7
    with pytest.raises(DiffhpoError, match="valid options"):
        QuadraticTask("smoke", colour="blue")
    with pytest.raises(DiffhpoError, match="not a valid int"):
        QuadraticTask("smoke", n_groups="many")
