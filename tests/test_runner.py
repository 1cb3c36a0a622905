"""The runner: budgets, final protocol, resume after interruption, failed trials, reports."""

import math

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from diffhpo.bench import storage as st
from diffhpo.bench.report import collect, write_report
from diffhpo.bench.runner import RunSpec, run_matrix
from toys import ToyTask, registered, smoke


def spec(tmp_path, **kw):
    base = dict(tasks=["quadratic"], methods=["random"], seeds=[0], profile="smoke", out=tmp_path, progress=False)
    base.update(kw)
    return RunSpec(**base)


def storage_of(tmp_path):
    return st.open_storage(st.default_url(tmp_path))


def test_equal_budget_and_final_protocol(tmp_path):
    run_matrix(spec(tmp_path, methods=["grid", "random", "tpe", "bilevel"]), log=lambda s: None)
    trials, cells = collect(storage_of(tmp_path))
    assert set(cells.method) == {"grid", "random", "tpe", "bilevel"}
    assert (cells.status == "done").all()
    budget = 12.0
    for method, g in trials.groupby("method"):
        spent = g[g.state == "COMPLETE"].cost.sum()
        assert budget <= spent < budget + 2, method  # last trial may overshoot by < its cost
    assert (trials[trials.method == "bilevel"].cost == 2.0).all()
    assert len(trials[trials.method == "bilevel"]) == 6
    # every trial records its measurements and metrics
    for col in ["wall_s", "cpu_s", "peak_rss_mib", "ask_s", "metric_val_loss", "metric_test_loss"]:
        assert trials[col].notna().all(), col
    assert (trials.peak_rss_mib > 10).all()
    # final protocol: re-evaluated chosen params, same seed for every method
    assert cells.final_rel_gap.notna().all()
    best = trials[trials.state == "COMPLETE"].groupby("method").value.min()
    for _, row in cells[cells.method != "bilevel"].iterrows():
        assert row.final_val_loss == pytest.approx(best[row.method])


def test_bilevel_reaches_true_optimum_and_beats_grid_and_random(tmp_path):
    """Acceptance: quadratic, 5 hyperparameters, equal budget, three seeds."""
    run_matrix(spec(tmp_path, profile="quick", methods=["grid", "random", "bilevel"], seeds=[0, 1, 2]),
               log=lambda s: None)
    _, cells = collect(storage_of(tmp_path))
    bil = cells[cells.method == "bilevel"]
    assert len(bil) == 3 and (bil.final_rel_gap < 0.01).all()
    med = cells.groupby("method").final_val_loss.median()
    assert med["bilevel"] < med["grid"] and med["bilevel"] < med["random"]


def test_rerun_skips_finished_cells_and_extends_budget(tmp_path):
    run_matrix(spec(tmp_path, budget=5), log=lambda s: None)
    study = optuna.load_study(study_name="quadratic.random.smoke.seed0", storage=st.default_url(tmp_path))
    first = [(t.number, t.params, t.value, t.datetime_complete) for t in study.trials]
    lines = []
    run_matrix(spec(tmp_path, budget=5), log=lines.append)
    assert any("seed0: done (skipped)" in line for line in lines)
    run_matrix(spec(tmp_path, budget=9), log=lambda s: None)
    study = optuna.load_study(study_name="quadratic.random.smoke.seed0", storage=st.default_url(tmp_path))
    after = [(t.number, t.params, t.value, t.datetime_complete) for t in study.trials]
    assert len(after) == 9 and after[:5] == first
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 9  # nothing re-proposed


class _Interrupting(ToyTask):
    """The toy task, raising KeyboardInterrupt on one chosen call."""

    name = "interrupting"
    profiles = smoke(8)
    interrupt_at = None

    def loss(self, params, seed, final):
        if type(self).calls == type(self).interrupt_at:
            raise KeyboardInterrupt
        return params["x"] ** 2


@pytest.fixture
def interrupting():
    with registered(_Interrupting) as cls:
        yield cls


