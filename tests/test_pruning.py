"""Multi-fidelity methods (issue 17): intermediate values, pruned trials that cost the fraction
they ran, the budget held with pruning, resume, and a pruning method from an external package."""

import os
import subprocess
import sys
import textwrap

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from diffhpo.bench import storage as st
from diffhpo.bench.contracts.registry import TASKS
from diffhpo.bench.runner import RunSpec, run_matrix
from diffhpo.bench.contracts.fidelity import FIDELITY_STEPS
from toys import registered
from toys import CurvesTask as _Curves  # the shared toy task with a fidelity


@pytest.fixture
def curves():
    with registered(_Curves, interrupt_at=None) as cls:
        yield cls


def _spec(out, methods=("sha", "hyperband", "median")):
    return RunSpec(tasks=["curves"], methods=list(methods), seeds=[0], profile="smoke", out=out, progress=False)


def _trials(out, method):
    return optuna.load_study(study_name=f"curves.{method}.smoke.seed0", storage=st.default_url(out)).trials


def test_pruned_trials_cost_their_fraction_and_the_budget_holds(curves, tmp_path):
    run_matrix(_spec(tmp_path), log=lambda s: None)
    pruned_somewhere = False
    for method in ("sha", "hyperband", "median"):
        trials = _trials(tmp_path, method)
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        pruned_somewhere |= bool(pruned)
        for t in pruned:
            last = max(t.intermediate_values)
            assert t.user_attrs["cost"] == pytest.approx(last / FIDELITY_STEPS)  # what it ran, measured
            assert t.user_attrs["pruned_at"] == t.user_attrs["cost"] < 1.0
        for t in trials:
            if t.state == TrialState.COMPLETE:
                assert t.user_attrs["cost"] == 1.0 and sorted(t.intermediate_values) == [250, 500, 750]
        counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        spent = sum(t.user_attrs["cost"] for t in counted)
        before_last = spent - counted[-1].user_attrs["cost"]
        assert before_last < 8.0 <= spent  # a trial starts only while the spent cost is below the budget
        assert len(counted) > 8 or not pruned  # pruning bought more trials than the budget's 8 full ones
        study = optuna.load_study(study_name=f"curves.{method}.smoke.seed0", storage=st.default_url(tmp_path))
        assert study.user_attrs["status"] == "done"
    assert pruned_somewhere


def test_pruning_methods_skip_tasks_without_fidelity(tmp_path):
    lines = []
    run_matrix(RunSpec(tasks=["quadratic"], methods=["sha", "random"], seeds=[0], profile="smoke", out=tmp_path,
                       progress=False), log=lines.append)
    assert any("quadratic.sha: skipped (a pruning method, and the task has no fidelity" in line for line in lines)
    assert any("quadratic.random.smoke.seed0: done" in line for line in lines)


