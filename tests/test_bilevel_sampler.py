"""The bilevel sampler: convergence, zeroth-order fallback, state rebuilt from storage."""

import numpy as np
import optuna
import pytest

from diffhpo.methods.bilevel import BilevelSampler
from diffhpo.bench.toolkit.zeroth_order import gaussian_directions, two_point_estimate

SPACE = {
    "x": optuna.distributions.FloatDistribution(-5, 5),
    "y": optuna.distributions.FloatDistribution(1e-3, 1e3, log=True),
}
TARGET = {"x": 1.5, "y": 2.0}


def objective(trial, with_grad=True):
    x = trial.suggest_float("x", -5, 5)
    y = trial.suggest_float("y", 1e-3, 1e3, log=True)
    ly = np.log(y) - np.log(TARGET["y"])
    if with_grad:
        trial.set_user_attr("hypergrad", {"x": 2 * (x - TARGET["x"]), "y": 2 * ly / y})
    return (x - TARGET["x"]) ** 2 + ly**2


@pytest.mark.parametrize("optimizer", ["rprop", "adam"])
def test_oracle_mode_converges(optimizer):
    study = optuna.create_study(sampler=BilevelSampler(SPACE, seed=0, optimizer=optimizer, lr=0.05))
    study.optimize(objective, n_trials=60)
    p = study.sampler.current_params(study)
    assert p["x"] == pytest.approx(TARGET["x"], abs=0.05)
    assert p["y"] == pytest.approx(TARGET["y"], rel=0.05)


def test_maximisation_ascends():
    def obj(trial):
        x = trial.suggest_float("x", -5, 5)
        trial.set_user_attr("hypergrad", {"x": -2 * (x - 2.0)})
        return -((x - 2.0) ** 2)

    space = {"x": SPACE["x"]}
    study = optuna.create_study(direction="maximize", sampler=BilevelSampler(space, seed=0))
    study.optimize(obj, n_trials=40)
    assert study.sampler.current_params(study)["x"] == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_zeroth_order_fallback_converges(scheme):
    sampler = BilevelSampler(SPACE, seed=1, mode="auto", zo_scheme=scheme)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: objective(t, with_grad=False), n_trials=160)
    p = sampler.current_params(study)
    assert p["x"] == pytest.approx(TARGET["x"], abs=0.2)
    assert p["y"] == pytest.approx(TARGET["y"], rel=0.2)
    slots = [t.system_attrs["bilevel:slot"] for t in study.trials]
    if scheme == "central":
        # "auto": the first trial probes for a hypergradient at x_0, then the pairs x_0 +/- delta u_d
        assert slots[:5] == [[0, 0, 0], [0, 0, 1], [0, 0, -1], [0, 1, 1], [0, 1, -1]]
    else:
        # the probe at x_0 is the centre value F(x_0); then one forward point per direction,
        # then the candidate step of iteration 1
        assert slots[:4] == [[0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0]]


def test_forward_scheme_iterate_is_the_best_centre():
    """Rejected steps leave the iterate where it was: it is the best candidate evaluated."""
    sampler = BilevelSampler(SPACE, seed=2, mode="zo")
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: objective(t, with_grad=False), n_trials=40)
    centres = [t for t in study.trials if t.system_attrs["bilevel:slot"][1:] == [0, 0]]
    best = min(centres, key=lambda t: t.value)
    assert sampler.current_params(study) == pytest.approx(best.params)
    assert best.value < centres[0].value


def test_zeroth_order_estimate_is_unbiased_on_a_quadratic():
    rng = np.random.default_rng(0)
    dim = 4
    Q = rng.standard_normal((dim, dim))
    Q = Q @ Q.T + np.eye(dim)
    b = rng.standard_normal(dim)
    f = lambda v: 0.5 * v @ Q @ v + b @ v
    x = rng.standard_normal(dim)
    true = Q @ x + b
    n = 20000
    dirs = gaussian_directions(3, 0, n, dim)
    delta = 0.3
    est = two_point_estimate([f(x + delta * u) for u in dirs], [f(x - delta * u) for u in dirs], dirs, delta)
    stderr = np.linalg.norm(true) * np.sqrt(dim / n) * 3
    assert np.linalg.norm(est - true) < stderr


