"""Matrix workers (`diffhpo worker` without --study): several processes share a whole matrix
stored in one journal file (or PostgreSQL, or behind the gRPC proxy), each cell searched to
its exact budget, its final protocol run once, the same configurations as one process."""

import os
import re
import subprocess
import sys

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from diffhpo.bench import storage as st
from diffhpo.bench.report import collect
from diffhpo.bench.runner import RunSpec, next_cell, run_matrix

sys.path.insert(0, os.path.dirname(__file__))  # --import-mode=importlib: the helpers of test_workers.py
from test_workers import completed, deterministic_columns, param_key, pg_url  # noqa: F401  (fixture)

DIFFHPO = [sys.executable, "-m", "diffhpo"]
METHODS = ["grid", "random", "bilevel"]
COMMON = dict(tasks=["quadratic"], methods=METHODS, seeds=[0, 1], profile="smoke", progress=False,
              task_options={"sleep_s": "0.05"})


def create(url, out):
    run_matrix(RunSpec(out=out, storage=url, create_only=True, **COMMON), log=lambda s: None)


def start_workers(url, n, *extra):
    return [subprocess.Popen([*DIFFHPO, "worker", "--storage", url, "--no-progress", *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(n)]


def wait_all(procs, timeout=600):
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-2000:]
        errs.append(err)
    return errs


def check_matrix(url, one_out, errs):
    """Every cell done at budget 12, nothing evaluated twice, one final protocol per cell,
    and the same configurations and final results as the one-process run in ``one_out``."""
    trials, many = collect(st.open_storage(url))
    assert len(many) == 6 and (many.status == "done").all()
    assert (many.spent == 12).all()
    for name in [f"quadratic.{m}.smoke.seed{s}" for m in METHODS for s in (0, 1)]:
        done = completed(url, name)
        assert sum(t.user_attrs["cost"] for t in done) == 12, name
        if "bilevel" in name:
            slots = [tuple(t.system_attrs["bilevel:slot"]) for t in done]
            assert len(set(slots)) == len(slots), name
        else:
            assert len({param_key(t) for t in done}) == len(done), name
    lines = [line for err in errs for line in err.splitlines()]
    finals = [m.group(1) for m in map(re.compile(r"^(\S+): done \(\d+ trials").match, lines) if m]
    assert sorted(finals) == sorted(set(finals)) and len(finals) == 6, lines  # one final protocol per cell
    assert trials[trials.state == "COMPLETE"].worker.nunique() >= 2  # the work really was shared
    _, one = collect(st.open_storage(st.default_url(one_out)))
    pd.testing.assert_frame_equal(deterministic_columns(one), deterministic_columns(many))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    run_matrix(RunSpec(out=out, **COMMON), log=lambda s: None)
    return out


def test_journal_matrix_workers_finish_every_cell_like_one_process(tmp_path, one_process):
    url = f"journal://{tmp_path / 'journal.log'}"
    create(url, tmp_path)
    errs = wait_all(start_workers(url, 3))
    check_matrix(url, one_process, errs)
    assert all("no unfinished cell left" in e for e in errs)
    again = subprocess.run([*DIFFHPO, "worker", "--storage", url, "--no-progress"], capture_output=True, text=True)
    assert again.returncode == 0 and "0 cell(s) served" in again.stderr  # nothing left: exits at once


def test_filters_keep_a_worker_to_its_cells(tmp_path):
    url = f"journal://{tmp_path / 'journal.log'}"
    create(url, tmp_path)
    wait_all(start_workers(url, 1, "--method", "random", "--task", "quadratic", "--profile", "smoke"))
    storage = st.open_storage(url)
    status = {s.study_name: s.user_attrs.get("status") for s in st.cell_studies(storage)}
    assert {n for n, v in status.items() if v == "done"} == {"quadratic.random.smoke.seed0",
                                                             "quadratic.random.smoke.seed1"}
    assert st.cell_studies(storage, methods=["grid"], tasks=["quadratic"]) and not st.cell_studies(
        storage, profiles=["quick"])


def test_assignment_order_sequential_first_then_most_remaining(tmp_path):
    url = f"journal://{tmp_path / 'journal.log'}"
    create(url, tmp_path)
    storage = st.open_storage(url)
    name, left = next_cell(storage)
    assert (name, left) == ("quadratic.bilevel.smoke.seed0", 6)  # sequential first, then by name
    name, left = next_cell(storage, {"quadratic.bilevel.smoke.seed0", "quadratic.bilevel.smoke.seed1"})
    assert left == 4 and name == "quadratic.grid.smoke.seed0"
    # spend part of grid seed0's budget: the random cells now have the most remaining cost
    study = optuna.load_study(study_name="quadratic.grid.smoke.seed0", storage=storage)
    study.add_trial(optuna.create_trial(params={}, distributions={}, value=1.0, user_attrs={"cost": 5.0}))
    name, _ = next_cell(storage, {"quadratic.bilevel.smoke.seed0", "quadratic.bilevel.smoke.seed1"})
    assert name == "quadratic.grid.smoke.seed1"
    # a sequential cell with a running trial is full for others
    bl = optuna.load_study(study_name="quadratic.bilevel.smoke.seed0", storage=storage)
    bl.ask()
    assert next_cell(storage)[0] == "quadratic.bilevel.smoke.seed1"
    assert TrialState


@pytest.mark.parametrize("args, needle", [
    (["--study", "quadratic.random.smoke.seed0", "--task", "quadratic"], "not both"),
    (["--method", "nosuch"], "unknown method 'nosuch'"),
    (["--profile", "quick"], "holds no diffhpo cells matching --profile quick"),
])
def test_matrix_worker_bad_input(tmp_path, args, needle):
    url = f"journal://{tmp_path / 'journal.log'}"
    create(url, tmp_path)
    before = (tmp_path / "journal.log").read_bytes()
    p = subprocess.run([*DIFFHPO, "worker", "--storage", url, *args], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], p.stderr
    assert (tmp_path / "journal.log").read_bytes() == before


@pytest.mark.postgres
def test_postgres_matrix_workers_finish_every_cell_like_one_process(pg_url, tmp_path, one_process):  # noqa: F811
    create(pg_url, tmp_path)
    errs = wait_all(start_workers(pg_url, 4, "--heartbeat", "1"))
    check_matrix(pg_url, one_process, errs)


def test_final_protocol_sees_the_trials_other_workers_added(tmp_path):
    """A worker that joined a bilevel cell and waited (its sampler's ``ready`` filled the
    study's cache of trials) while another process ran the whole search must choose the last
    iterate of the stored trajectory, not of the trials it saw when it joined."""
    from diffhpo.bench.runner import finish_cell, prepare_cell
    from diffhpo.bench.contracts.registry import TASKS
    from diffhpo.bench.search import ledger, search
    from diffhpo.methods import METHODS

    url = f"journal://{tmp_path / 'journal.log'}"
    storage = st.open_storage(url)
    task = TASKS.get("quadratic")("smoke")
    waiter = prepare_cell(storage, task, "bilevel", METHODS.get("bilevel"), 0)
    assert waiter.sampler.ready(waiter.study)  # fills the waiter's cache: no trial yet
    other = prepare_cell(st.open_storage(url), task, "bilevel", METHODS.get("bilevel"), 0)
    search(other, exclusive=False, progress=False)  # the whole budget, by the other process
    led = search(waiter, exclusive=False, progress=False)  # over at once
    assert finish_cell(waiter, led).status == "done"
    expected = other.sampler.current_params(optuna.load_study(study_name=other.study.study_name,
                                                              storage=st.open_storage(url)))
    assert waiter.study.user_attrs["final_params"] == pytest.approx(expected)
    assert expected != pytest.approx({k: 1.0 for k in expected})  # the trajectory moved from its start
    assert ledger(waiter.study.get_trials()).spent == 12


def test_waiting_workers_retry_a_cut_off_last_trial(tmp_path):
    """The cell's last slot is held by a trial whose process is gone: no room, no worker on it.
    A matrix worker must fail and retry that trial (it waits for full cells, sweeping them)
    instead of waiting for it forever."""
    from diffhpo.bench import workers

    url = f"journal://{tmp_path / 'journal.log'}"
    run_matrix(RunSpec(out=tmp_path, storage=url, create_only=True, budget=1, tasks=["quadratic"], methods=["random"],
                       seeds=[0], profile="smoke", progress=False), log=lambda s: None)
    study = optuna.load_study(study_name="quadratic.random.smoke.seed0", storage=st.open_storage(url))
    gone = subprocess.Popen(["true"])
    gone.wait()
    trial = study.ask()
    study._storage.set_trial_user_attr(trial._trial_id, workers.WORKER_KEY, f"{workers.HOST}:{gone.pid}")
    assert next_cell(st.open_storage(url)) == (None, 1)  # full: its one slot is taken
    p = subprocess.run([*DIFFHPO, "worker", "--storage", url, "--no-progress"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    trials = optuna.load_study(study_name=study.study_name, storage=st.open_storage(url)).trials
    assert trials[0].state == TrialState.FAIL and "process is gone" in trials[0].user_attrs["fail_reason"]
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == 0


def test_a_matrix_worker_leaves_a_full_cell_for_one_with_room(tmp_path):
    """A cell whose budget is taken by another worker's running trial has no room: the matrix
    worker serves the next cell meanwhile instead of waiting in it, and comes back to run
    the final protocol once that trial has ended. Waiting in it, the worker would finish
    nothing while the foreign trial runs."""
    import threading
    import time

    from diffhpo.bench import workers
    from diffhpo.bench.runner import join_matrix

    url = f"journal://{tmp_path / 'journal.log'}"
    run_matrix(RunSpec(out=tmp_path, storage=url, create_only=True, budget=3, tasks=["quadratic"], methods=["random"],
                       seeds=[0, 1], profile="smoke", progress=False), log=lambda s: None)
    storage = st.open_storage(url)
    s0 = optuna.load_study(study_name="quadratic.random.smoke.seed0", storage=storage)
    s1 = optuna.load_study(study_name="quadratic.random.smoke.seed1", storage=storage)
    foreign = s0.ask()  # another worker's trial, alive (this process), holding one of seed0's 3 slots
    storage.set_trial_user_attr(foreign._trial_id, workers.WORKER_KEY, workers.worker_id())
    s1.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={"cost": 1.0, "fail_reason": "ValueError: x"}))
    assert next_cell(storage)[0] == "quadratic.random.smoke.seed0"  # both have 2 left: seed0 by name
    log: list[str] = []
    worker = threading.Thread(target=lambda: log.extend(o.study_name + ": " + o.status for o in join_matrix(
        url, progress=False, log=lambda line: None)), daemon=True)
    worker.start()
    status = lambda name: st.open_storage(url).get_study_user_attrs(  # noqa: E731
        st.open_storage(url).get_study_id_from_name(name)).get("status")
    deadline = time.monotonic() + 120
    while status("quadratic.random.smoke.seed1") != "done" and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.2)
    assert status("quadratic.random.smoke.seed1") == "done"  # served while seed0's last slot was held
    assert status("quadratic.random.smoke.seed0") != "done" and worker.is_alive()
    assert len(completed(url, "quadratic.random.smoke.seed0")) == 2  # its two free slots, then it left
    storage.set_trial_user_attr(foreign._trial_id, "cost", 1.0)
    storage.set_trial_user_attr(foreign._trial_id, "fail_reason", "ValueError: x")
    s0.tell(foreign, state=TrialState.FAIL)  # the foreign trial ends (counted): seed0's search is over
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert log == ["quadratic.random.smoke.seed1: done", "quadratic.random.smoke.seed0: done"]
    assert len(completed(url, "quadratic.random.smoke.seed0")) == 2
    assert status("quadratic.random.smoke.seed0") == "done"


