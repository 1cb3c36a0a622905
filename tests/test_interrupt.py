"""An interrupted and resumed run evaluates exactly the configurations of an uninterrupted one
(issue 13, part 1): runs of `quadratic` are killed with SIGKILL, SIGINT and SIGTERM at random
moments, rerun, and compared trial by trial with a run that was never interrupted."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from diffhpo.bench import storage as st

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