def test_state_is_rebuilt_from_storage(tmp_path):
    """Stop after 7 trials, reopen with a fresh sampler: same trajectory as one run."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    ref = optuna.create_study(sampler=BilevelSampler(SPACE, seed=0))
    ref.optimize(objective, n_trials=15)

    first = optuna.create_study(storage=url, study_name="s", sampler=BilevelSampler(SPACE, seed=0))
    first.optimize(objective, n_trials=7)
    again = optuna.load_study(storage=url, study_name="s", sampler=BilevelSampler(SPACE, seed=0))
    again.optimize(objective, n_trials=8)
    assert [t.params for t in again.trials] == [t.params for t in ref.trials]


def test_failed_trial_is_retried_at_the_same_iterate():
    calls = []

    def flaky(trial):
        x = trial.suggest_float("x", -5, 5)
        calls.append(x)
        if len(calls) == 3:
            raise RuntimeError("boom")
        trial.set_user_attr("hypergrad", {"x": 2 * x})
        return x * x

    study = optuna.create_study(sampler=BilevelSampler({"x": SPACE["x"]}, start={"x": 4.0}, seed=0))
    study.optimize(flaky, n_trials=5, catch=(RuntimeError,))
    assert calls[3] == calls[2]  # the failed iterate is proposed again
    assert calls[2] != calls[1]


def test_forward_scheme_central_layout():
    """zo_central="always": each estimate evaluates the pairs x +/- delta u_d."""
    sampler = BilevelSampler(SPACE, seed=1, mode="zo", zo_central="always")
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: objective(t, with_grad=False), n_trials=6)
    slots = [t.system_attrs["bilevel:slot"] for t in study.trials]
    assert slots == [[0, 0, 0], [0, 0, 1], [0, 0, -1], [0, 1, 1], [0, 1, -1], [1, 0, 0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_central_differences_on_failure_leave_a_curved_valley_start(seed):
    """On Rosenbrock from (0, 0) the one-sided estimate is dominated by its curvature bias:
    every step it suggests is rejected (zo_central="never" ends where it started); the
    mirrored points (central differences, the default) find a descent direction."""
    space = {"x": optuna.distributions.FloatDistribution(-2, 2), "y": optuna.distributions.FloatDistribution(-2, 2)}

    def rosenbrock(trial):
        x, y = trial.suggest_float("x", -2, 2), trial.suggest_float("y", -2, 2)
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2

    final = {}
    for central in ["never", "on-failure"]:
        sampler = BilevelSampler(space, mode="zo", seed=seed, zo_central=central)
        study = optuna.create_study(sampler=sampler)
        study.optimize(rosenbrock, n_trials=20)
        p = sampler.current_params(study)
        final[central] = (1 - p["x"]) ** 2 + 100 * (p["y"] - p["x"] ** 2) ** 2
    assert final["never"] == 1.0
    assert final["on-failure"] < 0.9


@pytest.mark.parametrize("optimizer", ["rprop", "adam", "adamw"])
def test_a_non_finite_hypergradient_moves_nothing(optimizer):
    """A diverged oracle (NaN hypergradient, finite value) leaves the iterate where it was; the
    next finite estimate steps from there, so the output is never NaN."""
    seen = []

    def obj(trial):
        x = trial.suggest_float("x", -5, 5)
        seen.append(x)
        bad = len(seen) in (3, 4)
        trial.set_user_attr("hypergrad", {"x": float("nan") if bad else 2 * (x - 1.0)})
        return (x - 1.0) ** 2

    study = optuna.create_study(sampler=BilevelSampler({"x": SPACE["x"]}, start={"x": 4.0}, seed=0,
                                                       optimizer=optimizer))
    study.optimize(obj, n_trials=4)
    assert np.isfinite(study.sampler.current_params(study)["x"])
    assert study.sampler.current_params(study)["x"] == pytest.approx(seen[2])  # two NaN steps: no move
    study.optimize(obj, n_trials=20)
    assert np.isfinite(seen).all() and seen[4] == pytest.approx(seen[2])
    assert abs(study.sampler.current_params(study)["x"] - 1.0) < abs(seen[2] - 1.0)
