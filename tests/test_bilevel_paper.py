"""The bilevel paper preset (the reference code's rule and iteration structure) and the
single loop's zeroth-order ablation switch."""

import numpy as np
import pytest
from optuna.trial import create_trial

from diffhpo.methods.bilevel import BilevelSampler, make_sampler
from diffhpo.methods.bilevel_paper import REFERENCE_Q_UPDATES, cycle_length
from diffhpo.bench.contracts.method import MethodContext
from diffhpo.bench.contracts.task import OracleContext
from diffhpo.tasks.gmm import GmmScheduleTask
from diffhpo.tasks.mnist_schedule.schedules import PARAM_NAMES
from diffhpo.tasks.single_loop import PAPER_LOOP, SingleLoop, ablated


def test_preset_sets_the_reference_rule_and_explicit_settings_win():
    s = BilevelSampler(preset="paper")
    assert (s.optimizer, s.gamma0, s.gamma_growth, s.lr_schedule, s.weight_decay) == ("adamw", 1.0, 1.0,
                                                                                       "one-cycle", 0.01)
    assert [s.gamma(k) for k in (0, 5, 50)] == [1.0, 1.0, 1.0]
    s = BilevelSampler(preset="paper", gamma0=10.0, optimizer="rprop")
    assert (s.optimizer, s.gamma0, s.gamma_growth) == ("rprop", 10.0, 1.0)
    d = BilevelSampler()
    assert (d.optimizer, d.gamma0, d.gamma_growth) == ("rprop", 10.0, 1.5)
    with pytest.raises(ValueError, match="preset"):
        BilevelSampler(preset="nope")


def test_make_sampler_passes_the_tasks_natural_rates_and_the_budget():
    task = GmmScheduleTask("smoke")
    ctx = MethodContext(task=task, search_space=task.search_space(), grid={}, seed=0, budget=3.0,
                        options={"preset": "paper"})
    s = make_sampler(ctx)
    assert s.natural_lr == {"q_s": 0.05, "q_e": 0.05, "q_tau": 1.0, "q_eps": 0.05}
    assert s.budget == 3.0 and s.preset == "paper"


def trial_with_costs(cost, next_iteration_cost=None):
    attrs = {"cost": cost} | ({"next_iteration_cost": next_iteration_cost} if next_iteration_cost is not None else {})
    return create_trial(value=0.0, user_attrs=attrs)


def test_cycle_length_counts_the_iterations_the_budget_allows():
    """The runner starts trials while the spent cost is below the budget: with c0 = 1 and
    c1 = 0.5, a budget of 6 holds iterations at spent 0, 1, 1.5, ..., 5.5: 11."""
    assert cycle_length([trial_with_costs(1.0, 0.5)], 6.0) == 11
    assert cycle_length([trial_with_costs(1.0, 0.4)], 6.0) == 14  # 1 + ceil(12.5)
    assert cycle_length([trial_with_costs(0.5)], 3.0) == 6  # every iteration costs c0
    assert cycle_length([trial_with_costs(7.0)], 6.0) == 1
    assert cycle_length([], 6.0) is None  # not known before iteration 0
    assert cycle_length([], None) == REFERENCE_Q_UPDATES  # no budget: the reference's count
    assert cycle_length([trial_with_costs(1.0, 0.5)], 6.0, fixed=40) == 40


def test_single_loop_settings_under_the_preset():
    loop = SingleLoop(GmmScheduleTask("smoke"))
    cfg, scale = loop.settings(OracleContext(0, 1.0))
    assert cfg is loop.task.config and scale is None
    cfg, scale = loop.settings(OracleContext(0, 1.0, preset="paper"))
    assert {k: getattr(cfg, k) for k in PAPER_LOOP} == PAPER_LOOP
    assert np.array_equal(scale, np.ones(4))  # delta 0.01 in natural units
    # an option the user gave wins over the preset
    loop = SingleLoop(GmmScheduleTask("smoke", bl_inner_steps=3, bl_zo_delta=0.2))
    cfg, scale = loop.settings(OracleContext(0, 1.0, preset="paper"))
    assert cfg.bl_inner_steps == 3 and cfg.bl_zo_delta == 0.2 and scale is None
    assert cfg.bl_zo_directions == 1
    # the iteration's cost follows the settings (quick: 30 -> 10 inner steps, 2 -> 1 direction)
    loop = SingleLoop(GmmScheduleTask("quick"))
    cfg, _ = loop.settings(OracleContext(0, 1.0, preset="paper"))
    default, paper = loop.iteration_work(False), loop.iteration_work(False, cfg)
    assert paper["inner"] == default["inner"] / 3 and paper["zo"] == default["zo"] / 2


