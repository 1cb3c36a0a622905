"""An interrupted and resumed run evaluates exactly the configurations of an uninterrupted one
(issue 13, part 1): runs of `quadratic` are killed with SIGKILL, SIGINT and SIGTERM at random
moments, rerun, and compared trial by trial with a run that was never interrupted. Issue 24,
part 1: kills that land on purpose in given windows (inside `study.ask` between two suggests,
after a tell, in the final protocol, while the report is written), through the test-only
pause of `diffhpo.bench.hooks`, for built-in methods (pruning ones included) and for external
methods registered plainly as the README shows (QMCSampler, CmaEsSampler)."""

import importlib.util
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from diffhpo import cli
from diffhpo.bench import hooks
from diffhpo.bench import storage as st
from diffhpo.bench.report import write_report
from diffhpo.bench.contracts.registry import TASKS
from diffhpo.bench.runner import RunSpec, run_matrix
from diffhpo.methods import METHODS as METHOD_REGISTRY
from diffhpo.bench.contracts.method import Method, best_params
from diffhpo.bench.contracts.task import Metric, Task

METHODS = ["grid", "random", "tpe", "bilevel"]
# 0.2 s per solve: a kill lands inside a trial most of the time, between trials otherwise, and nine
# interruptions (each 0 to 0.6 s into a process's search) leave most of the run to do
CMD = ["run", "--task", "quadratic", "--method", ",".join(METHODS), "--profile", "smoke",
       "--option", "sleep_s=0.2", "--seeds", "3", "--no-progress", "--no-report"]
INTERRUPTED_LINE = "interrupted: rerun the same command to resume"


def _start(out):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "diffhpo", *CMD, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _n_trials(db) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("select count(*) from trials").fetchone()[0]
    except sqlite3.Error:
        return 0


def _completed(out) -> dict:
    storage = st.open_storage(st.default_url(out))
    cells = {}
    for s in st.cell_studies(storage):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], s.study_name
        done = sorted((tuple(sorted(t.params.items())), t.value) for t in trials if t.state == TrialState.COMPLETE)
        cells[s.study_name] = (done, s.user_attrs.get("status"), s.user_attrs.get("final_params"))
    return cells


