"""Setup errors stop a run before it spends budget, failures make the exit code non-zero,
and storages are never lost, mislabelled or created by a report (issue 13, parts 2 and 4)."""

import os
import re
import resource
import signal
import subprocess
import sys
import textwrap

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from diffhpo.bench import storage as st
from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.bench.runner import RunSpec, run_matrix
from diffhpo.cli import main
from toys import ToyTask, registered, smoke

pytestmark = pytest.mark.usefixtures("session_cache")


class _Toy(ToyTask):
    """The shared toy task with a budget of 4; subclasses break one piece."""

    profiles = smoke(4)


class _NotReady(_Toy):
    name = "not-ready"

    def check_ready(self):
        raise DiffhpoError("task 'not-ready': weights missing; put them in /somewhere")

    def evaluate(self, params, seed, *, final=False):
        raise AssertionError("no trial may run when the task is not ready")


class _AlwaysFails(_Toy):
    name = "always-fails"

    def evaluate(self, params, seed, *, final=False):
        raise ValueError("solver diverged")


class _FinalFails(_Toy):
    name = "final-fails"

    def evaluate(self, params, seed, *, final=False):
        if final:
            raise RuntimeError("out of memory")
        return {"loss": params["x"] ** 2}


@pytest.fixture
def toys():
    with registered(_Toy), registered(_NotReady), registered(_AlwaysFails), registered(_FinalFails):
        yield


def _call(args, capsys):
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_a_setup_error_stops_the_run_before_any_cell(toys, tmp_path, capsys):
    code, err = _call(["run", "-t", "toy,not-ready", "-m", "random", "-p", "smoke", "--out", str(tmp_path)], capsys)
    assert code == 2 and err.strip() == "error: task 'not-ready': weights missing; put them in /somewhere"
    assert not (tmp_path / st.DEFAULT_DB).exists()  # not even the other task's cells were started


def test_cells_without_a_completed_trial_or_final_make_the_run_fail(toys, tmp_path, capsys):
    code, err = _call(["run", "-t", "toy,always-fails,final-fails", "-m", "random", "-p", "smoke",
                       "--out", str(tmp_path), "--no-progress"], capsys)
    assert code == 1, err
    assert "always-fails.random.smoke.seed0: failed: no trial completed" in err
    assert "final-fails.random.smoke.seed0: failed: final protocol: RuntimeError: out of memory" in err
    assert "toy.random.smoke.seed0: done" in err  # the matrix went on
    assert "failed trials by reason: 4 x ValueError: solver diverged" in err
    assert err.strip().splitlines()[-1].startswith("error: 2 of 3 cell(s) failed")
    cells = pd.read_csv(tmp_path / "cells.csv").set_index("task")
    assert cells.loc["toy", "status"] == "done" and cells.loc["final-fails", "status"].startswith("failed")


def test_retried_trials_show_their_own_state_and_reason(tmp_path):
    from diffhpo.bench import workers
    from diffhpo.bench.report import collect

    run_matrix(RunSpec(tasks=["quadratic"], methods=["random"], seeds=[0], profile="smoke", out=tmp_path,
                       progress=False, budget=3), log=lambda s: None)
    url = st.default_url(tmp_path)
    study = optuna.load_study(study_name="quadratic.random.smoke.seed0", storage=url)
    running = study.ask({n: d for n, d in study.trials[0].distributions.items()})
    study._storage.set_trial_system_attr(running._trial_id, workers.ASKED, True)  # cut off after its ask, as the runner marks it
    workers.fail_and_retry(study, study._storage.get_trial(running._trial_id), "interrupted: SIGTERM")
    run_matrix(RunSpec(tasks=["quadratic"], methods=["random"], seeds=[0], profile="smoke", out=tmp_path,
                       progress=False, budget=4), log=lambda s: None)
    trials, _ = collect(st.open_storage(url))
    cut = trials[trials.number == running.number].iloc[0]
    retry = trials[trials.retry_of == running.number].iloc[0]
    assert (cut.state, cut.fail_reason, bool(cut.counted)) == ("FAIL", "interrupted: SIGTERM", False)
    assert (retry.state, retry.fail_reason, bool(retry.counted)) == ("COMPLETE", "", True)
    assert {k: retry[k] for k in trials if k.startswith("param_")} == {k: cut[k] for k in trials if k.startswith("param_")}


