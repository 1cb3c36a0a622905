"""`diffhpo storage-proxy` (Optuna's gRPC proxy) and workers on `--storage grpc://HOST:PORT`:
matrix workers through the proxy spend every budget exactly, lose no trial, and a killed
worker's trial is retried."""

import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from diffhpo.bench import storage as st

pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio (pip install -e '.[grpc]')")

DIFFHPO = [sys.executable, "-m", "diffhpo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error_line(p):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    return lines[0]


@pytest.mark.parametrize("cmd", [
    ["worker", "--no-progress"],
    ["run", "--task", "quadratic", "--method", "random", "--profile", "smoke", "--seeds", "1", "--no-progress"],
])
def test_grpc_url_without_a_proxy_is_refused_before_any_work(tmp_path, cmd):
    url = f"grpc://127.0.0.1:{free_port()}"
    p = subprocess.run([*DIFFHPO, *cmd, "--storage", url, *(["--out", str(tmp_path / "out")] if cmd[0] == "run" else [])],
                       capture_output=True, text=True, timeout=120)
    assert "no storage proxy answers at" in one_error_line(p)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url, needle", [
    ("grpc://127.0.0.1", "not a gRPC proxy address"),
    ("grpc://127.0.0.1:99999", "not a gRPC proxy address"),
    ("grpc://127.0.0.1:5000/db", "not a gRPC proxy address"),
])
def test_bad_grpc_urls(url, needle):
    p = subprocess.run([*DIFFHPO, "worker", "--storage", url], capture_output=True, text=True, timeout=120)
    assert needle in one_error_line(p)


