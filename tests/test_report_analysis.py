"""Regret, ranks, tests, export and merge on synthetic storages with a known answer.

Task ``synth`` (minimise ``loss``, budget 4 trials of cost 1): ``good`` dominates ``bad`` on
every seed at every budget fraction, and ``default`` (one trial) is worst.
"""

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats

from diffhpo.bench import storage as st
from diffhpo.bench.analysis import pairs, ranks, regret
from diffhpo.bench.comparison import compare
from diffhpo.bench.report import collect, write_report
from diffhpo.cli import main

GOOD = [0.5, 0.4, 0.2, 0.1]  # search values, one per quarter of the budget
BAD = [0.9, 0.8, 0.7, 0.6]
DIST = {"x": FloatDistribution(-100, 100)}


def add_cell(storage, method, seed, values, final, *, task="synth", budget=4.0, optimum=None,
             direction="minimize", extra_trials=()):
    study = optuna.create_study(storage=storage, study_name=st.study_name(task, method, "smoke", seed),
                                direction=direction)
    for i, v in enumerate(values):
        study.add_trial(create_trial(value=v, params={"x": float(i)}, distributions=DIST,
                                     user_attrs={"cost": 1.0, "wall_s": 0.1, "ask_s": 0.0, "metric_loss": v}))
    for t in extra_trials:
        study.add_trial(t)
    attrs = {"task": task, "method": method, "seed": seed, "profile": "smoke", "budget": budget, "primary": "loss",
             "metric_directions": {"loss": direction}, "final_params": {"x": 0.0}, "final_metrics": {"loss": final},
             "final_measure": {"wall_s": 0.1}, "status": "done", "optimum": optimum, st.CELL_MARK: True}
    for k, v in attrs.items():
        study.set_user_attr(k, v)


def synth_storage(url, seeds, *, optimum=0.0, default=True, default_seeds=None, tasks=("synth",)):
    storage = st.open_storage(url)
    for task in tasks:
        for s in seeds:
            add_cell(storage, "good", s, GOOD, 0.1 + 0.01 * s, optimum=optimum, task=task)
            add_cell(storage, "bad", s, BAD, 0.6 + 0.02 * s, optimum=optimum, task=task)
            if default and s in (default_seeds if default_seeds is not None else seeds):
                add_cell(storage, "default", s, [1.0 + 0.1 * s], 1.0 + 0.1 * s, optimum=optimum, task=task)
    return storage


def pair_row(comp, a, b):
    return comp.pairs[(comp.pairs.a == a) & (comp.pairs.b == b)].iloc[0]


def analyse(tmp_path, seeds, **kw):
    trials, cells = collect(synth_storage(f"sqlite:///{tmp_path}/s.db", seeds, **kw))
    return trials, cells, compare(trials, cells)


def test_budget_fraction_counts_completed_and_failed_evaluations_only(tmp_path):
    storage = st.open_storage(f"sqlite:///{tmp_path}/s.db")
    extra = [create_trial(state=TrialState.FAIL, user_attrs={"cost": 1.0, "fail_reason": "ValueError: nan"}),
             create_trial(state=TrialState.FAIL, user_attrs={"cost": 1.0, "fail_reason": "interrupted"}),
             create_trial(value=0.05, params={"x": 9.0}, distributions=DIST, user_attrs={"cost": 1.0})]
    add_cell(storage, "good", 0, GOOD[:1], 0.1, extra_trials=extra)
    trials, _ = collect(storage)
    assert trials.counted.tolist() == [True, True, False, True]
    assert trials.budget_fraction.tolist() == [0.25, 0.5, 0.5, 0.75]


def test_regret_at_budget_fractions_against_known_optimum(tmp_path):
    _, _, comp = analyse(tmp_path, range(3), default_seeds=[0, 1])
    ref = comp.references.iloc[0]
    assert ref.best_source == "known optimum" and ref.best == 0.0 and ref.note == ""
    p = comp.points.set_index(["method", "seed", "at"])
    assert p.value[("good", 0, "25%")] == 0.5 and p.value[("good", 0, "50%")] == 0.4
    assert p.value[("good", 0, "100%")] == 0.1 and p.value[("bad", 1, "final")] == pytest.approx(0.62)
    # normalised by the default's final value on the same seed ...
    assert p.normalised_regret[("good", 1, "25%")] == pytest.approx(0.5 / 1.1)
    assert p.normalised_regret[("bad", 0, "final")] == pytest.approx(0.6 / 1.0)
    # ... and by the median over the default's seeds where that seed is missing
    assert p.reference[("good", 2, "final")] == pytest.approx(1.05)
    assert p.normalised_regret[("good", 2, "final")] == pytest.approx(0.12 / 1.05)
    assert p.regret[("bad", 2, "50%")] == pytest.approx(0.8)
    # the curves: good's median normalised regret at half the budget, and 1 for the default
    c = comp.curves[(comp.curves.axis == "fraction") & (comp.curves.kind == "normalised")]
    at_half = c[np.isclose(c.x, 0.5)].set_index("method")["median"]
    assert at_half["good"] == pytest.approx(np.median([0.4 / 1.0, 0.4 / 1.1, 0.4 / 1.05]))
    assert at_half["default"] == pytest.approx(1.0)
    assert (c[c.method == "good"]["median"].diff().dropna() <= 1e-12).all()  # best so far never worsens