@pytest.mark.parametrize("method", ["sha", "hyperband", "median"])
def test_a_resumed_cell_with_pruned_trials_matches_an_uninterrupted_one(curves, tmp_path, method):
    run_matrix(_spec(tmp_path / "one", [method]), log=lambda s: None)
    calls = curves.calls
    for _ in range(3):  # interrupted three times, a quarter of the cell apart
        curves.calls, curves.interrupt_at = 0, calls // 4
        with pytest.raises(KeyboardInterrupt):
            run_matrix(_spec(tmp_path / "two", [method]), log=lambda s: None)
    curves.interrupt_at = None
    run_matrix(_spec(tmp_path / "two", [method]), log=lambda s: None)

    def key(trials):
        return sorted((round(t.params["x"], 12), t.state.name, t.value, tuple(sorted(t.intermediate_values.items())))
                      for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    resumed = _trials(tmp_path / "two", method)
    assert sum(t.user_attrs.get("fail_reason", "").startswith("interrupted") for t in resumed) >= 1
    assert key(resumed) == key(_trials(tmp_path / "one", method))
    assert not [t for t in resumed if t.state == TrialState.FAIL and not t.user_attrs["fail_reason"].startswith("interrupted")]


PLUGIN = '''
import optuna
from diffhpo.methods.base import Method, best_params


def make_sampler(ctx):
    return optuna.samplers.RandomSampler(seed=ctx.seed)


def make_pruner(ctx):
    return optuna.pruners.ThresholdPruner(upper=0.3)


METHOD = Method("random search with a threshold pruner, from an external package", make_sampler,
                choose=best_params, make_pruner=make_pruner)
'''

TASK = '''
import sys
sys.path.insert(0, {tests!r})
from test_pruning import _Curves as TASK
'''


def test_an_external_pruning_method_through_the_entry_point(tmp_path):
    (tmp_path / "diffhpo_threshold.py").write_text(PLUGIN)
    (tmp_path / "diffhpo_curves_task.py").write_text(TASK.format(tests=os.path.dirname(__file__)))
    info = tmp_path / "diffhpo_threshold-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: diffhpo-threshold\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [diffhpo.methods]
        threshold = diffhpo_threshold:METHOD
        [diffhpo.tasks]
        curves = diffhpo_curves_task:TASK
        """))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = tmp_path / "out"
    ran = subprocess.run([sys.executable, "-m", "diffhpo", "run", "--task", "curves", "--method", "threshold",
                          "--profile", "smoke", "--out", str(out), "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    trials = pd.read_csv(out / "trials.csv")
    pruned = trials[trials.state == "PRUNED"]
    assert len(pruned) > 0 and (pruned.cost < 1).all()  # points far from 0.3 exceed the threshold early


def test_learning_curves_are_exported_and_drawn(curves, tmp_path):
    from diffhpo.bench.report import write_report

    run_matrix(_spec(tmp_path, ["sha"]), log=lambda s: None)
    written = write_report(st.open_storage(st.default_url(tmp_path)), tmp_path, html=False)
    lc = pd.read_csv(written["curves"])
    trials = _trials(tmp_path, "sha")
    assert len(lc) == sum(len(t.intermediate_values) for t in trials)  # every intermediate value
    assert set(lc.state) == {"COMPLETE", "PRUNED"} and set(lc.fraction) <= {0.25, 0.5, 0.75}
    assert written["curves_smoke_curves"].exists()


@pytest.mark.parametrize("name", ["gmm-schedule", "mnist-schedule"])
def test_schedule_tasks_report_checkpoints_without_changing_the_training(name, session_cache):
    task = TASKS.get(name)("smoke")
    assert task.has_fidelity
    seen = []
    with_report = task.evaluate(task.default_params(), 3, report=lambda f, v: seen.append((f, v)))
    plain = task.evaluate(task.default_params(), 3)
    assert with_report == plain  # checkpoints only sample: the trained network is the same
    assert [round(f, 2) for f, _ in seen] == [round(f, 2) for f in task.config.checkpoints] or (
        len(seen) == len({f for f, _ in seen}) and all(0 < f < 1 for f, _ in seen))
    assert seen and all(v == v for _, v in seen)


def test_a_schedule_task_stopped_at_a_checkpoint_costs_that_fraction(tmp_path):
    run_matrix(RunSpec(tasks=["gmm-schedule"], methods=["sha"], seeds=[0], profile="smoke", out=tmp_path,
                       progress=False, budget=6), log=lambda s: None)
    trials = optuna.load_study(study_name="gmm-schedule.sha.smoke.seed0", storage=st.default_url(tmp_path)).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done and all(len(t.intermediate_values) == 3 for t in done)
    for t in pruned:
        assert t.user_attrs["cost"] == pytest.approx(max(t.intermediate_values) / FIDELITY_STEPS, abs=0.02)


def test_methods_without_a_pruner_never_prune(curves, tmp_path):
    run_matrix(_spec(tmp_path, ["random", "tpe", "grid"]), log=lambda s: None)
    for method in ("random", "tpe", "grid"):
        trials = _trials(tmp_path, method)
        assert trials and not [t for t in trials if t.state == TrialState.PRUNED], method
        assert all(len(t.intermediate_values) == 3 for t in trials if t.state == TrialState.COMPLETE)
