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
from optuna.trial import TrialState

from .contracts.errors import DiffhpoError
from .provenance import redact_url

HOST = socket.gethostname()
WORKER_KEY = "worker"
MAX_RETRY = 3
UNCLAIMED_AFTER_S = 60.0  # a RUNNING trial with no worker recorded after this long was cut off


def worker_id() -> str:
    return f"{HOST}:{os.getpid()}"


DEVICE_KEY = "device"


def device() -> str:
    """The device this worker's trials run on, recorded per trial: ``cuda:<CUDA_VISIBLE_DEVICES>``
    (the GPUs Slurm or the local launcher gave this process; ``cuda:all`` where none was set)
    when torch sees a GPU, else ``cpu``. Read from the environment and torch (a task has
    imported it by then), so it names what the process could use, not what the task chose."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{os.environ.get('CUDA_VISIBLE_DEVICES') or 'all'}"
    except Exception:  # no torch, or a CUDA build without a driver
        pass
    return "cpu"


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


RETRY_OF = "failed_trial"  # Optuna's convention (RetryHeartbeatStaleTrialCallback.retried_trial_number)
ASKED = "diffhpo:asked"  # system attribute: every parameter of the trial is stored (its ask completed)
PRUNER_KEYS = ("completed_rung_",)  # a pruner's record of the original's progress, not the copy's


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Enqueue a copy of a cut-off trial, at most MAX_RETRY times per original.

    Like Optuna's ``RetryHeartbeatStaleTrialCallback``, the copy keeps the parameters and
    the system attributes (a grid point, a bilevel slot; not a pruner's rungs) and records ``failed_trial`` (the
    original's number, which keeps the configuration's slot, see
    :func:`diffhpo.bench.toolkit.seeding.slot`) and ``retry_history``. Unlike it, the copy does not
    inherit the user attributes: the original's ``fail_reason``, worker and timings belong
    to the original, and trials.csv shows each trial's own record.

    The parameters are copied only when the original holds a whole configuration (its
    ``diffhpo:asked`` mark: its ask completed, or it is itself a copy of one). A trial cut off
    inside ``study.ask``, between two suggests, holds only some of them; keeping those fixed
    would make the sampler, reseeded for the slot, draw the others in another order (the
    first draw going to the first missing parameter). Its copy therefore starts from scratch
    in the same slot, and a sampler deterministic in one process proposes the slot's whole
    configuration again, as in an uninterrupted run.
    """
    system = {RETRY_OF: trial.number, **{k: v for k, v in trial.system_attrs.items() if not k.startswith(PRUNER_KEYS)}}
    system["retry_history"] = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(system["retry_history"]) > MAX_RETRY:
        return
    whole = bool(trial.system_attrs.get(ASKED))
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING, params=trial.params if whole else {},
        distributions=trial.distributions if whole else {}, system_attrs=system,
    ))


def fail_and_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str, *, again: bool = True) -> None:
    """Mark a cut-off trial FAILED with ``reason`` and enqueue its configuration again
    (:func:`retry`)."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        changed = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # another worker got there first
    if changed and again:
        retry(study, storage.get_trial(trial._trial_id))


def fail_waiting(study: optuna.Study, reason: str) -> int:
    """Fail the WAITING copies left in a cell whose search is over (not counted)."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            n += bool(study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL))
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            pass  # another worker took it
    return n


def fail_orphans(study: optuna.Study, *, exclusive: bool) -> int:
    """Fail (and retry) the RUNNING trials whose process is gone. With ``exclusive`` (this
    process holds the storage alone) every RUNNING trial is such a leftover."""
    n = 0
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        unclaimed = WORKER_KEY not in t.user_attrs and (
            t.datetime_start is None or (now - t.datetime_start).total_seconds() > UNCLAIMED_AFTER_S
        )
        if is_orphan(t):
            fail_and_retry(study, t, "interrupted: its process is gone")
        elif unclaimed:
            fail_and_retry(study, t, "interrupted: no worker claimed it")
        elif exclusive:
            fail_and_retry(study, t, "interrupted: left running by an earlier run")
        else:
            continue
            n += 1
    return n


def _gone(owner: str) -> bool:
    """Whether the process that wrote ``owner`` (host:pid) is known to have ended. A claim
    without an owner yet is held: its process writes the owner right after creating it."""
    host, _, pid = owner.rpartition(":")
    return bool(owner) and host == HOST and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))


def claim_name(study: optuna.Study) -> str:
    return f"{study.study_name}:final-protocol"


def clear_stale_claim(study: optuna.Study) -> None:
    """Remove a final-protocol claim left by a process of this host that is gone."""
    storage = study._storage
    try:
        held = storage.get_study_id_from_name(claim_name(study))
    except KeyError:
        return
    try:
        if _gone(str(storage.get_study_user_attrs(held).get(WORKER_KEY, ""))):
            storage.delete_study(held)
    except KeyError:
        pass  # another process removed it


@contextmanager
def claim_final(study: optuna.Study) -> Iterator[bool]:
    """Claim a cell's final protocol for this process; yields whether the claim is ours.

    Creating a study is atomic in every Optuna storage (names are unique), so the claim is
    a study named ``<cell>:final-protocol`` holding its owner (host:pid). Two ``run`` or
    ``worker`` processes that finish one cell's search at the same time thus run the final
    protocol once. The claim is removed afterwards; a claim whose process on this host is
    gone (a killed run) is taken over.
    """
    storage, name = study._storage, claim_name(study)
    for attempt in range(2):
        try:
            study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
            break
        except optuna.exceptions.DuplicatedStudyError:
            try:
                held = storage.get_study_id_from_name(name)
                owner = str(storage.get_study_user_attrs(held).get(WORKER_KEY, ""))
            except KeyError:  # released in the meantime: try again
                continue
            if attempt == 0 and _gone(owner):
                try:
                    storage.delete_study(held)
                except KeyError:
                    pass  # another process removed it first
                continue
            yield False
            return
    else:  # two rounds lost to other processes: theirs
        yield False
        return
    storage.set_study_user_attr(study_id, WORKER_KEY, worker_id())
    try:
        yield True
    finally:
        try:
            storage.delete_study(study_id)
        except KeyError:
            pass  # already removed


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
                f"another diffhpo process is using {redact_url(url)!r}; SQLite is single-process: wait for it, or "
                "use --storage journal:///FILE (processes on one machine) or postgresql://... "
                "(several machines) for parallel workers"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