def test_best_final_value_without_known_optimum_and_plain_regret_without_default(tmp_path):
    _, _, comp = analyse(tmp_path, range(3), optimum=None, default=False)
    ref = comp.references.iloc[0]
    assert ref.best == pytest.approx(0.1) and ref.best_source.startswith("best final value") and "good, seed 0" in ref.best_source
    assert "no `default` cell" in ref.note
    assert comp.points.normalised_regret.isna().all()
    p = comp.points.set_index(["method", "seed", "at"])
    assert p.regret[("bad", 0, "100%")] == pytest.approx(0.5)
    assert set(comp.curves.kind) == {"plain"}


def test_regret_of_a_maximised_metric_is_positive_below_the_best():
    r, nr = regret._regret([0.7, 0.9], 1.0, 0.5, "maximize")
    assert r.tolist() == pytest.approx([0.3, 0.1]) and nr.tolist() == pytest.approx([0.6, 0.2])


def test_ranks_and_friedman_when_one_method_dominates(tmp_path):
    n = 8
    _, _, comp = analyse(tmp_path, range(n))
    r = comp.ranks[comp.ranks.task == "synth"].set_index("method")
    for col in ["rank 25%", "rank 50%", "rank 100%", "rank final"]:
        assert r[col].to_dict() == {"good": 1.0, "bad": 2.0, "default": 3.0}, col
    (f,) = comp.friedman
    assert f.tested and f.n_blocks == n and f.mean_ranks["rank final"].to_dict() == {"good": 1.0, "bad": 2.0, "default": 3.0}
    # perfect agreement of 8 blocks on 3 methods: chi2 = N (k - 1) = 16, p = exp(-8)
    assert f.statistic == pytest.approx(16.0) and f.p_value == pytest.approx(math.exp(-8))
    assert f.nemenyi.loc["good", "default"] < 0.05 and f.nemenyi.loc["good", "bad"] > 0.05
    assert f.cd == pytest.approx(stats.studentized_range.ppf(0.95, 3, np.inf) / np.sqrt(2) * np.sqrt(3 * 4 / (6 * n)))
    assert comp.ranks[comp.ranks.task == "(all tasks)"].set_index("method")["rank final"]["good"] == 1.0


def test_across_tasks_every_task_seed_run_is_a_block_and_regret_is_pooled(tmp_path):
    storage = synth_storage(f"sqlite:///{tmp_path}/s.db", range(3), tasks=("synth", "synth2"))
    written = write_report(storage, tmp_path / "out")
    trials, cells = collect(storage)
    comp = compare(trials, cells)
    (f,) = comp.friedman
    assert f.tested and f.n_blocks == 6 and f.n_tasks == 2 and f.statistic == pytest.approx(12.0)
    pooled = comp.curves[comp.curves.task == "(all tasks)"]
    good = pooled[(pooled.method == "good") & np.isclose(pooled.x, 0.5)].iloc[0]
    assert good.n_seeds == 6 and good["median"] == pytest.approx(np.median([0.4 / (1.0 + 0.1 * s) for s in range(3)]))
    assert written["smoke_regret"].exists() and written["smoke_critical_difference"].exists()


def test_pairwise_test_and_bootstrap_interval(tmp_path):
    _, _, comp = analyse(tmp_path, range(8))
    row = pair_row(comp, "bad", "good")
    assert (row.a_wins, row.ties, row.a_losses) == (0, 0, 8)
    assert row.p_value == pytest.approx(2 / 2**8)  # exact two-sided signed-rank p, all differences one sign
    diffs = 0.5 + 0.01 * np.arange(8)  # bad - good per seed
    assert row.median_difference == pytest.approx(np.median(diffs))
    assert diffs.min() <= row.ci_low <= row.median_difference <= row.ci_high <= diffs.max() and row.ci_low > 0
    assert row.p_holm >= row.p_value and pairs.verdict(row).startswith("good better")


