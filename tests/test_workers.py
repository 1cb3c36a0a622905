"""Several workers on one cell: exact budget, no duplicates, same result as one process;
interruptions (SIGINT, SIGKILL) at random points lose and recompute nothing."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from diffhpo.bench import storage as st
from diffhpo.bench.report import collect
from diffhpo.bench.runner import RunSpec, run_matrix

DIFFHPO = [sys.executable, "-m", "diffhpo"]


def completed(url, name):
    study = optuna.load_study(study_name=name, storage=st.open_storage(url))
    return [t for t in study.trials if t.state == TrialState.COMPLETE]


def trial_rows(db) -> int:
    """Number of trials in an Optuna SQLite file: 0 when absent, -1 while locked (being written)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return -1


def param_key(t):
    return tuple(sorted((k, round(v, 12)) for k, v in t.params.items()))


def deterministic_columns(cells):
    cols = [c for c in cells.columns if c.startswith(("param_", "final_")) and c != "final_wall_s"]
    return cells[["method", "seed", "n_trials", *cols]].sort_values(["method", "seed"]).reset_index(drop=True)


def test_sqlite_refuses_several_workers(tmp_path, capsys):
    from diffhpo.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--task", "quadratic", "--profile", "smoke", "--workers", "2", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "SQLite is single-process" in capsys.readouterr().err


def test_second_process_on_one_sqlite_file_is_refused(tmp_path):
    from diffhpo.bench.contracts.errors import DiffhpoError
    from diffhpo.bench.workers import sqlite_lock

    url = st.default_url(tmp_path)
    with sqlite_lock(url):
        probe = subprocess.run(
            [sys.executable, "-c", f"from diffhpo.bench.workers import sqlite_lock\nwith sqlite_lock({url!r}): pass"],
            capture_output=True, text=True,
        )
    assert probe.returncode != 0 and "SQLite is single-process" in probe.stderr
    with sqlite_lock(url):  # released: usable again
        pass
    assert DiffhpoError


def test_journal_workers_share_the_budget_and_match_one_process(tmp_path):
    methods = ["grid", "random", "bilevel"]
    common = dict(tasks=["quadratic"], methods=methods, seeds=[0], profile="smoke", progress=False,
                  task_options={"sleep_s": "0.05"})
    run_matrix(RunSpec(out=tmp_path / "one", **common), log=lambda s: None)
    url = f"journal://{tmp_path / 'many' / 'journal.log'}"
    run_matrix(RunSpec(out=tmp_path / "many", storage=url, workers=3, **common), log=lambda s: None)
    _, one = collect(st.open_storage(st.default_url(tmp_path / "one")))
    trials, many = collect(st.open_storage(url))
    assert (many.status == "done").all()
    assert (many.spent == 12).all()
    for method in methods:
        done = completed(url, f"quadratic.{method}.smoke.seed0")
        assert sum(t.user_attrs["cost"] for t in done) == 12
        assert len({param_key(t) for t in done}) == len(done), method  # nothing evaluated twice
    assert trials.worker.nunique() >= 3  # the work really was shared
    pd.testing.assert_frame_equal(deterministic_columns(one), deterministic_columns(many))


# -- PostgreSQL ------------------------------------------------------------------------------

def _pg_admin_url():
    url = os.environ.get("DIFFHPO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server: set DIFFHPO_TEST_POSTGRES_URL (.ci/postgres.sh starts one)")
    return url