@pytest.mark.slow
def test_killed_and_resumed_runs_evaluate_the_same_configurations(tmp_path):
    ref = tmp_path / "ref"
    proc = _start(ref)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    expected = _completed(ref)
    assert len(expected) == 3 * len(METHODS) and all(status == "done" for _, status, _ in expected.values())

    out, db = tmp_path / "killed", tmp_path / "killed" / st.DEFAULT_DB
    rng = random.Random(13)
    kills = [signal.SIGKILL, signal.SIGINT, signal.SIGTERM] * 3  # 9 interruptions
    delivered = []
    for sig in kills:
        proc = _start(out)
        start = _n_trials(db)
        deadline = time.monotonic() + 120
        while _n_trials(db) <= start and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # wait until this process has started a trial: the kill then lands in the search
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:  # it finished before the kill: it must have finished the run
            _, err = proc.communicate()
            assert proc.returncode == 0, f"the run ended with exit {proc.returncode} before the kill: {err}"
            break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # it finished just before the signal arrived
            break
        delivered.append(sig)
        if sig != signal.SIGKILL:
            # SIGINT and SIGTERM: the same one line, exit 130, no traceback, no RUNNING trial left
            assert proc.returncode == 130, err
            assert "Traceback" not in err and err.strip().splitlines()[-1] == INTERRUPTED_LINE, err
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                assert con.execute("select count(*) from trials where state = 'RUNNING'").fetchone()[0] == 0
    assert len(delivered) >= 8, "the run finished before 8 interruptions: slow it down"
    proc = _start(out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err

    got = _completed(out)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == expected[name], name
    # the interrupted trials are in the storage, truthfully labelled, and were retried
    storage = st.open_storage(st.default_url(out))
    reasons = [t.user_attrs.get("fail_reason", "") for s in st.cell_studies(storage)
               for t in optuna.load_study(study_name=s.study_name, storage=storage).trials if t.state == TrialState.FAIL]
    assert reasons and all(r.startswith(("interrupted: ", "released: ")) for r in reasons), reasons


# --- kills in given windows (issue 24, part 1) ----------------------------------------------


class _TwoFid(Task):
    """A task with a fidelity and two parameters (a trial can be cut off between its suggests):
    loss(x, y, f) = (x - 0.3)^2 + (y + 0.2)^2 + (1 - f) / 4 at checkpoints f = 1/4, 1/2, 3/4."""

    name = "twofid"
    description = "test task with a fidelity and two parameters"
    has_fidelity = True
    profiles = {"smoke": type("C", (), {"budget": 8.0, "checkpoints": (0.25, 0.5, 0.75)})()}

    def __init__(self, profile="smoke", **options):
        self.profile, self.config = profile, self.profiles[profile]

    def describe_config(self):
        return {"budget": 8.0}

    @property
    def metrics(self):
        return [Metric("loss", "minimize")]

    def search_space(self):
        return {"x": optuna.distributions.FloatDistribution(-1, 1),
                "y": optuna.distributions.FloatDistribution(-1, 1)}

    def default_grid(self):
        return {"x": [-1.0, 0.0, 1.0], "y": [-1.0, 0.0, 1.0]}

    def evaluate(self, params, seed, *, final=False, report=None):
        base = (params["x"] - 0.3) ** 2 + (params["y"] + 0.2) ** 2
        for f in (0.25, 0.5, 0.75):
            if report is not None:
                report(f, base + (1 - f) / 4)
        return {"loss": base}


def _sobol(ctx):  # external methods exactly as the README writes them: no wrapper
    return optuna.samplers.QMCSampler(qmc_type="sobol", seed=ctx.seed)


def _cmaes(ctx):
    return optuna.samplers.CmaEsSampler(seed=ctx.seed)


SOBOL = Method("quasi-random search (Sobol), from an external package", _sobol, choose=best_params)
CMAES = Method("CMA-ES, from an external package", _cmaes, choose=best_params)

PLUGIN = """
import sys
sys.path.insert(0, {tests!r})
from test_interrupt import _TwoFid as TASK, SOBOL, CMAES
"""
HAVE_CMAES = importlib.util.find_spec("cmaes") is not None  # CmaEsSampler needs the `cmaes` package
WINDOW_METHODS = ["random", "tpe", "grid", "bilevel", "sobol", *(["cmaes"] if HAVE_CMAES else []),
                  "sha", "hyperband", "median"]
WINDOW_CMD = ["run", "--task", "quadratic,twofid", "--method", ",".join(WINDOW_METHODS), "--profile", "smoke",
              "--seeds", "1", "--no-progress", "--no-report"]
# (window, cell, occurrence in that cell in this process, signal), in the order the matrix
# reaches them (task, then method). A `suggest` occurrence counts the points before each of a
# trial's suggests: quadratic smoke has 3 parameters (3 points a trial), twofid 2. SIGKILL needs a
# process of its own (a `diffhpo run`); SIGINT and SIGTERM are sent to this process, running the
# matrix with the CLI's SIGTERM handler (process starts are the slow part of this test).
WINDOWS = [
    ("suggest", "quadratic.random.", 8, signal.SIGKILL),  # trial 2, 1 of 3 parameters stored
    ("suggest", "quadratic.sobol.", 5, signal.SIGINT),  # trial 1 (its first Sobol point), 1 stored
    *([("suggest", "quadratic.cmaes.", 9, signal.SIGTERM)] if HAVE_CMAES else []),  # trial 2, 2 stored
    ("final", "twofid.bilevel.", 1, signal.SIGTERM),
    ("tell", "twofid.sha.", 3, signal.SIGINT),
    ("suggest", "twofid.hyperband.", 6, signal.SIGKILL),  # trial 2, 1 of 2 stored
    ("suggest", "twofid.median.", 3, signal.SIGTERM),  # trial 1, none stored yet
]


def _plugin_env(root, **extra):
    (root / "diffhpo_interrupt_plugin.py").write_text(PLUGIN.format(tests=os.path.dirname(__file__)))
    info = root / "diffhpo_interrupt_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: diffhpo-interrupt-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [diffhpo.methods]
        sobol = diffhpo_interrupt_plugin:SOBOL
        cmaes = diffhpo_interrupt_plugin:CMAES
        [diffhpo.tasks]
        twofid = diffhpo_interrupt_plugin:TASK
        """))
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1", **extra)


def _outcome(out) -> dict:
    """Per cell: the completed and pruned trials (parameters, value, intermediate values), the
    status and the final choice."""
    storage = st.open_storage(st.default_url(out))
    cells = {}
    for s in st.cell_studies(storage):
        trials = optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], s.study_name
        done = sorted((tuple(sorted(t.params.items())), t.state.name, t.value, tuple(sorted(t.intermediate_values.items())))
                      for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
        cells[s.study_name] = (done, s.user_attrs.get("status"), s.user_attrs.get("final_params"))
    return cells


@pytest.fixture
def window_plugins():
    TASKS.register("twofid", _TwoFid)
    METHOD_REGISTRY.register("sobol", SOBOL)
    METHOD_REGISTRY.register("cmaes", CMAES)
    yield
    TASKS.unregister("twofid")
    METHOD_REGISTRY.unregister("sobol")
    METHOD_REGISTRY.unregister("cmaes")


@pytest.mark.slow
def _pause_env(window, cell, nth, ready) -> dict:
    return {hooks.ENV: window, f"{hooks.ENV}_CELL": cell, f"{hooks.ENV}_NTH": str(nth), f"{hooks.ENV}_FILE": str(ready)}


def _interrupt_here(work, ready, sig, monkeypatch, env) -> None:
    """Run ``work`` in this process until the pause, then send ``sig`` to this process."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    hooks._seen.clear()  # a fresh count, as in a new process
    ready.unlink(missing_ok=True)

    def send():
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if ready.exists():
            os.kill(os.getpid(), sig)

    sender = threading.Thread(target=send, daemon=True)
    old = signal.signal(signal.SIGTERM, cli._on_sigterm)
    try:
        sender.start()
        with pytest.raises(KeyboardInterrupt):
            work()
    finally:
        signal.signal(signal.SIGTERM, old)
        sender.join()
        for k in env:
            monkeypatch.delenv(k)


def _killed_here_or_in_a_process(out, tmp_path, window, cell, nth, sig, monkeypatch) -> None:
    ready = tmp_path / "ready"
    env = _pause_env(window, cell, nth, ready)
    if sig != signal.SIGKILL:
        _interrupt_here(lambda: run_matrix(_window_spec(out), log=lambda line: None), ready, sig, monkeypatch, env)
        return
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "diffhpo", *WINDOW_CMD, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_plugin_env(tmp_path, **env))
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists(), f"{window} {cell}: the run never reached the window: {proc.communicate()[1]}"
    proc.kill()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (window, cell, err)