def test_too_few_seeds_gives_counts_and_says_so_instead_of_p_values(tmp_path, capsys):
    _, _, comp = analyse(tmp_path, range(3))
    assert comp.pairs.p_value.isna().all() and comp.pairs.ci_low.isna().all()
    assert comp.pairs.note.str.startswith("too few seeds: 3").all()
    row = pair_row(comp, "bad", "good")
    assert (row.a_wins, row.a_losses) == (0, 3)
    (f,) = comp.friedman
    assert not f.tested and f.p_value is None and "needs at least 5" in f.note
    assert "No test: too few runs" in ranks.describe(f)
    written = write_report(synth_storage(f"sqlite:///{tmp_path}/t.db", range(3)), tmp_path / "out")
    text = written["comparison_md"].read_text()
    assert "too few seeds" in text and "p = " not in text
    assert not list((tmp_path / "out" / "plots").glob("*critical_difference*"))


def test_export_is_long_with_every_trial_and_final(tmp_path):
    written = write_report(synth_storage(f"sqlite:///{tmp_path}/s.db", range(2)), tmp_path / "out", plots=False,
                           html=False)
    long = pd.read_csv(written["export_0"])
    trials = long[long.kind == "trial"]
    assert len(trials) == 2 * (4 + 4 + 1) and (trials.metric == "loss").all()
    finals = long[long.kind == "final"].set_index(["method", "seed"])
    assert finals.value[("bad", 1)] == pytest.approx(0.62) and len(finals) == 6
    for col in ["task", "method", "seed", "budget_fraction", "wall_s", "elapsed_s", "git_commit", "version_diffhpo",
                "version_optuna", "platform", "source"]:
        assert col in long, col
    assert trials[trials.method == "good"].groupby("seed").budget_fraction.max().tolist() == [1.0, 1.0]
    if "export_1" in written:
        pq = pd.read_parquet(written["export_1"])
        assert len(pq) == len(long) and list(pq.columns) == list(long.columns)


def _run(args):
    try:
        main(args)
    except SystemExit as exc:
        return exc.code
    return 0


def test_merge_two_storages_equals_one_storage_with_all_seeds(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    synth_storage(st.default_url(tmp_path / "a"), range(0, 4))
    synth_storage(f"journal:///{tmp_path}/b/cells.log", range(4, 8))
    synth_storage(f"sqlite:///{tmp_path}/all.db", range(8))
    assert _run(["report", "--out", str(tmp_path / "merged"), "--no-plots", "--merge", str(tmp_path / "a"),
                 str(tmp_path / "b" / "cells.log")]) == 0
    assert _run(["report", "--out", str(tmp_path / "one"), "--no-plots", "--storage", f"sqlite:///{tmp_path}/all.db"]) == 0
    capsys.readouterr()
    for name in ["ranks.csv", "pairs.csv", "pairs_over_tasks.csv", "regret.csv", "summary.csv"]:
        merged, one = pd.read_csv(tmp_path / "merged" / name), pd.read_csv(tmp_path / "one" / name)
        pd.testing.assert_frame_equal(merged, one, check_exact=False)
    long = pd.read_csv(tmp_path / "merged" / "results_long.csv")
    assert set(long.source) == {str(tmp_path / "a"), str(tmp_path / "b" / "cells.log")}
    assert sorted(long[long.kind == "final"].seed.unique()) == list(range(8))
    assert (tmp_path / "merged" / "report.html").exists()


@pytest.mark.parametrize("case, needle", [
    ("same", "is in both"),
    ("missing", "no such file or folder"),
    ("text", "neither a SQLite database nor a journal file"),
    ("empty", "holds no diffhpo cell"),
    ("alien", "not an Optuna storage"),
    ("bare", "need --merge"),
])
def test_bad_merge_input_is_one_error_line_with_exit_2(tmp_path, capsys, case, needle):
    import sqlite3

    (tmp_path / "a").mkdir()
    synth_storage(st.default_url(tmp_path / "a"), range(2))
    other = {"same": str(tmp_path / "a"), "missing": str(tmp_path / "nope"), "text": str(tmp_path / "t.txt"),
             "empty": str(tmp_path / "e.db"), "alien": str(tmp_path / "x.db"), "bare": None}[case]
    (tmp_path / "t.txt").write_text("not a storage")
    st.open_storage(f"sqlite:///{tmp_path}/e.db")  # an Optuna storage without cells
    sqlite3.connect(tmp_path / "x.db").execute("CREATE TABLE t (x)").connection.commit()
    args = ["report", "--out", str(tmp_path / "m"), "--merge", str(tmp_path / "a"), other]
    if case == "bare":
        args = ["report", "--out", str(tmp_path / "m"), str(tmp_path / "a")]
    assert _run(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error")]) == 1
    if case == "alien":  # the foreign database was not turned into an Optuna storage
        assert sqlite3.connect(tmp_path / "x.db").execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]


def test_no_html_flag_and_passwords_hidden(tmp_path, capsys):
    from diffhpo.bench.provenance import redact

    synth_storage(st.default_url(tmp_path), range(2))
    assert _run(["report", "--out", str(tmp_path), "--no-html", "--no-plots"]) == 0
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "plots").exists()
    assert (tmp_path / "ranks.csv").exists() and "# diffhpo comparison" in capsys.readouterr().out
    assert redact("run --storage postgresql://me:p@ss:w0rd@db:5432/x") == "run --storage postgresql://me:***@db:5432/x"
    assert redact("sqlite:////data/a@b.db") == "sqlite:////data/a@b.db"


