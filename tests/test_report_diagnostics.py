"""The report's diagnostics (``bench/diagnostics.py``): the documented hooks of a task and of a
method reach the page through the registries; the built-in pruning and known-optimum sections
read the stored trials; the schedule tasks' premise rows come from the trials' user attributes."""

import numpy as np
import pandas as pd
from optuna.trial import TrialState, create_trial

from diffhpo.bench import storage as st
from diffhpo.bench.diagnostics import Diagnostic, known_optimum, pruning
from diffhpo.bench.contracts.registry import TASKS
from diffhpo.bench.report import collect, write_report
from diffhpo.methods import METHODS
from diffhpo.bench.contracts.method import Method
from diffhpo.bench.contracts.task import Task
from diffhpo.tests.test_report_analysis import DIST, add_cell, synth_storage


class HookTask(Task):
    name = "synth"
    description = "a task whose only use is its diagnostics hook"
    profiles = {"smoke": None}
    metrics = search_space = default_grid = evaluate = None

    @classmethod
    def diagnostics(cls, cells, trials, folder):
        return [Diagnostic("good", "synth: from the task's hook", paragraphs=[f"cells seen: {len(cells)}"])]


def method_hook(cells, trials, folder):
    return [Diagnostic("good", "synth: from the method's hook", tables=[("trials:", trials[["seed", "number"]])])]


def test_task_and_method_hooks_fill_the_methods_diagnostics_section(tmp_path):
    TASKS.register("synth", HookTask)
    METHODS.register("good", Method("a method with a diagnostics hook", make_sampler=None, diagnostics=method_hook))
    try:
        written = write_report(synth_storage(f"sqlite:///{tmp_path}/s.db", range(2)), tmp_path / "out")
    finally:
        TASKS.unregister("synth")
        METHODS.unregister("good")
    page = written["html"].read_text()
    section = page.split('id="diagnostics-good"')[1].split("<h2")[0]
    assert "synth: from the task&#x27;s hook" in section and "cells seen: 6" in section
    assert "synth: from the method&#x27;s hook" in section and "trials:" in section
    assert "diagnostics-bad" not in page  # a method without diagnostics has no section


def test_pruning_counts_trials_per_budget_and_the_share_stopped_at_each_rung(tmp_path):
    s = st.open_storage(f"sqlite:///{tmp_path}/s.db")
    pruned = [create_trial(state=TrialState.PRUNED, params={"x": 1.0}, distributions=DIST,
                           intermediate_values=iv, user_attrs={"cost": 0.3})
              for iv in ({111: 0.9}, {111: 0.8}, {111: 0.5, 333: 0.7})]
    done = create_trial(value=0.1, params={"x": 2.0}, distributions=DIST, intermediate_values={111: 0.4, 333: 0.3},
                        user_attrs={"cost": 1.0})
    add_cell(s, "sha", 0, [0.5], 0.1, extra_trials=[*pruned, done])
    trials, cells = collect(s)
    (d,) = pruning(cells, trials)
    assert d.method == "sha" and "5 trials per seed" in d.paragraphs[0] and "1.25 trials per unit" in d.paragraphs[0]
    assert "60% of all trials pruned" in d.paragraphs[0]
    table = d.tables[0][1].set_index("rung (fraction of the solve)")
    assert table.loc["0.111"].tolist() == [4, 2, "50%"] and table.loc["0.333"].tolist() == [2, 1, "50%"]


def test_a_pruning_method_that_stopped_nothing_still_has_its_section(tmp_path):
    s = st.open_storage(f"sqlite:///{tmp_path}/s.db")
    done = create_trial(value=0.1, params={"x": 2.0}, distributions=DIST, intermediate_values={111: 0.4},
                        user_attrs={"cost": 1.0})
    add_cell(s, "hyperband", 0, [0.5], 0.1, extra_trials=[done])
    trials, cells = collect(s)
    assert pruning(cells, trials) == []  # not known to prune: nothing to say
    (d,) = pruning(cells, trials, frozenset({"hyperband"}))
    assert "0% of all trials pruned" in d.paragraphs[0]


def test_known_optimum_gap_between_search_and_final_value(tmp_path):
    trials, cells = collect(synth_storage(f"sqlite:///{tmp_path}/s.db", range(2), optimum=0.05))
    (d,) = known_optimum(cells, trials)
    t = d.tables[0][1].set_index("method")
    # good: best search value 0.1 (regret 0.05), final 0.1 / 0.11 (regret 0.05 / 0.06): gap median 0.005
    assert t.loc["good", "search regret"] == "0.05" and t.loc["good", "gap (final - search)"] == "0.005"


def test_schedule_premise_rows_and_snr_from_the_trials_user_attributes():
    from diffhpo.tasks.gmm.schedule_task import GmmScheduleTask

    ranges = GmmScheduleTask("smoke").ranges
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(2):
        for k in range(4):
            row = {"task": "gmm-schedule", "profile": "smoke", "method": "bilevel", "seed": seed, "number": k,
                   "state": "COMPLETE", "attr_gamma": 10.0 * (k + 1), "attr_yz_distance": 0.1 * (k + 1)}
            row |= {f"attr_zo_{n}": float(rng.normal()) for n in ranges}
            row |= {f"attr_penalty_{n}": 1.0 + k for n in ranges}
            rows.append(row)
    trials = pd.DataFrame(rows)
    cells = pd.DataFrame([{"task": "gmm-schedule", "profile": "smoke", "method": "bilevel", "seed": s, "config": "{}"}
                          for s in range(2)])
    (d,) = GmmScheduleTask.diagnostics(cells, trials, None)
    premise = d.tables[0][1]
    assert premise["gamma first"].tolist() == [10.0, 10.0] and premise["gamma last"].tolist() == [40.0, 40.0]
    assert premise["|y-z| last"].tolist() == [0.4, 0.4] and "grew from the first to the last outer iteration in 2 of 2" \
        in d.paragraphs[0]
    width = np.array([hi - lo for lo, hi in ranges.values()])
    assert np.isclose(premise["|penalty| last"].iloc[0], round(4.0 * np.linalg.norm(width), 4))
    snr = d.tables[1][1].set_index("term")
    assert (snr.loc["SNR penalty"].astype(float) > 1).all()  # a steadily growing term: consistent sign


def test_the_claim_table_compares_each_method_with_the_default_schedule_on_the_same_seeds():
    from diffhpo.tasks.schedule_diagnostics import claim_diagnostics, claim_table

    cells = pd.DataFrame({
        "profile": ["quick"] * 5, "primary": ["fid"] * 5,
        "method": ["default", "default", "bilevel", "bilevel", "random"], "seed": [0, 1, 0, 1, 2],
        "final_fid": [200.0, 100.0, 160.0, 110.0, 90.0], "cost_ratio": [1.0, 1.0, 2.4, 2.6, 2.5],
        "search_wall_s": [50.0, 50.0, 120.0, 130.0, 125.0], "spent": [1.0, 1.0, 2.5, 2.7, 3.0]})
    table = claim_table(cells)
    assert list(table.method) == ["bilevel"]  # random has no default cell on its seed
    row = table.iloc[0]
    assert row["per seed"] == "-20% / +10%" and row["better on"] == "1 of 2"
    assert row["fid vs default (median)"] == "-5%" and row["search time (trainings, median)"] == "2.50"
    assert row["spent (trainings, median)"] == "2.60"
    (diag,) = claim_diagnostics("mnist-schedule", cells)
    assert "claimed / measured here" in diag.title and "-30%" in diag.paragraphs[0]
    assert claim_diagnostics("mnist-schedule", cells[cells.method != "default"]) == []
