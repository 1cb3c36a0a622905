"""gmm-reward: the exact answer (lambda*, known optimum), the guided sampler on the exact
epsilon, the bank oracle with sampler=exact, declared options."""

import math

import numpy as np
import optuna
import pytest
import torch

from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.bench.contracts.options import undeclared
from diffhpo.methods.bilevel import BilevelSampler
from diffhpo.tasks.gmm import GmmRewardTask
from diffhpo.tasks.gmm.distance import energy_distance

pytestmark = pytest.mark.usefixtures("session_cache")


def test_every_option_is_declared():
    assert undeclared(GmmRewardTask.profiles.values()) == []


def test_lambda_star_is_a_maximum_of_the_exact_curve_by_finite_differences():
    task = GmmRewardTask("quick")
    lam, best = task.lambda_star(), task.known_optimum()
    assert 0.1 <= lam <= 10  # a decade inside [0.01, 100] on both sides
    assert best == pytest.approx(task.exact_upper(lam), abs=1e-12)
    h = 1e-4  # in log lambda
    up, down = task.exact_upper(lam * math.exp(h)), task.exact_upper(lam * math.exp(-h))
    slope = (up - down) / (2 * h)
    curvature = (up - 2 * best + down) / h**2
    assert abs(slope) < 1e-5 and curvature < 0
    grid = np.geomspace(0.01, 100, 200)
    assert max(task.exact_upper(v) for v in grid) <= best + 1e-12


def test_settings_without_an_interior_optimum_are_refused():
    with pytest.raises(DiffhpoError, match="lambda\\*"):
        GmmRewardTask("quick", r2_curvature=100.0)


def test_unguided_ddim_with_the_exact_eps_reproduces_p_pre():
    task = GmmRewardTask("quick", steps=200)
    ddim, floor = [], []
    for seed in range(3):
        x = task.generate({}, seed, 1000)["gmm"]
        g = torch.Generator().manual_seed(100 + seed)
        a, b = task.p_pre.sample(1000, g), task.p_pre.sample(1000, g)
        ddim.append(float(energy_distance(x, a)))
        floor.append(float(energy_distance(b, a)))
    assert np.mean(ddim) < 1.35 * np.mean(floor)


def test_exact_sampler_metrics():
    task = GmmRewardTask("smoke", sampler="exact")
    m = task.evaluate({"lam": task.lambda_star()}, 0)
    assert m["regret"] == pytest.approx(0, abs=1e-9) and m["lam_error"] == pytest.approx(0, abs=1e-9)
    assert m["upper"] == pytest.approx(task.known_optimum(), abs=0.1)
    far = task.evaluate({"lam": 0.01}, 0)
    assert far["regret"] > 0.1 and far["lam_error"] > 1
    assert {"fidelity", "lower", "exact_upper"} <= set(m)
    ws = task.evaluate({"w": 1.0}, 0)
    assert "lam_error" not in ws and math.isfinite(ws["regret"])


def test_bilevel_with_the_exact_sampler_finds_lambda_star():
    """The bank oracle (reward tasks' penalty estimate) on exact draws of p_pre, driven by the
    bilevel sampler: the last iterate is within 0.1 decade of lambda*."""
    task = GmmRewardTask("quick", sampler="exact", bank_cache=False)
    space = task.search_space()
    sampler = BilevelSampler(space, start=task.default_params(), seed=0)
    study = optuna.create_study(sampler=sampler, direction="maximize")

    def objective(trial):
        params = {"lam": trial.suggest_float("lam", 0.01, 100, log=True)}
        ctx = sampler.oracle_context(study, trial)
        res = task.oracle(params, 0, ctx)
        trial.set_user_attr("hypergrad", res.grad)
        return res.metrics["upper"]

    study.optimize(objective, n_trials=40)
    lam = sampler.current_params(study)["lam"]
    assert abs(math.log10(lam) - math.log10(task.lambda_star())) < 0.1
