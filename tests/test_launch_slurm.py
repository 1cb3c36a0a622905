"""`diffhpo run --launcher slurm --workers N` on a real single-node Slurm cluster (.ci/slurm.sh
starts one and sets DIFFHPO_TEST_SLURM and SLURM_CONF): a quadratic smoke matrix runs to the
end with every cell's completed trials equal to a one-process run's, a `scancel`led worker
changes nothing, and bad input is refused before any job is submitted. Also submitit's
checkpointing: a pre-empted worker (local executor) is requeued and the matrix continues."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from diffhpo.bench import storage as st

sys.path.insert(0, os.path.dirname(__file__))  # --import-mode=importlib: the helpers of test_matrix_workers.py
from test_matrix_workers import METHODS, check_matrix, create, one_process  # noqa: F401  (fixture)

DIFFHPO = [sys.executable, "-m", "diffhpo"]
SLURM = pytest.mark.skipif(not os.environ.get("DIFFHPO_TEST_SLURM"),
                           reason="no Slurm cluster: DIFFHPO_TEST_SLURM unset (.ci/slurm.sh's slurm_start starts one)")
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
submitit = pytest.importorskip("submitit", reason="--launcher needs submitit (a dependency: pip install -e .)")


def run_args(url, out, *extra, sleep_s=0.05):
    return [*DIFFHPO, "run", "--task", "quadratic", "--method", ",".join(METHODS), "--profile", "smoke", "--seeds", "2",
            "--option", f"sleep_s={sleep_s}", "--storage", url, "--out", str(out), "--no-progress", *extra]


def trials_by_cell(url):
    """Each cell's completed trials as a sorted list of (params, value)."""
    storage = st.open_storage(url)
    return {s.study_name: sorted((tuple(sorted(t.params.items())), t.value) for t in storage.get_all_trials(
        s._study_id, states=(TrialState.COMPLETE,))) for s in st.cell_studies(storage)}


def job_ids():
    p = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(p.stdout.split())


@pytest.fixture(scope="module")
def one_trials(one_process):  # noqa: F811
    return trials_by_cell(st.default_url(one_process))


def worker_logs(out):
    return [f.read_text() for f in sorted((out / "launch").glob("*_log.out"))]


