"""Worker identity, liveness, and the single-process lock of SQLite storages.

Every trial records the worker that ran it (``host:pid``). A RUNNING trial whose worker ran
on this host and whose process is gone was cut off (Ctrl-C, kill, crash); any worker on
this host fails it and enqueues it again (see :func:`fail_and_retry`). Across machines,
PostgreSQL/MySQL storages use Optuna's heartbeats for the same purpose.

SQLite is single-process: :func:`sqlite_lock` takes an exclusive lock on ``FILE.lock``
for as long as a process uses the file, and a second process is refused with one clear
line (use ``journal:///FILE`` or PostgreSQL for several workers).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from .errors import DiffhpoError

HOST = socket.gethostname()
WORKER_KEY = "worker"
MAX_RETRY = 3
UNCLAIMED_AFTER_S = 60.0  # a RUNNING trial with no worker recorded after this long was cut off


def worker_id() -> str:
    return f"{HOST}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_orphan(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial started by a process of this host that no longer exists."""
    host, _, pid = str(trial.user_attrs.get(WORKER_KEY, "")).rpartition(":")
    return host == HOST and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))


def fail_and_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str, *, retry: bool = True) -> None:
    """Mark a cut-off trial FAILED with ``reason`` and enqueue its configuration again
    (Optuna's RetryFailedTrialCallback, at most MAX_RETRY times)."""
    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    try:
        changed = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # another worker got there first
    if changed and retry:
        RetryFailedTrialCallback(max_retry=MAX_RETRY)(study, storage.get_trial(trial._trial_id))


def fail_orphans(study: optuna.Study, *, exclusive: bool) -> int:
    """Fail (and retry) the RUNNING trials whose process is gone. With ``exclusive`` (this
    process holds the storage alone) every RUNNING trial is such a leftover."""
    n = 0
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        unclaimed = WORKER_KEY not in t.user_attrs and (
            t.datetime_start is None or (now - t.datetime_start).total_seconds() > UNCLAIMED_AFTER_S
        )
        if exclusive or is_orphan(t) or unclaimed:
            fail_and_retry(study, t, "interrupted")
            n += 1
    return n


@contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite storage file (no-op for other URLs)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    path = Path(url[len("sqlite:///"):] + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DiffhpoError(
                f"another diffhpo process is using {url!r}; SQLite is single-process: wait for it, or "
                "use --storage journal:///FILE (processes on one machine) or postgresql://... "
                "(several machines) for parallel workers"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