def test_ablation_switch():
    zo, width = np.array([3.0, -1.0, 0.5, 20.0]), np.array([0.4, 0.2, 3.0, 0.035])
    assert np.array_equal(ablated(zo, width, "on", 0), zo)
    assert np.array_equal(ablated(zo, width, "off", 0), np.zeros(4))
    a, b = ablated(zo, width, "noise", 1), ablated(zo, width, "noise", 2)
    assert np.linalg.norm(a * width) == pytest.approx(np.linalg.norm(zo * width))
    assert not np.allclose(a, b) and not np.allclose(a, zo)
    with pytest.raises(ValueError):
        ablated(zo, width, "maybe", 0)


@pytest.mark.parametrize("switch", ["off", "noise"])
def test_oracle_uses_the_ablated_term(tmp_path, switch):
    """The recorded zeroth-order estimate is the same as with the switch on (same draws);
    the hypergradient uses zero or the noise instead; the cost is unchanged."""
    task = GmmScheduleTask("smoke")
    q = task.default_params()
    on = task.oracle(q, 0, OracleContext(0, 10.0, workdir=tmp_path / "on"))
    off = GmmScheduleTask("smoke").oracle(q, 0, OracleContext(0, 10.0, workdir=tmp_path / switch, zo_term=switch))
    assert off.cost == on.cost
    width = np.array([hi - lo for lo, hi in task.ranges.values()])
    used = np.array([off.info[f"zo_used_{n}"] for n in PARAM_NAMES])
    for i, n in enumerate(PARAM_NAMES):
        assert off.info[f"zo_{n}"] == on.info[f"zo_{n}"]
        assert off.grad[n] == pytest.approx(used[i] + off.info[f"penalty_{n}"])
    zo = np.array([on.info[f"zo_{n}"] for n in PARAM_NAMES])
    if switch == "off":
        assert np.all(used == 0)
    else:
        assert np.linalg.norm(used * width) == pytest.approx(np.linalg.norm(zo * width))


@pytest.mark.parametrize("switch", ["off", "noise"])
def test_oracle_uses_the_ablated_penalty_term(tmp_path, switch):
    """The penalty switch: the recorded penalty term is the one computed with the switch on;
    the hypergradient uses zero or noise of its norm instead, plus the zeroth-order term."""
    task = GmmScheduleTask("smoke")
    q = task.default_params()
    on = task.oracle(q, 0, OracleContext(0, 10.0, workdir=tmp_path / "on"))
    ab = GmmScheduleTask("smoke").oracle(q, 0, OracleContext(0, 10.0, workdir=tmp_path / switch,
                                                              penalty_term=switch))
    assert ab.cost == on.cost
    width = np.array([hi - lo for lo, hi in task.ranges.values()])
    used = np.array([ab.info[f"penalty_used_{n}"] for n in PARAM_NAMES])
    penalty = np.array([on.info[f"penalty_{n}"] for n in PARAM_NAMES])
    for i, n in enumerate(PARAM_NAMES):
        assert ab.info[f"penalty_{n}"] == pytest.approx(on.info[f"penalty_{n}"])
        assert ab.grad[n] == pytest.approx(ab.info[f"zo_{n}"] + used[i])
    if switch == "off":
        assert np.all(used == 0)
    else:
        assert np.linalg.norm(used * width) == pytest.approx(np.linalg.norm(penalty * width))
        assert not np.allclose(used, penalty)


def test_oracle_under_the_preset_reports_its_next_cost(tmp_path):
    task = GmmScheduleTask("smoke")
    r = task.oracle(task.default_params(), 0, OracleContext(0, 1.0, workdir=tmp_path, preset="paper"))
    loop = SingleLoop(task)
    cfg, _ = loop.settings(OracleContext(0, 1.0, preset="paper"))
    assert r.cost == pytest.approx(sum(loop.iteration_work(True, cfg).values()) / loop.unit_work())
    assert r.info["next_iteration_cost"] == pytest.approx(sum(loop.iteration_work(False, cfg).values()) / loop.unit_work())
    assert r.info["train_step"] == round(2 / 3 * task.train_steps) + 10