@pytest.fixture
def pg_url():
    """A fresh database on the test server, dropped afterwards."""
    import psycopg

    admin = _pg_admin_url()
    try:
        conn = psycopg.connect(admin, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at DIFFHPO_TEST_POSTGRES_URL is not reachable: {exc}")
    name = f"diffhpo_{uuid.uuid4().hex[:10]}"
    conn.cursor().execute(f"CREATE DATABASE {name}")
    yield admin.rsplit("/", 1)[0] + "/" + name
    conn.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
    conn.close()


def create_cells(url, out, methods, budget, *options):
    """`diffhpo run --create-only`: the studies exist before any worker starts."""
    args = [*DIFFHPO, "run", "--task", "quadratic", "--method", ",".join(methods), "--profile", "quick",
            "--seeds", "1", "--storage", url, "--out", str(out), "--budget", str(budget), "--create-only"]
    for o in options:
        args += ["--option", o]
    subprocess.run(args, check=True, capture_output=True)


@pytest.mark.postgres
def test_four_postgres_workers_match_a_single_process(pg_url, tmp_path):
    """Acceptance: 4 workers, budget 40: exactly 40 trials, no duplicate grid point, same summary."""
    methods = ["grid", "random"]
    create_cells(pg_url, tmp_path / "pg", methods, 40)
    for method in methods:
        name = f"quadratic.{method}.quick.seed0"
        procs = [subprocess.Popen([*DIFFHPO, "worker", "--storage", pg_url, "--study", name, "--no-progress",
                                   "--heartbeat", "1"], stderr=subprocess.PIPE) for _ in range(4)]
        for p in procs:
            assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    run_matrix(RunSpec(tasks=["quadratic"], methods=methods, seeds=[0], profile="quick", budget=40,
                       out=tmp_path / "one", progress=False), log=lambda s: None)
    trials, many = collect(st.open_storage(pg_url))
    _, one = collect(st.open_storage(st.default_url(tmp_path / "one")))
    for method in methods:
        done = completed(pg_url, f"quadratic.{method}.quick.seed0")
        assert len(done) == 40, method
        assert len({param_key(t) for t in done}) == 40, method
    grid_ids = [t.system_attrs["grid_id"] for t in completed(pg_url, "quadratic.grid.quick.seed0")]
    assert len(set(grid_ids)) == 40
    assert trials[trials.state == "COMPLETE"].worker.nunique() >= 2
    pd.testing.assert_frame_equal(deterministic_columns(one), deterministic_columns(many))


@pytest.mark.postgres
def test_killed_worker_trial_fails_after_grace_and_is_retried(pg_url, tmp_path):
    name = "quadratic.random.quick.seed0"
    create_cells(pg_url, tmp_path, ["random"], 6, "sleep_s=1.5")
    worker = [*DIFFHPO, "worker", "--storage", pg_url, "--study", name, "--no-progress", "--heartbeat", "1"]
    victim = subprocess.Popen(worker, stderr=subprocess.DEVNULL)
    study = optuna.load_study(study_name=name, storage=pg_url)
    deadline = time.time() + 60
    while time.time() < deadline:
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                   if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
        if running:
            break
        time.sleep(0.1)
    assert running, "the worker never started a trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = running[0]
    helper = subprocess.run(worker, capture_output=True, text=True, timeout=300)
    assert helper.returncode == 0, helper.stderr[-2000:]
    trials = study.get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[0].state == TrialState.COMPLETE and retried[0].params == killed.params
    assert sum(t.user_attrs["cost"] for t in trials if t.state == TrialState.COMPLETE) == 6
    assert study.user_attrs["status"] == "done"


# -- interruption loop -------------------------------------------------------------------------

def test_run_survives_random_sigint_and_sigkill(tmp_path):
    """Acceptance: >= 10 interruptions at random points, then a clean rerun."""
    out = tmp_path / "out"
    cmd = [*DIFFHPO, "run", "--task", "quadratic", "--method", "grid,random,bilevel", "--profile", "smoke",
           "--out", str(out), "--option", "sleep_s=0.02", "--no-progress", "--seeds", "2"]
    rng = random.Random(0)
    url = st.default_url(out)
    seen: dict = {}
    for i in range(12):
        before = trial_rows(out / st.DEFAULT_DB)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Start-up (imports) takes 1 to 10 s depending on the machine: a blind delay from launch
        # can kill every run before its first trial. Wait for the run to start a trial, then
        # interrupt at a random point of the search that follows.
        deadline = time.time() + 120
        while p.poll() is None and trial_rows(out / st.DEFAULT_DB) == before and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        p.send_signal(signal.SIGINT if i % 2 == 0 else signal.SIGKILL)
        p.wait()
        if not (out / st.DEFAULT_DB).exists():
            continue
        for s in optuna.get_all_study_summaries(url):
            for t in completed(url, s.study_name):
                key = (s.study_name, t.number)
                record = (t.params, t.value, t.datetime_complete)
                assert seen.setdefault(key, record) == record  # never lost or changed
    assert sum(1 for _ in seen) > 0
    final = subprocess.run(cmd, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    for s in optuna.get_all_study_summaries(url):
        done = completed(url, s.study_name)
        for t in done:
            key = (s.study_name, t.number)
            if key in seen:
                assert seen[key] == (t.params, t.value, t.datetime_complete)
        assert s.user_attrs["status"] == "done"
        assert sum(t.user_attrs["cost"] for t in done) == 12
        if "bilevel" in s.study_name:
            slots = [tuple(t.system_attrs["bilevel:slot"]) for t in done]
            assert len(set(slots)) == len(slots)
        else:
            assert len({param_key(t) for t in done}) == len(done)
    con = sqlite3.connect(out / st.DEFAULT_DB)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_a_final_protocol_claim_silent_for_three_heartbeats_is_taken_over(tmp_path):
    """A claim of another machine's worker (no process here to look for) is held while its
    heartbeat is fresh or not yet written, taken over once silent for three intervals, and
    beaten while held; a storage without heartbeats (a journal file) keeps it."""
    from diffhpo.bench import workers

    def claims(storage):
        study = optuna.create_study(storage=storage, study_name="cell")
        minimize = [optuna.study.StudyDirection.MINIMIZE]

        def claim(beat):
            sid = storage.create_new_study(minimize, workers.claim_name(study))
            storage.set_study_user_attr(sid, workers.WORKER_KEY, "another-node:1")
            if beat is not None:
                storage.set_study_user_attr(sid, workers.CLAIM_HEARTBEAT, beat)
            return sid

        def mine():
            with workers.claim_final(study) as ours:
                return ours

        return study, claim, mine

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'hb.sqlite3'}", heartbeat_interval=5, grace_period=15)
    study, claim, mine = claims(storage)
    for beat in (time.time(), None):  # alive elsewhere; claimed, first beat not yet written
        sid = claim(beat)
        assert not mine()
        storage.delete_study(sid)
    claim(time.time() - 100)  # silent for 20 intervals (wide margins: a loaded machine passes too)
    with workers.claim_final(study) as ours:
        assert ours
        held = storage.get_study_id_from_name(workers.claim_name(study))
        deadline = time.time() + 10
        while workers.CLAIM_HEARTBEAT not in (attrs := storage.get_study_user_attrs(held)) and time.time() < deadline:
            time.sleep(0.05)  # the first beat comes from the beating thread, just started
        assert attrs[workers.WORKER_KEY] == workers.worker_id()
        assert time.time() - attrs[workers.CLAIM_HEARTBEAT] < 15  # the new owner beats at once
    with pytest.raises(KeyError):
        storage.get_study_id_from_name(workers.claim_name(study))  # released
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    _, claim, mine = claims(journal)
    claim(time.time() - 100)
    assert not mine()