def _window_spec(out) -> RunSpec:
    return RunSpec(tasks=["quadratic", "twofid"], methods=WINDOW_METHODS, seeds=[0], profile="smoke", out=out,
                   progress=False)


@pytest.mark.slow
def test_kills_in_every_window_leave_the_configurations_of_an_uninterrupted_run(tmp_path, window_plugins,
                                                                                monkeypatch):
    ref = tmp_path / "ref"  # the uninterrupted run
    run_matrix(_window_spec(ref), log=lambda line: None)
    expected = _outcome(ref)
    assert len(expected) == len(WINDOW_METHODS) * 2 - 3 and all(status == "done" for _, status, _ in expected.values())

    out = tmp_path / "killed"
    for window, cell, nth, sig in WINDOWS:
        _killed_here_or_in_a_process(out, tmp_path, window, cell, nth, sig, monkeypatch)
        storage = st.open_storage(st.default_url(out))
        name = next(s.study_name for s in st.cell_studies(storage) if s.study_name.startswith(cell))
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        if window == "suggest":  # the kill came with part of the trial's parameters stored
            n_params = 3 if cell.startswith("quadratic") else 2
            assert any(len(t.params) < n_params and t.state in (TrialState.RUNNING, TrialState.FAIL)
                       for t in trials), (cell, trials)
        if window == "final":
            assert st.cell_studies(storage) and next(
                s for s in st.cell_studies(storage) if s.study_name == name).user_attrs.get("status") != "done"
    run_matrix(_window_spec(out), log=lambda line: None)  # to the end
    got = _outcome(out)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == expected[name], name

    # while the report is written: the rewritten report is whole
    storage = st.open_storage(st.default_url(out))
    _interrupt_here(lambda: write_report(storage, out, plots=False, html=False), tmp_path / "ready",
                    signal.SIGTERM, monkeypatch, _pause_env("report", "", 1, tmp_path / "ready"))
    write_report(storage, out, plots=False, html=False)
    n_trials = sum(len(optuna.load_study(study_name=s.study_name, storage=storage).trials) for s in st.cell_studies(storage))
    assert len(pd.read_csv(out / "trials.csv")) == n_trials and len(pd.read_csv(out / "cells.csv")) == len(expected)


SECOND_INTERRUPT_SCRIPT = """
import atexit, sys, time

def teardown():  # stands in for torch's exit handlers, which take a while
    print("teardown", file=sys.stderr, flush=True)
    time.sleep(3)

atexit.register(teardown)
from diffhpo.cli import main
main(sys.argv[1:])
"""


def test_a_second_interrupt_during_teardown_is_quiet(tmp_path):
    """Issue 24, 3h: a second SIGINT shortly after the first (inside an exit handler) printed
    Python's "Exception ignored in atexit callback ... KeyboardInterrupt" after the
    `interrupted:` line. It must end the process with 130 and nothing more on stderr."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", SECOND_INTERRUPT_SCRIPT, *CMD, "--out", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:  # the first SIGINT once the search runs, the second inside the teardown
        lines.append(line)
        if line.startswith("diffhpo run:"):
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
        if line.startswith("teardown"):
            time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=60)[1]
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert INTERRUPTED_LINE in err
    assert "Exception ignored" not in err and "KeyboardInterrupt" not in err and "Traceback" not in err, err
    assert rest.strip() == "", err