def test_proxy_refuses_a_journal_and_a_taken_port(tmp_path):
    p = subprocess.run([*DIFFHPO, "storage-proxy", "--storage", f"journal://{tmp_path / 'j.log'}", "--port", "5000"],
                       capture_output=True, text=True, timeout=120)
    assert "does not support journal files" in one_error_line(p)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run([*DIFFHPO, "storage-proxy", "--storage", f"sqlite:///{tmp_path / 'db.sqlite3'}",
                            "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert "cannot listen on" in one_error_line(p)


@pytest.fixture
def backend(request, tmp_path):
    """The proxy's database: CI's PostgreSQL where DIFFHPO_TEST_POSTGRES_URL is set (a fresh
    database), else a SQLite file, which the proxy alone then opens."""
    if not os.environ.get("DIFFHPO_TEST_POSTGRES_URL"):
        yield f"sqlite:///{tmp_path / 'proxied.sqlite3'}"
        return
    yield request.getfixturevalue("pg_url")


sys.path.insert(0, os.path.dirname(__file__))  # --import-mode=importlib: the helpers of test_workers.py
from test_workers import completed, param_key, pg_url  # noqa: E402,F401  (fixture)


@pytest.fixture
def proxy(backend):
    port = free_port()
    p = subprocess.Popen([*DIFFHPO, "storage-proxy", "--storage", backend, "--port", str(port)],
                         stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    assert "storage-proxy: serving" in line, line + p.stderr.read()
    yield f"grpc://127.0.0.1:{port}"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 0
    assert "storage-proxy: stopped" in p.stderr.read()


def test_matrix_workers_through_the_proxy_exact_budget_and_a_killed_trial_retried(proxy, tmp_path):
    methods = ["grid", "random", "bilevel"]
    create = subprocess.run([*DIFFHPO, "run", "--task", "quadratic", "--method", ",".join(methods), "--profile",
                             "smoke", "--seeds", "1", "--storage", proxy, "--out", str(tmp_path), "--option",
                             "sleep_s=0.5", "--create-only"], capture_output=True, text=True, timeout=300)
    assert create.returncode == 0, create.stderr[-2000:]
    storage = st.open_storage(proxy)
    victim = subprocess.Popen([*DIFFHPO, "worker", "--storage", proxy, "--no-progress", "--method", "random"],
                              stderr=subprocess.DEVNULL)
    random_cell = optuna.load_study(study_name="quadratic.random.smoke.seed0", storage=storage)
    running, deadline = [], time.time() + 120
    while not running and time.time() < deadline:
        running = [t for t in random_cell.get_trials(states=(TrialState.RUNNING,))
                   if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
        time.sleep(0.1)
    assert running, "the worker never started a trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = running[0]
    procs = [subprocess.Popen([*DIFFHPO, "worker", "--storage", proxy, "--no-progress"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    trials = random_cell.get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[0].state == TrialState.COMPLETE and retried[0].params == killed.params
    for summary in st.cell_studies(storage):
        assert summary.user_attrs["status"] == "done", summary.study_name
        done = completed(proxy, summary.study_name)
        assert sum(t.user_attrs["cost"] for t in done) == 12, summary.study_name  # exact budget
        if "bilevel" not in summary.study_name:
            assert len({param_key(t) for t in done}) == len(done)  # nothing evaluated twice
        lost = [t for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials
                if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        assert not lost, summary.study_name
    storage.close()


def test_a_trial_cut_off_on_another_machine_is_failed_by_its_heartbeat_and_retried(proxy, tmp_path, monkeypatch):
    """Optuna's proxy has no heartbeat call; diffhpo's client keeps one as a trial system
    attribute (workers.HeartbeatProxy). A worker killed on another node leaves no process
    to look for: this test process plays a worker of another host (workers.HOST patched),
    for which the killed worker's trial is not an orphan, and only the heartbeat, silent
    for three intervals, fails it and enqueues its configuration again."""
    from diffhpo.bench import workers

    name = "quadratic.random.smoke.seed0"
    create = subprocess.run([*DIFFHPO, "run", "--task", "quadratic", "--method", "random", "--profile", "smoke",
                             "--seeds", "1", "--storage", proxy, "--out", str(tmp_path), "--option", "sleep_s=1",
                             "--create-only"], capture_output=True, text=True, timeout=300)
    assert create.returncode == 0, create.stderr[-2000:]
    worker = [*DIFFHPO, "worker", "--storage", proxy, "--no-progress", "--method", "random", "--heartbeat", "2"]
    victim = subprocess.Popen(worker, stderr=subprocess.DEVNULL)
    storage = st.open_storage(proxy, heartbeat=2)  # stale after 6 s
    assert optuna.storages._heartbeat.is_heartbeat_enabled(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    running, deadline = [], time.time() + 120
    while not running and time.time() < deadline:
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                   if t.user_attrs.get("worker", "").endswith(f":{victim.pid}") and workers.HEARTBEAT_KEY in t.system_attrs]
        time.sleep(0.05)
    assert running, "the worker never started a trial with a heartbeat"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = running[0]
    monkeypatch.setattr(workers, "HOST", "another-node")
    workers.fail_orphans(study, exclusive=False)  # the process check sees only its own host's workers
    optuna.storages.fail_stale_trials(study)  # the last heartbeat is about 2 s old or less
    assert study._storage.get_trial(killed._trial_id).state == TrialState.RUNNING
    deadline = time.time() + 30
    while study._storage.get_trial(killed._trial_id).state == TrialState.RUNNING and time.time() < deadline:
        time.sleep(0.5)
        optuna.storages.fail_stale_trials(study)
    assert study._storage.get_trial(killed._trial_id).state == TrialState.FAIL
    (copy,) = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == killed.number]
    assert copy.state == TrialState.WAITING and copy.params == killed.params
    assert workers.HEARTBEAT_KEY not in copy.system_attrs  # else stale the moment a worker takes it
    monkeypatch.undo()
    finisher = subprocess.run(worker, capture_output=True, text=True, timeout=300)
    assert finisher.returncode == 0, finisher.stderr[-2000:]
    trials = study.get_trials()
    assert trials[copy.number].state == TrialState.COMPLETE and trials[copy.number].params == killed.params
    assert sum(t.user_attrs["cost"] for t in trials if t.state == TrialState.COMPLETE) == 12  # exact budget
    assert study.user_attrs["status"] == "done"
    storage.close()
