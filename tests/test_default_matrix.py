"""The default matrix (issue 23): `diffhpo run` with no --task applies each task's
``default_matrix`` entry for the profile (smaller cells, no pruners) and says so; `-t NAME`
runs the task's full cells; the user's --option and --budget win over the entry."""

from __future__ import annotations

import optuna
import pytest

from diffhpo.bench import storage as st
from diffhpo.bench.contracts import DefaultMatrix
from diffhpo.bench.runner import RunSpec, build_tasks, run_matrix
from diffhpo.cli import main
from toys import CurvesTask, registered

ENTRY = {"smoke": DefaultMatrix(options={"budget": 2.0}, pruners=False, why="a test's reason")}


def _stored(out):
    storage = optuna.storages.RDBStorage(st.default_url(out))
    return {s.study_name: s.user_attrs for s in optuna.get_all_study_summaries(storage)}


@pytest.fixture
def curves(monkeypatch):
    """The toy fidelity task, registered with a default-matrix entry for the smoke profile."""
    monkeypatch.setattr(CurvesTask, "default_matrix", ENTRY)
    with registered(CurvesTask):
        yield CurvesTask


def _main(args, capsys):
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().err


def test_the_default_matrix_runs_smaller_cells_without_pruners(tmp_path, curves):
    lines = []
    spec = RunSpec(tasks=["curves"], methods=["random", "median"], seeds=[0, 1], profile="smoke",
                   out=tmp_path, progress=False, default_matrix=True)
    outcomes = run_matrix(spec, log=lines.append)
    assert [o.study_name for o in outcomes] == ["curves.random.smoke.seed0", "curves.random.smoke.seed1"]
    assert all(0 < o.spent <= 2.0 for o in outcomes), outcomes  # the entry's budget, not the profile's 6
    assert "curves.median: skipped (a pruning method, left out of this task's cells in the default matrix)" in lines
    said = [line for line in lines if line.startswith("default matrix: curves")]
    assert said == ["default matrix: curves runs with budget=2.0; no pruning methods (a test's reason; "
                    "`diffhpo run -t curves` runs the full cells)"], lines


def test_named_tasks_run_their_full_cells(tmp_path, curves):
    spec = RunSpec(tasks=["curves"], methods=["random", "median"], seeds=[0], profile="smoke",
                   out=tmp_path, progress=False)
    lines = []
    outcomes = run_matrix(spec, log=lines.append)
    assert sorted(o.study_name for o in outcomes) == ["curves.median.smoke.seed0", "curves.random.smoke.seed0"]
    assert max(o.spent for o in outcomes) > 2.0 and not any(line.startswith("default matrix") for line in lines)


@pytest.mark.parametrize("given,budget,expected", [
    ({"budget": "3"}, None, 3.0),   # --option budget wins over the entry's
    ({}, 5.0, None),                # --budget sets the cells' budget; the task keeps its profile's
    ({}, None, 2.0),
])
def test_the_users_settings_win(given, budget, expected, tmp_path, curves):
    spec = RunSpec(tasks=["curves"], methods=["random"], seeds=[0], profile="smoke", out=tmp_path,
                   task_options=given, budget=budget, default_matrix=True)
    task = build_tasks(spec)["curves"]
    expected = CurvesTask.profiles["smoke"].budget if expected is None else expected
    assert task.budget == expected and task.given_options == frozenset(given)  # the entry's are not "given"


def test_diffhpo_run_is_the_default_matrix_and_holds_the_surrogates(tmp_path, curves, capsys):
    err = _main(["run", "-p", "smoke", "-m", "random,median", "--create-only", "--no-progress",
                 "--out", str(tmp_path / "all")], capsys)
    named = _main(["run", "-p", "smoke", "-t", "curves", "-m", "random,median", "--create-only",
                   "--no-progress", "--out", str(tmp_path / "named")], capsys)
    assert "default matrix: curves runs with budget=2.0; no pruning methods" in err
    assert "curves.median: skipped (a pruning method, left out" in err
    cells = _stored(tmp_path / "all")
    assert cells["curves.random.smoke.seed0"]["config"]["budget"] == 2.0 and "curves.median.smoke.seed0" not in cells
    for name in ("mnist-schedule-surrogate", "gmm-schedule-surrogate", "reward-mnist-surrogate",
                 "reward-mnist-bold-surrogate"):  # shipped complete
        assert f"{name}.random.smoke.seed19" in cells and f"{name}.random.smoke.seed20" not in cells
    assert "default matrix" not in named
    assert _stored(tmp_path / "named")["curves.random.smoke.seed0"]["config"]["budget"] == CurvesTask.profiles["smoke"].budget