# -- launchers (submitit) ------------------------------------------------------------------------

def test_local_launcher_runs_the_matrix_like_one_process(tmp_path, one_process):
    pytest.importorskip("submitit", reason="--launcher needs submitit (a dependency: pip install -e .)")
    url = f"journal://{tmp_path / 'journal.log'}"
    args = [*DIFFHPO, "run", "--task", "quadratic", "--method", ",".join(METHODS), "--profile", "smoke", "--seeds", "2",
            "--option", "sleep_s=0.05", "--storage", url, "--out", str(tmp_path), "--launcher", "local",
            "--workers", "3", "--no-progress"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "3 matrix worker job(s) submitted" in p.stderr and (tmp_path / "summary.csv").exists()
    logs = [f.read_text() for f in (tmp_path / "launch").glob("*_log.out")]
    assert len(logs) == 3
    check_matrix(url, one_process, logs)


@pytest.mark.parametrize("args, needle", [
    (["--launcher", "local", "--workers", "2"], "SQLite serves one process"),
    (["--launcher", "slurm", "--storage", "journal:///{tmp}/j.log"], "sbatch"),
    (["--slurm-partition", "gpu"], "need --launcher"),
    (["--launcher", "local", "--storage", "journal:///{tmp}/j.log", "--create-only"], "not with --create-only"),
])
def test_launcher_bad_input(tmp_path, args, needle):
    if "slurm" in args:
        import shutil

        if shutil.which("sbatch"):
            pytest.skip("sbatch is installed here: the missing-sbatch refusal cannot be shown")
        pytest.importorskip("submitit", reason="--launcher needs submitit")
    out = tmp_path / "out"
    cmd = [*DIFFHPO, "run", "--task", "quadratic", "--profile", "smoke", "--out", str(out),
           *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], p.stderr
    assert not out.exists() and not (tmp_path / "j.log").exists()