def test_report_never_creates_a_storage_nor_empties_existing_outputs(tmp_path, capsys):
    run_matrix(RunSpec(tasks=["quadratic"], methods=["random"], seeds=[0], profile="smoke", out=tmp_path,
                       progress=False), log=lambda s: None)
    assert _call(["report", "--out", str(tmp_path)], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.csv")}
    empty = tmp_path / "empty.sqlite3"
    optuna.create_study(storage=f"sqlite:///{empty}", study_name="not-a-cell")  # an Optuna storage, no cells
    for url in (f"sqlite:///{tmp_path / 'new.db'}", f"sqlite:///{empty}"):
        code, err = _call(["report", "--out", str(tmp_path), "--storage", url], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "new.db").exists()
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.csv")} == before


def test_a_corrupted_sqlite_file_is_one_line(tmp_path, capsys):
    (tmp_path / st.DEFAULT_DB).write_bytes(b"this is not a database" * 100)
    for args in (["run", "-t", "quadratic", "-m", "random", "-p", "smoke", "--out", str(tmp_path)],
                 ["report", "--out", str(tmp_path)]):
        code, err = _call(args, capsys)
        assert code == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("error: cannot open storage") and "not a database" in err


def _run_quadratic(out, *extra, limit=None):
    def small_disk():  # the process may write at most `limit` bytes per file: a full disk, in effect
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "diffhpo", "run", "-t", "quadratic", "-m", "random", "-p", "smoke",
         "--seeds", "3", "--out", str(out), "--no-progress", "--no-report", *extra],
        capture_output=True, text=True, preexec_fn=small_disk if limit else None, timeout=600,
    )


def test_a_full_disk_is_one_line_and_the_rerun_resumes(tmp_path):
    first = _run_quadratic(tmp_path, limit=1_500_000)
    assert first.returncode == 2, first.stderr
    assert "Traceback" not in first.stderr
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: storage {st.default_url(tmp_path)!r} failed:") and "rerun" in last, last
    kept = sum(t.state == TrialState.COMPLETE for s in st.cell_studies(st.open_storage(st.default_url(tmp_path)))
               for t in optuna.load_study(study_name=s.study_name, storage=st.default_url(tmp_path)).trials)
    assert kept > 0  # what was committed before the disk filled is still there
    again = _run_quadratic(tmp_path)
    assert again.returncode == 0, again.stderr
    cells = [s.user_attrs.get("status") for s in st.cell_studies(st.open_storage(st.default_url(tmp_path)))]
    assert cells == ["done"] * 3


BROKEN = "raise ImportError('this plug-in is broken')\n"


def test_a_broken_plugin_is_one_warning_and_everything_else_works(tmp_path):
    (tmp_path / "broken_plugin.py").write_text(BROKEN)
    info = tmp_path / "diffhpo_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: diffhpo-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [diffhpo.methods]
        broken = broken_plugin:METHOD
        [diffhpo.tasks]
        broken-task = broken_plugin:TASK
        """))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    listed = subprocess.run([sys.executable, "-m", "diffhpo", "list"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "quadratic" in listed.stdout and "random" in listed.stdout
    warnings = [line for line in listed.stderr.splitlines() if line.strip()]
    assert len(warnings) == 2 and all(w.startswith("warning: ") and "'diffhpo-broken'" in w for w in warnings)
    ran = subprocess.run([sys.executable, "-m", "diffhpo", "run", "-t", "quadratic", "-m", "random", "-p", "smoke", "--seeds", "1",
                          "--out", str(tmp_path / "o"), "--no-progress", "--no-report"],
                         env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr


def test_two_runs_on_one_journal_run_each_final_protocol_once(tmp_path):
    url = f"journal://{tmp_path / 'j.log'}"
    cmd = [sys.executable, "-m", "diffhpo", "run", "-t", "quadratic", "-m", "random,grid", "-p", "smoke", "--seeds", "1",
           "--option", "sleep_s=0.1", "--storage", url, "--out", str(tmp_path), "--no-progress", "--no-report"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    for cell in ("quadratic.random.smoke.seed0", "quadratic.grid.smoke.seed0"):
        finals = sum(re.search(rf"{re.escape(cell)}: done \(\d", e) is not None for e in errs)
        assert finals == 1, errs  # the other process searched, then left the final protocol to it
    storage = st.open_storage(url)
    for s in st.cell_studies(storage):
        trials = storage.get_all_trials(s._study_id)
        assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
        assert sum(t.user_attrs.get("cost", 0) for t in trials if t.state == TrialState.COMPLETE) == 12
        assert s.user_attrs["status"] == "done"
    assert not [s for s in storage.get_all_studies() if s.study_name.endswith(":final-protocol")]