def test_interrupted_run_resumes_without_loss_or_recomputation(tmp_path, interrupting):
    interrupting.interrupt_at = 5
    with pytest.raises(KeyboardInterrupt):
        run_matrix(spec(tmp_path, tasks=["interrupting"], methods=["random", "tpe"]), log=lambda s: None)
    url = st.default_url(tmp_path)
    study = optuna.load_study(study_name="interrupting.random.smoke.seed0", storage=url)
    before = {t.number: (t.params, t.value) for t in study.trials if t.state == TrialState.COMPLETE}
    assert len(before) == 4
    # a hard kill leaves a RUNNING trial behind: simulate one in the second cell
    other = optuna.load_study(study_name="interrupting.tpe.smoke.seed0", storage=url)
    other.ask({"x": FloatDistribution(-1, 1)})

    interrupting.interrupt_at = None
    interrupting.calls = 0
    run_matrix(spec(tmp_path, tasks=["interrupting"], methods=["random", "tpe"]), log=lambda s: None)
    study = optuna.load_study(study_name="interrupting.random.smoke.seed0", storage=url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    assert {t.number: (t.params, t.value) for t in complete if t.number in before} == before
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_reason"] for t in failed] == ["interrupted: SIGINT"]
    # only the missing trials were computed (4 + final protocol), per cell
    tpe = optuna.load_study(study_name="interrupting.tpe.smoke.seed0", storage=url)
    assert sum(t.state == TrialState.COMPLETE for t in tpe.trials) == 8
    assert tpe.trials[0].state == TrialState.FAIL
    assert tpe.trials[0].user_attrs["fail_reason"] == "interrupted: left running by an earlier run"
    assert interrupting.calls == 4 + 1 + 8 + 1


class _Flaky(ToyTask):
    name = "flaky"
    profiles = smoke(8)

    def loss(self, params, seed, final):
        if not final and type(self).calls == 2:
            raise ValueError("solver diverged")
        if not final and type(self).calls == 3:
            return math.nan
        return params["x"] ** 2


def test_failed_and_nan_trials_are_recorded_and_the_matrix_goes_on(tmp_path):
    with registered(_Flaky):
        run_matrix(spec(tmp_path, tasks=["flaky", "quadratic"], methods=["random"]), log=lambda s: None)
    trials, cells = collect(storage_of(tmp_path))
    assert set(cells.task) == {"flaky", "quadratic"} and (cells.status == "done").all()
    failed = trials[(trials.task == "flaky") & (trials.state == "FAIL")]
    assert list(failed.fail_reason) == ["ValueError: solver diverged", "loss is nan"]
    assert len(trials[(trials.task == "flaky") & (trials.state == "COMPLETE")]) == 6


def test_report_files_and_columns(tmp_path):
    run_matrix(spec(tmp_path, methods=["random", "bilevel"], seeds=[0, 1]), log=lambda s: None)
    written = write_report(storage_of(tmp_path), tmp_path)
    for key in ["summary_csv", "summary_md", "cells", "trials"]:
        assert written[key].exists()
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == [f"quadratic_smoke_{k}.png" for k in ("convergence", "cost", "pairs", "regret", "trials")]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary.method) == ["bilevel", "random"]
    for col in ["val_loss_median", "val_loss_min", "val_loss_max", "trials_per_seed", "search_wall_s_total",
                "cost_ratio_median", "peak_rss_mib", "chosen_alpha_0"]:
        assert col in summary.columns and summary[col].notna().all(), col
    assert (summary.cost_ratio_median > 0).all()
    assert (summary.val_loss_min <= summary.val_loss_median).all()
    assert "| method" in (tmp_path / "summary.md").read_text()


def test_default_sqlite_storage_is_write_ahead_logged(tmp_path):
    """The default SQLite file runs in WAL mode (one log append per commit, readers never
    block the writer); the mode is stored in the file, so any later reader sees it."""
    import sqlite3

    storage = st.open_storage(st.default_url(tmp_path))
    optuna.create_study(storage=storage, study_name="probe").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    con = sqlite3.connect(tmp_path / st.DEFAULT_DB)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 2
    finally:
        con.close()


def test_a_cell_killed_while_being_described_is_completed_on_rerun(tmp_path, monkeypatch):
    """A kill between two of the study's attribute commits must not block the rerun."""
    calls = []
    real = optuna.study.Study.set_user_attr

    def dies_on_third(self, key, value):
        calls.append(key)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process stops here, two attributes written
        real(self, key, value)

    monkeypatch.setattr(optuna.study.Study, "set_user_attr", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_matrix(spec(tmp_path), log=lambda s: None)
    monkeypatch.setattr(optuna.study.Study, "set_user_attr", real)
    assert st.CELL_MARK not in calls  # the mark is written last
    run_matrix(spec(tmp_path), log=lambda s: None)
    _, cells = collect(storage_of(tmp_path))
    assert list(cells.status) == ["done"]
    # other settings on a fully described cell are still refused
    with pytest.raises(Exception, match="other task settings"):
        run_matrix(spec(tmp_path, task_options={"n_groups": "4"}), log=lambda s: None)


@pytest.mark.parametrize("method", ["grid", "weighted-sum"])
def test_grid_search_ends_cleanly_when_the_budget_covers_the_grid(tmp_path, method):
    """Optuna's GridSampler stops the study at the last grid point, which raises outside
    study.optimize; the runner ends at the grid's size instead."""
    task = "quadratic" if method == "grid" else "reward-mnist"
    opts = {"n_groups": "2"} if method == "grid" else {"digits": "3", "n_samples": "2", "n_final": "2"}
    run_matrix(spec(tmp_path, tasks=[task], methods=[method], budget=12, task_options=opts), log=lambda s: None)
    trials, cells = collect(storage_of(tmp_path))
    assert list(cells.status) == ["done"]
    n_grid = 9 if method == "grid" else 5  # 3^2 alphas; the task's five w values
    assert (trials.state == "COMPLETE").sum() == n_grid
    params = trials[[c for c in trials.columns if c.startswith("param_")]]
    assert len(params.drop_duplicates()) == n_grid