def test_pairs_over_tasks_count_tasks_and_significant_ones(tmp_path):
    storage = synth_storage(f"sqlite:///{tmp_path}/s.db", range(8), tasks=("synth", "synth2"))
    add_cell(storage, "good", 0, GOOD, 0.1, task="synth3")  # a third task, one seed: no test there
    add_cell(storage, "bad", 0, BAD, 0.05, task="synth3")  # where bad beats good
    comp = compare(*collect(storage))
    row = comp.pairs_over_tasks.set_index(["a", "b"]).loc[("bad", "good")]
    assert (row.tasks, row.a_wins, row.ties, row.a_losses) == (3, 1, 0, 2)
    assert (row.a_significantly_better, row.b_significantly_better) == (0, 2)


def test_report_from_a_missing_storage_file_is_an_error_not_a_new_storage(tmp_path, capsys):
    missing = tmp_path / "missing.db"
    assert _run(["report", "--out", str(tmp_path / "o"), "--storage", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err
    assert f"storage 'sqlite:///{missing}': no such file" in err and "Traceback" not in err
    assert not missing.exists()


def test_a_task_whose_trials_all_failed_is_reported_without_curves(tmp_path):
    storage = synth_storage(f"sqlite:///{tmp_path}/s.db", range(2))
    failed = [create_trial(state=TrialState.FAIL, user_attrs={"cost": 1.0, "fail_reason": "ValueError: diverged"})]
    for method in ("good", "bad"):
        add_cell(storage, method, 0, [], float("nan"), task="broken", extra_trials=failed)
    written = write_report(storage, tmp_path / "out")
    assert written["html"].exists() and "synth_smoke_regret" in written and "broken_smoke_regret" not in written
    ranks_ = pd.read_csv(written["ranks"])
    assert (ranks_[ranks_.task == "broken"]["rank final"] == 1.5).all()  # no value: a tie


def _oracle_trials(values, *, evaluated):
    """Outer iterations of a first-order method: values that are the oracle's estimates
    (``evaluated`` False) or real evaluations (True)."""
    return [create_trial(value=v, params={"x": float(i)}, distributions=DIST,
                         user_attrs={"cost": 1.0, "wall_s": 0.1, "ask_s": 0.0, "hypergrad": {"x": 1.0},
                                     "evaluated": evaluated})
            for i, v in enumerate(values)]


@pytest.mark.parametrize("evaluated", [False, True])
def test_oracle_estimates_are_not_search_values(tmp_path, evaluated):
    """An oracle whose optimistic estimates (0.0, better than anything) would top every
    search fraction: as estimates they give no search value and no rank there; its final
    value (worse than good's) ranks as any other. Evaluated oracle values count."""
    storage = synth_storage(f"sqlite:///{tmp_path}/s.db", range(6))
    for s in range(6):
        add_cell(storage, "oracle", s, [], 0.3 + 0.01 * s, extra_trials=_oracle_trials([0.0] * 4, evaluated=evaluated))
    trials, cells = collect(storage)
    comp = compare(trials, cells)
    p = comp.points.set_index(["method", "seed", "at"])
    r = ranks.per_task(comp.points).set_index("method")
    if evaluated:
        assert p.value[("oracle", 0, "25%")] == 0.0 and r.loc["oracle", "rank 25%"] == 1.0
    else:
        assert math.isnan(p.value[("oracle", 0, "25%")]) and bool(p.estimated[("oracle", 0, "25%")])
        assert math.isnan(r.loc["oracle", "rank 25%"]) and r.loc["good", "rank 25%"] == 1.0
        assert r.loc["bad", "rank 100%"] == 2.0  # ranked as if the oracle method were absent
    assert r.loc["oracle", "rank final"] == 2.0 and r.loc["good", "rank final"] == 1.0
    across = ranks.across_tasks(comp.points)[0].mean_ranks
    assert math.isnan(across.loc["oracle", "rank 50%"]) != evaluated
    assert across.loc["oracle", "rank final"] == 2.0