@SLURM
def test_slurm_launcher_runs_the_matrix_like_one_process(tmp_path, one_process, one_trials):  # noqa: F811
    url = f"journal://{tmp_path / 'journal.log'}"
    before = job_ids()
    p = subprocess.run(run_args(url, tmp_path, "--launcher", "slurm", "--workers", "4", "--slurm-partition", "debug",
                                "--time", "30"), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "4 matrix worker job(s) submitted" in p.stderr and (tmp_path / "summary.csv").exists()
    assert len(job_ids() - before) == 4  # four Slurm jobs (one array) ran them
    logs = worker_logs(tmp_path)
    assert len(logs) == 4
    check_matrix(url, one_process, logs)
    assert trials_by_cell(url) == one_trials
    done = [t for trials in (optuna.load_study(study_name=s.study_name, storage=st.open_storage(url)).trials
                             for s in st.cell_studies(st.open_storage(url))) for t in trials]
    ran = [t for t in done if "worker" in t.user_attrs]  # not the queued copies released unrun at a search's end
    assert ran and {t.user_attrs.get("device") for t in ran} == {"cpu"}  # a CPU node: no GPU for any worker


@SLURM
def test_scancel_of_one_worker_mid_trial_changes_nothing(tmp_path, one_process, one_trials):  # noqa: F811
    url = f"journal://{tmp_path / 'journal.log'}"
    pause = tmp_path / "pause"
    env = dict(os.environ, DIFFHPO_TEST_PAUSE="evaluate", DIFFHPO_TEST_PAUSE_CELL="quadratic.random.smoke.seed1",
               DIFFHPO_TEST_PAUSE_NTH="2", DIFFHPO_TEST_PAUSE_ONCE="1", DIFFHPO_TEST_PAUSE_FILE=str(pause))
    run = subprocess.Popen(run_args(url, tmp_path, "--launcher", "slurm", "--workers", "4"), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not pause.exists() or not pause.read_text().endswith("\n"):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
            time.sleep(0.2)
        window, cell, _, number, pid = re.match(r"(\S+) (\S+) (trial) (\d+) pid (\d+)", pause.read_text()).groups()
        job = job_of(pid)
        subprocess.run(["scancel", job], check=True)  # the worker is in the middle of trial `number`
        _, err = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-3000:]
    assert f"worker job {job} ended without a result" in err
    study = optuna.load_study(study_name=cell, storage=st.open_storage(url))
    cut = study.trials[int(number)]
    assert cut.state == TrialState.FAIL and "process is gone" in cut.user_attrs["fail_reason"]
    assert [t for t in study.trials if t.system_attrs.get("failed_trial") == int(number)
            and t.state == TrialState.COMPLETE]  # retried by slot
    logs = worker_logs(tmp_path)
    assert len(logs) == 4
    check_matrix(url, one_process, logs)
    assert trials_by_cell(url) == one_trials


def job_of(pid):
    """The Slurm job (ARRAY_TASK) a process runs in, from its environment."""
    environ = dict(v.split("=", 1) for v in open(f"/proc/{pid}/environ").read().split("\0") if "=" in v)
    return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"


@SLURM
def test_timed_out_worker_is_requeued_by_slurm_and_continues(tmp_path, one_process, one_trials):  # noqa: F811
    """Slurm's warning signal before the time limit (submitit asks for USR2; with --time
    under 10 minutes submitit counts any USR2 as a time-out) makes the worker checkpoint:
    submitit requeues the job with `scontrol requeue`, and the requeued job joins the matrix
    again. Slurm holds a requeued job for its requeue delay (about 2 minutes); the test
    releases it early with `scontrol update StartTime=now`, but not within the second of the
    requeue: slurmd revokes the job's credential when it kills the first run, at 1 s
    resolution, and refuses a credential issued in that same second (slurmctld: "Killing
    non-startable batch JobId=...: Job credential revoked"; slurmd: "Job ... already killed, do
    not launch batch job"), so a release at once made the job FAIL without running again, in
    1 of 4 runs here. Slurm's own requeue delay never meets this."""
    url = f"journal://{tmp_path / 'journal.log'}"
    run = subprocess.Popen(run_args(url, tmp_path, "--launcher", "slurm", "--workers", "2", "--time", "9",
                                    sleep_s=0.3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        storage, deadline = st.open_storage(url), time.monotonic() + 600
        while len(done := [t for s in st.cell_studies(storage)
                           for t in storage.get_all_trials(s._study_id, states=(TrialState.COMPLETE,))]) < 6:
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
            time.sleep(0.2)
        job = job_of(int(done[-1].user_attrs["worker"].rpartition(":")[2]))
        subprocess.run(["scancel", "--signal", "USR2", job], check=True)
        log = next((tmp_path / "launch").glob(f"{job}_0_log.out"))
        while "requeued through submitit" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        while "PENDING" not in subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                                              text=True).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(2)  # past the second in which slurmd revoked the job's credential (docstring)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        _, err = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-3000:]
    assert log.read_text().count("Starting with JobEnvironment") == 2, err[-3000:]  # the same job ran again
    check_matrix(url, one_process, worker_logs(tmp_path))
    assert trials_by_cell(url) == one_trials


@SLURM
def test_detach_prints_the_jobs_and_the_report_command(tmp_path):
    url = f"journal://{tmp_path / 'journal.log'}"
    p = subprocess.run(run_args(url, tmp_path / "out", "--launcher", "slurm", "--workers", "2", "--detach"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ids = re.search(r"job ids (.+)", p.stderr).group(1).split()
    command = re.search(r"when they are done: (.+)", p.stderr).group(1)
    assert command == f"diffhpo report --out {tmp_path / 'out'} --storage {url}"
    assert not (tmp_path / "out" / "summary.csv").exists()  # not waited for
    deadline = time.monotonic() + 600
    while set(ids) & set(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()):
        assert time.monotonic() < deadline
        time.sleep(1)
    r = subprocess.run([*DIFFHPO, *command.split()[1:]], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "out" / "summary.csv").exists()


@pytest.mark.parametrize("case", ["partition", "no-sbatch", "sqlite", "grpc"])
def test_slurm_bad_input_submits_nothing(tmp_path, case):
    if case == "partition" and not os.environ.get("DIFFHPO_TEST_SLURM"):
        pytest.skip("no Slurm cluster: DIFFHPO_TEST_SLURM unset (.ci/slurm.sh's slurm_start starts one)")
    url, env, needle = f"journal://{tmp_path / 'journal.log'}", dict(os.environ), ""
    extra = []
    if case == "partition":
        extra, needle = ["--slurm-partition", "nosuch"], "unknown Slurm partition 'nosuch'; valid partitions: debug"
    elif case == "no-sbatch":
        (tmp_path / "bin").mkdir()
        env["PATH"], needle = str(tmp_path / "bin"), "needs Slurm's sbatch and srun, not on PATH"
    elif case == "sqlite":
        url, needle = f"sqlite:///{tmp_path / 'db.sqlite3'}", "SQLite serves one process"
    else:
        pytest.importorskip("grpc", reason="grpc:// needs grpcio")
        if not shutil.which("sbatch"):
            pytest.skip("no sbatch here: --launcher slurm is refused for that before the storage is tried")
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"grpc://127.0.0.1:{s.getsockname()[1]}"
        needle = "no storage proxy answers at"
    before = job_ids() if shutil.which("squeue") and os.environ.get("DIFFHPO_TEST_SLURM") else None
    p = subprocess.run(run_args(url, tmp_path / "out", "--launcher", "slurm", "--workers", "4", *extra),
                       capture_output=True, text=True, timeout=300, env=env)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], p.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "journal.log").exists()
    assert not (tmp_path / "db.sqlite3").exists()
    if before is not None:
        assert not job_ids() - before  # nothing submitted (older jobs may leave squeue meanwhile)


def test_preempted_worker_is_requeued_through_checkpoint(tmp_path, one_process, one_trials):  # noqa: F811
    """The worker process of a job of submitit's local executor gets submitit's pre-emption
    signal (USR2, as Slurm sends before a pre-emption or the time limit); with a time limit
    under 10 minutes submitit counts it as a time-out, which it requeues only through the
    callable's ``checkpoint`` (a pre-empted job it requeues anyway). The worker's ``checkpoint`` requeues it, the
    trial cut off is retried by slot, and the requeued worker finishes the matrix."""
    from diffhpo.bench import launch

    url = f"journal://{tmp_path / 'journal.log'}"
    create(url, tmp_path)
    # 9 minutes: under 10, submitit counts a USR2 as a time-out. Not 1: submitit's local controller
    # kills its tasks (SIGINT, no requeue) when the limit passes, and on a loaded machine the worker's
    # start-up, its first 8 trials and the requeued run's rest of the matrix outlast 60 s (the job
    # then ended with the KeyboardInterrupt's traceback as its result: the flake CI saw once).
    (job,) = launch.launch("local", url, 1, tmp_path / "launch", time_min=9)
    storage = st.open_storage(url)
    deadline = time.monotonic() + 600
    while len(done := [t for s in st.cell_studies(storage)
                       for t in storage.get_all_trials(s._study_id, states=(TrialState.COMPLETE,))]) < 8:
        assert time.monotonic() < deadline and not job.done(), job.stderr()
        time.sleep(0.2)
    pid = int(done[0].user_attrs["worker"].rpartition(":")[2])  # the worker process (submitit's task)
    os.kill(pid, signal.SIGUSR2)  # the signal Slurm sends before a pre-emption or the time limit
    errors = launch.wait([job], log=lambda line: None)
    assert errors == [] and job.paths.result_pickle.exists()
    log = job.stdout()
    assert "pre-empted or out of time; requeued through submitit" in log
    check_matrix(url, one_process, [log])  # the requeued worker is a second process
    assert trials_by_cell(url) == one_trials
