"""gmm-reward and gmm-schedule: the smoke matrix with every method through the runner, the
report's tables and the tasks' pictures."""

import pytest

from diffhpo.bench import storage as st
from diffhpo.bench.report import collect, summarise
from diffhpo.bench.runner import RunSpec, run_matrix
from diffhpo.methods import METHODS
from diffhpo.tasks.gmm import GmmRewardTask, GmmScheduleTask

pytestmark = pytest.mark.usefixtures("session_cache")


def test_smoke_matrix_every_method(tmp_path):
    methods = sorted(METHODS.names())
    spec = RunSpec(tasks=["gmm-reward", "gmm-schedule"], methods=methods, seeds=[0], profile="smoke", out=tmp_path,
                   progress=False)
    run_matrix(spec, log=lambda s: None)
    trials, cells = collect(st.open_storage(st.default_url(tmp_path)))
    assert (cells.status == "done").all()
    reward, schedule = cells[cells.task == "gmm-reward"], cells[cells.task == "gmm-schedule"]
    pruning = {"sha", "hyperband", "median"}  # gmm-reward's sampling run has no fidelity: skipped there
    assert set(reward.method) == set(methods) - pruning
    assert set(schedule.method) == set(methods) - {"none", "weighted-sum"}  # reward-task baselines
    lam = reward[reward.param_lam.notna()]
    assert (lam.final_regret >= -1e-12).all() and (lam.final_lam_error >= 0).all()
    assert reward.final_fidelity.notna().all() and (schedule.final_distance > 0).all()
    bil = trials[(trials.method == "bilevel")]
    assert bil.oracle.all() and len(bil[bil.task == "gmm-reward"]) >= 2 and len(bil[bil.task == "gmm-schedule"]) >= 2
    summary = summarise(cells)
    assert summary["search_wall_s_total"].notna().all()
    written = GmmRewardTask.write_plots(reward, trials[trials.task == "gmm-reward"], tmp_path / "plots")
    assert sorted(p.name for p in written) == ["gmm-reward_smoke_lambda.png", "gmm-reward_smoke_samples.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    (diag,) = GmmRewardTask.diagnostics(reward, trials[trials.task == "gmm-reward"], tmp_path / "plots")
    assert diag.method == "bilevel" and [p.name for p in diag.images] == ["gmm-reward_smoke_premise.png"]
    assert "bilevel" in set(diag.tables[0][1].method)
    assert GmmScheduleTask.write_plots(schedule, trials, tmp_path / "plots") == []
