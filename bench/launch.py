"""Launching matrix workers through submitit (``diffhpo run --launcher local|slurm --workers N``).

``run`` creates the cells, then submits N matrix workers (:func:`diffhpo.bench.runner.join_matrix`)
as one submitit job array, waits for them and writes the report. Choices:

* submitit, the engine benchopt and hydra's launcher use, not home-made job scripts;
  ``local`` is submitit's ``LocalExecutor`` (local processes), ``slurm`` its ``SlurmExecutor``.
* The storage must be one that every worker reaches and several processes share: PostgreSQL,
  MySQL, a journal file (on a filesystem every node shares, for Slurm), or ``grpc://``.
  SQLite serves one process and is refused before anything is submitted.
* GPUs: with the local launcher on a machine with GPUs, worker ``i`` sees only GPU
  ``i % n_gpus`` (``CUDA_VISIBLE_DEVICES``, set in the worker before anything uses CUDA);
  under Slurm, ``--gpus-per-worker`` asks Slurm for them and Slurm sets
  ``CUDA_VISIBLE_DEVICES``.
* Nothing is lost when a worker job is killed: its running trial is retried by slot by the
  next worker (bench/workers.py); the workers' logs are in ``OUT/launch/``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import optuna

from .contracts.errors import DiffhpoError
from .provenance import redact_url

LAUNCHERS = ("local", "slurm")


def check_launcher(launcher: str, url: str | None, n_workers: int, *, partition: str | None = None,
                   time_min: int | None = None, gpus: int | None = None) -> None:
    """Every launcher setting checked before any cell is created or job submitted."""
    if launcher not in LAUNCHERS:
        raise DiffhpoError(f"unknown launcher {launcher!r}; valid launchers: {', '.join(LAUNCHERS)}")
    if url is None or url.startswith("sqlite"):
        shown = redact_url(url) if url else "the default SQLite file"
        raise DiffhpoError(f"--launcher needs a storage every worker reaches, not {shown}: SQLite serves one process; "
                           "use --storage postgresql://..., journal:///FILE (on a shared filesystem) or grpc://HOST:PORT")
    if n_workers < 1:
        raise DiffhpoError(f"--workers must be at least 1, got {n_workers}")
    for flag, value in (("--time", time_min), ("--gpus-per-worker", gpus)):
        if value is not None and value < (0 if flag == "--gpus-per-worker" else 1):
            raise DiffhpoError(f"{flag} must be positive, got {value}")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise DiffhpoError("--launcher needs submitit: pip install submitit") from None
    if launcher == "slurm":
        missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]  # submitit needs both
        if missing:
            raise DiffhpoError(f"--launcher slurm needs Slurm's {' and '.join(missing)}, not on PATH; nothing submitted")
        if partition is not None:
            import subprocess

            known = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout.split()
            if partition not in known:
                raise DiffhpoError(f"unknown Slurm partition {partition!r}; valid partitions: "
                                   f"{', '.join(known) or 'none'}; nothing submitted")
    elif partition is not None:
        raise DiffhpoError("--slurm-partition is for --launcher slurm")


class MatrixWorker:
    """One matrix worker of the array, in its own process (submitit runs it).

    A class rather than a function for submitit's checkpointing: when Slurm pre-empts the job
    or its time limit nears (submitit's USR2 signal), submitit calls :meth:`checkpoint` and
    requeues the job with what it returns: the same worker, which joins the matrix again. No
    state needs saving, because the matrix's state is the storage; the trial cut off by the
    signal is failed and retried by slot like any other cut-off trial (bench/workers.py)."""

    def __init__(self, url: str, index: int, n_gpus: int, heartbeat: float | None, workdir: str | None):
        self.url, self.index, self.n_gpus, self.heartbeat, self.workdir = url, index, n_gpus, heartbeat, workdir

    def __call__(self) -> list:
        if self.n_gpus > 0:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.index % self.n_gpus)
        from .console import quiet_libraries
        from .runner import join_matrix

        quiet_libraries()
        outcomes = join_matrix(self.url, progress=False, heartbeat=self.heartbeat,
                               workdir=Path(self.workdir) if self.workdir else None,
                               log=lambda line: print(line, flush=True))
        return [(o.study_name, o.status) for o in outcomes]

    def checkpoint(self) -> Any:
        import submitit

        print(f"worker {self.index}: pre-empted or out of time; requeued through submitit", flush=True)
        return submitit.helpers.DelayedSubmission(MatrixWorker(self.url, self.index, self.n_gpus, self.heartbeat,
                                                               self.workdir))


def launch(launcher: str, url: str, n_workers: int, folder: Path, *, partition: str | None = None,
           time_min: int | None = None, gpus: int | None = None, options: dict[str, str] | None = None,
           heartbeat: float | None = None, workdir: Path | None = None) -> list:
    """Submit ``n_workers`` matrix workers as one job array; the submitit jobs."""
    import submitit

    folder.mkdir(parents=True, exist_ok=True)
    if launcher == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=time_min or 60 * 24 * 7)
        n_gpus = _local_gpus()
    else:
        executor = submitit.SlurmExecutor(folder=str(folder))
        params: dict[str, Any] = dict(time=time_min or 60, array_parallelism=n_workers)
        if partition:
            params["partition"] = partition
        if gpus:
            params["gpus_per_node"] = gpus
        if options:
            params["additional_parameters"] = dict(options)
        executor.update_parameters(**params)
        n_gpus = 0  # Slurm sets CUDA_VISIBLE_DEVICES
    workers = [MatrixWorker(url, i, n_gpus, heartbeat, str(workdir) if workdir else None) for i in range(n_workers)]
    with executor.batch():
        jobs = [executor.submit(w) for w in workers]
    return jobs


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no torch CUDA build: CPU workers
        return 0


_ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
          "TIMEOUT")  # PREEMPTED: requeued next


def _slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job still known to slurmctld (``squeue -t all``; one call).

    squeue rather than submitit's sacct, because sacct needs Slurm's accounting daemon, which
    many small clusters (and CI's) do not run; slurmctld forgets a job ``MinJobAge`` seconds
    (300 by default) after its end, and a job it no longer lists has ended."""
    import subprocess

    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {j: "UNKNOWN" for j in job_ids}  # slurmctld busy: ask again next time
    return dict(line.split(None, 1) for line in out.stdout.strip().splitlines() if " " in line)


def _ended(jobs: list) -> list:
    """The jobs among ``jobs`` that have ended (with a result or not)."""
    ended = [j for j in jobs if j.paths.result_pickle.exists()]
    rest = [j for j in jobs if j not in ended]
    slurm = [j for j in rest if type(j).__name__ == "SlurmJob"]
    if slurm:
        states = _slurm_states([j.job_id for j in slurm])
        ended += [j for j in slurm if states.get(j.job_id, "ENDED").split()[0] in _ENDED + ("ENDED",)]
    ended += [j for j in rest if j not in slurm and j.done()]  # local jobs: their process has exited
    return ended


def cell_counts(storage) -> tuple[int, int, int, int]:
    """(cells done, cells, completed trials, trials of the budgets) of a matrix's storage;
    a cell's trials are counted in cost units, as its budget is."""
    from . import storage as st

    done = n = spent = budget = 0
    for s in st.cell_studies(storage):
        n += 1
        done += s.user_attrs.get("status") == "done"
        budget += float(s.user_attrs.get("budget", 0) or 0)
        spent += sum(float(t.user_attrs.get("cost", 1)) for t in storage.get_all_trials(
            s._study_id, deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    return done, n, int(spent), int(budget)


def wait(jobs: list, log: Callable[[str], None], *, storage=None, progress: bool = False,
         poll_s: float = 2.0) -> list[str]:
    """Wait for every job; the errors of the jobs that failed (one line each).

    A job that ended without a result (cancelled, killed, out of time and not requeued) is
    logged, not an error: its cut-off trial is retried by slot by the other workers, and the
    caller checks that every cell is done. With ``storage`` and ``progress``, a bar shows the
    cells done and the trials spent across the matrix while the jobs run."""
    errors = []
    pending = list(jobs)
    bar = None
    if storage is not None and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cell_counts(storage)[1], desc="cells done", unit="cell", dynamic_ncols=True)
    last = 0.0
    while pending:
        for job in _ended(pending):
            pending.remove(job)
            if not job.paths.result_pickle.exists():
                log(f"launcher: worker job {job.job_id} ended without a result (cancelled, killed or out of time); "
                    "its trial is retried by slot")
                continue
            try:
                for name, status in job.result():
                    if status.startswith("failed"):
                        errors.append(f"{name}: {status}")
            except Exception as exc:  # submitit's FailedJobState / UncompletedJobError
                text = str(exc).strip().splitlines()
                errors.append(f"worker job {job.job_id}: {text[-1] if text else type(exc).__name__}")
        if bar is not None and time.monotonic() - last > 5 * poll_s:
            done, n, spent, budget = cell_counts(storage)
            bar.n = done
            bar.set_postfix_str(f"cost {spent}/{budget}")
            last = time.monotonic()
        if pending:
            time.sleep(poll_s)
    if bar is not None:
        done, n, spent, budget = cell_counts(storage)
        bar.n = done
        bar.set_postfix_str(f"cost {spent}/{budget}")
        bar.close()
    log(f"launcher: {len(jobs)} worker job(s) ended")
    return errors
