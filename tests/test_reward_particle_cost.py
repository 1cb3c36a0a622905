"""Cost accounting of the twisted SMC corrector (issue 16): a guided run with ``particles = K``
does K times the network work of a one-particle run and is charged K cost units, by search
trials; the bilevel oracle (un-guided bank) is charged as before, so every method of a cell
keeps the same budget in one unit."""

import pytest
import torch

from diffhpo.bench import storage as st
from diffhpo.bench.report import collect
from diffhpo.bench.runner import RunSpec, run_matrix
from diffhpo.tasks.gmm import GmmRewardTask
from diffhpo.tasks.reward.guidance import sample_images

pytestmark = pytest.mark.usefixtures("session_cache")

K = 3


def test_charged_cost_is_the_samplers_reported_work():
    """The charge (``evaluation_cost``) equals the network evaluations ``sample_images`` reports
    for the run, relative to a one-particle run; un-guided and exact runs cost one unit."""
    one, smc = GmmRewardTask("smoke"), GmmRewardTask("smoke", particles=K)
    model = one.model()
    noise = torch.randn(4, 2, dtype=model.dtype, generator=torch.Generator().manual_seed(0))
    run = {}
    for k in (1, K):
        run[k] = sample_images(model.eps, lambda: model.scheduler(4), noise, reward=one.lower_reward(), scale=1.0,
                               particles=k, batch_size=12, value_range=None)
    assert run[K].unet_forwards == K * run[1].unet_forwards and run[K].reward_grads == K * run[1].reward_grads
    assert one.evaluation_cost({"lam": 1.0}) == 1.0
    assert smc.evaluation_cost({"lam": 1.0}) == run[K].unet_forwards / run[1].unet_forwards == K
    assert smc.evaluation_cost({"w": 1.0}) == K  # weighted sum: guided too
    assert smc.evaluation_cost({}) == 1.0  # none: no guidance, no SMC
    assert GmmRewardTask("smoke", particles=K, sampler="exact").evaluation_cost({"lam": 1.0}) == 1.0


def _cells(tmp_path, particles):
    spec = RunSpec(tasks=["gmm-reward"], methods=["grid", "bilevel"], seeds=[0], profile="smoke",
                   out=tmp_path, progress=False, task_options={"particles": str(particles), "bank_cache": "0"})
    run_matrix(spec, log=lambda _: None)
    return collect(st.open_storage(st.default_url(tmp_path)))


def test_k_particle_trials_cost_k_and_the_budget_holds(tmp_path):
    """gmm-reward smoke (budget 4): with 3 particles every grid trial costs 3, so the cell runs
    2 trials (a trial starts while the spent cost is below the budget: 0, 3 < 4) where one
    particle runs 4; the bilevel cell's oracle charges do not depend on the particle count."""
    budget = GmmRewardTask("smoke").budget
    trials = {}
    for k in (1, K):
        t, cells = _cells(tmp_path / f"k{k}", k)
        assert (cells.status == "done").all()
        trials[k] = t[t.state == "COMPLETE"]
    grid = {k: t[t.method == "grid"] for k, t in trials.items()}
    assert (grid[K].cost == K).all() and (grid[1].cost == 1).all()
    assert len(grid[1]) == budget and len(grid[K]) == 2
    spent = grid[K].cost.sum()
    assert budget <= spent < budget + K  # overshoot by less than one trial's cost
    bil = {k: t[t.method == "bilevel"].sort_values("number") for k, t in trials.items()}
    assert list(bil[K].cost) == pytest.approx(list(bil[1].cost))
    assert budget <= bil[K].cost.sum() < budget + bil[K].cost.iloc[0]
