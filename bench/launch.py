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
from pathlib import Path
from typing import Any, Callable

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


def worker_job(url: str, index: int, n_gpus: int, heartbeat: float | None, workdir: str | None) -> list:
    """One matrix worker of the array, in its own process (submitit runs it)."""
    if n_gpus > 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % n_gpus)
    from .console import quiet_libraries
    from .runner import join_matrix

    quiet_libraries()
    outcomes = join_matrix(url, progress=False, heartbeat=heartbeat,
                           workdir=Path(workdir) if workdir else None, log=lambda line: print(line, flush=True))
    return [(o.study_name, o.status) for o in outcomes]


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
    args = [(url, i, n_gpus, heartbeat, str(workdir) if workdir else None) for i in range(n_workers)]
    return executor.map_array(worker_job, *zip(*args))


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no torch CUDA build: CPU workers
        return 0


def wait(jobs: list, log: Callable[[str], None]) -> list[str]:
    """Wait for every job; the errors of the jobs that failed (one line each)."""
    errors = []
    for job in jobs:
        try:
            for name, status in job.result():
                if status.startswith("failed"):
                    errors.append(f"{name}: {status}")
        except Exception as exc:  # submitit's FailedJobState / UncompletedJobError
            text = str(exc).strip().splitlines()
            errors.append(f"worker job {job.job_id}: {text[-1] if text else type(exc).__name__}")
    log(f"launcher: {len(jobs)} worker job(s) ended")
    return errors
