"""gmm-schedule: declared options, the landscape ratio on a small profile, the shared single
loop on the mixture, the reference optimum."""

import json

import pytest
import torch

from diffhpo.bench.contracts.options import undeclared
from diffhpo.tasks import schedule_landscape as land
from diffhpo.bench.contracts.task import OracleContext
from diffhpo.tasks.gmm import GmmScheduleTask
from diffhpo.tasks.gmm.schedule_task import REFERENCE_FILE, reference
from diffhpo.tasks.mnist_schedule.schedules import PARAM_NAMES


def test_every_option_is_declared():
    assert undeclared(GmmScheduleTask.profiles.values()) == []


def test_landscape_ratio_on_a_small_profile():
    """Differences between schedules span at least 5 seed spreads (task docstring)."""
    task = GmmScheduleTask("smoke", train_steps=150, search_samples=500)
    values = land.evaluate(task, 3)
    assert set(values) == {"default", "q_s=0.4", "q_e=0.8", "q_tau=4", "q_eps=0.04"}
    assert all(len(v) == 3 for v in values.values())
    assert land.ratio(values) >= 5


def test_evaluation_is_deterministic_and_depends_on_the_schedule():
    task = GmmScheduleTask("smoke")
    d = task.default_params()
    a, b = task.evaluate(d, 0), task.evaluate(d, 0)
    assert a == b
    other = task.evaluate({**d, "q_e": 0.8}, 0)
    assert other["distance"] != a["distance"] and other["alphabar_T"] > a["alphabar_T"]


def test_single_loop_resumes_and_reruns_identically(tmp_path):
    task = GmmScheduleTask("smoke")
    q0 = task.default_params()
    ctx = lambda k: OracleContext(iteration=k, gamma=10.0 * 1.5**k, workdir=tmp_path)
    r0 = task.oracle(q0, 0, ctx(0))
    q1 = {**q0, "q_e": 0.95}
    r1 = task.oracle(q1, 0, ctx(1))
    again = GmmScheduleTask("smoke").oracle(q1, 0, ctx(1))
    assert again.grad == r1.grad and again.metrics == r1.metrics
    for r in (r0, r1):
        assert set(r.grad) == set(PARAM_NAMES) and all(torch.isfinite(torch.tensor(list(r.grad.values()))))
        assert r.metrics["distance"] > 0
        for n in PARAM_NAMES:
            assert r.grad[n] == pytest.approx(r.info[f"zo_{n}"] + r.info[f"penalty_{n}"])
    assert r0.cost > r1.cost > 0
    assert r1.info["yz_distance"] > 0


def test_reference_optimum_is_used_only_with_its_settings():
    if reference("quick") is None:
        pytest.skip(f"no reference in {REFERENCE_FILE}")
    ref = json.loads(REFERENCE_FILE.read_text())["quick"]
    assert GmmScheduleTask("quick").known_optimum() == pytest.approx(ref["value"])
    assert GmmScheduleTask("quick", train_steps=10).known_optimum() is None
    assert ref["value"] < ref["default_value"]
