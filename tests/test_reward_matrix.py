"""Acceptance (issue: reward tasks): the smoke profile of reward-mnist and reward-sd with every
method, through the command line and the runner, with all sockets blocked."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from diffhpo.bench import storage as st
from diffhpo.bench.report import collect
from diffhpo.cli import main
from diffhpo.tasks import TASKS

METHODS = ["none", "weighted-sum", "grid", "random", "tpe", "botorch", "bilevel"]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, session_cache):
    out = tmp_path_factory.mktemp("reward-matrix")

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        try:
            main(["run", "--task", "reward-mnist,reward-sd", "--method", ",".join(METHODS), "--profile", "smoke",
                  "--out", str(out), "--no-progress"])
        except SystemExit as exc:  # click may exit 0 explicitly; an error exits 2 after one line
            assert exc.code in (0, None)
    trials, cells = collect(st.open_storage(st.default_url(out)))
    return out, trials, cells


@pytest.mark.parametrize("task", ["reward-mnist", "reward-sd"])
def test_every_method_finishes_with_finite_metrics(matrix, task):
    _, trials, cells = matrix
    c = cells[cells.task == task].set_index("method")
    assert sorted(c.index) == sorted(METHODS) and (c.status == "done").all()
    for metric in TASKS.get(task)("smoke").metrics:
        assert np.isfinite(c[f"final_{metric.name}"]).all(), metric.name
    assert c.loc["none", "n_trials"] == 1 and np.isnan(c.loc["none"].get("param_lam", np.nan))
    assert np.isfinite(c.loc["weighted-sum", "param_w"]) and np.isnan(c.loc["weighted-sum", "param_lam"])
    for m in ("grid", "random", "tpe", "botorch", "bilevel"):
        assert 0.01 <= c.loc[m, "param_lam"] <= 100, m


@pytest.mark.parametrize("task", ["reward-mnist", "reward-sd"])
def test_bilevel_budget_and_bank_charge(matrix, task):
    _, trials, _ = matrix
    budget = TASKS.get(task).profiles["smoke"].budget
    bil = trials[(trials.task == task) & (trials.method == "bilevel")].sort_values("number")
    assert bil.oracle.all() and len(bil) >= 3
    assert bil.cost.iloc[0] > bil.cost.iloc[1] == bil.cost.iloc[-1]  # the bank: charged once, first iteration
    spent = bil[bil.state == "COMPLETE"].cost.sum()
    assert budget <= spent < budget + bil.cost.iloc[0]
    assert bil["metric_lower"].notna().all() and "metric_fid" not in bil or bil["metric_fid"].isna().all()
    for m in ("grid", "random", "botorch"):
        assert (trials[(trials.task == task) & (trials.method == m)].cost == 1.0).all()


def test_report_has_the_reward_pictures(matrix):
    out, _, _ = matrix
    for task in ("reward-mnist", "reward-sd"):
        for kind in ("upper_vs_lambda", "samples"):
            assert (out / "plots" / f"{task}_smoke_{kind}.png").stat().st_size > 1000
    assert "reward-mnist" in (out / "summary.md").read_text()
