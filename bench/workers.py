"""Worker identity, liveness, and the single-process lock of SQLite storages.

Every trial records the worker that ran it (``host:pid``). A RUNNING trial whose worker ran
on this host and whose process is gone was cut off (Ctrl-C, kill, crash); any worker on
this host fails it and enqueues it again (see :func:`fail_and_retry`). Across machines,
PostgreSQL/MySQL storages use Optuna's heartbeats for the same purpose, and so does the gRPC
proxy's client (:class:`HeartbeatProxy`). A final protocol's claim on such a storage holds a
heartbeat too, so a claim whose worker died on another machine is taken over.

SQLite is single-process: :func:`sqlite_lock` takes an exclusive lock on ``FILE.lock``
for as long as a process uses the file, and a second process is refused with one clear
line (use ``journal:///FILE`` or PostgreSQL for several workers).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import optuna
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
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
HEARTBEAT_KEY = "diffhpo:heartbeat"  # system attribute: the last heartbeat (Unix seconds) through the gRPC proxy
STALE_AFTER_BEATS = 3  # a trial or final-protocol claim silent for this many heartbeat intervals is stale
PRUNER_KEYS = ("completed_rung_",)  # a pruner's record of the original's progress, not the copy's
NOT_COPIED = (*PRUNER_KEYS, HEARTBEAT_KEY)  # the original's, not its retry's: a copy with the original's last
# heartbeat would be stale from the moment a worker took it, before its own first heartbeat


class HeartbeatProxy(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's ``GrpcStorageProxy`` with the heartbeats of ``RDBStorage``.

    The proxy's protocol has no heartbeat call, so Optuna's client is no heartbeat storage,
    and a trial cut off on another machine (no process to look for) would stay RUNNING. Here
    a running trial's heartbeat is its system attribute ``diffhpo:heartbeat``, the worker's
    clock (Unix seconds), written every ``heartbeat_interval`` seconds by Optuna's own
    heartbeat thread; a RUNNING trial whose last heartbeat is older than ``grace_period`` is
    stale, and Optuna's ``fail_stale_trials`` fails it and calls ``failed_trial_callback``
    (:func:`retry`), exactly as on PostgreSQL. Choices: the worker's clock rather than the
    database's (the proxy cannot read the database's), so the nodes' clocks must agree to
    well within the grace period (30 s by default; NTP keeps a cluster within milliseconds);
    a trial without a heartbeat yet is not stale (Optuna's rule; :func:`fail_orphans` catches
    one never claimed). Each heartbeat is one small write through the proxy.

    Example::

        storage = HeartbeatProxy(host="proxyhost", port=13000, heartbeat_interval=10,
                                 grace_period=30, failed_trial_callback=retry)
        study = optuna.load_study(study_name="quadratic.random.quick.seed0", storage=storage)
        optuna.storages.fail_stale_trials(study)  # fails and retries the trials of dead workers
    """

    def __init__(self, *, host: str, port: int, heartbeat_interval: int, grace_period: int,
                 failed_trial_callback: Callable | None = None) -> None:
        super().__init__(host=host, port=port)
        self._interval, self._grace, self._callback = heartbeat_interval, grace_period, failed_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # the trial ended, or another worker failed it, between two beats

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if now - float(t.system_attrs.get(HEARTBEAT_KEY, now)) > self._grace]

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable | None:
        return self._callback


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Enqueue a copy of a cut-off trial, at most MAX_RETRY times per original.

    Like Optuna's ``RetryHeartbeatStaleTrialCallback``, the copy keeps the parameters and
    the system attributes (a grid point, a bilevel slot; not a pruner's rungs or the heartbeat) and records ``failed_trial`` (the
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
    system = {RETRY_OF: trial.number, **{k: v for k, v in trial.system_attrs.items() if not k.startswith(NOT_COPIED)}}
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
    """Remove a final-protocol claim left by a dead owner (:func:`_stale`)."""
    storage = study._storage
    try:
        held = storage.get_study_id_from_name(claim_name(study))
    except KeyError:
        return
    try:
        if _stale(storage, storage.get_study_user_attrs(held)):
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
    gone (a killed run) is taken over. On a heartbeat storage (PostgreSQL, MySQL, the gRPC
    proxy) the owner also writes the claim's ``heartbeat`` (its clock, Unix seconds) every
    heartbeat interval, and a claim silent for three intervals is taken over from any
    machine: without it, a worker killed on one node during a final protocol would leave
    its cell unfinished for every other node.
    """
    storage, name = study._storage, claim_name(study)
    for attempt in range(2):
        try:
            study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
            break
        except optuna.exceptions.DuplicatedStudyError:
            try:
                held = storage.get_study_id_from_name(name)
                attrs = storage.get_study_user_attrs(held)
            except KeyError:  # released in the meantime: try again
                continue
            if attempt == 0 and _stale(storage, attrs):
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
    stop = threading.Event()
    beats = None
    if is_heartbeat_enabled(storage):
        beats = threading.Thread(target=_beat_claim, args=(storage, study_id, stop), daemon=True)
        beats.start()
    try:
        yield True
    finally:
        stop.set()
        if beats is not None:
            beats.join()
        try:
            storage.delete_study(study_id)
        except KeyError:
            pass  # already removed


CLAIM_HEARTBEAT = "heartbeat"


def _beat_claim(storage, study_id: int, stop: threading.Event) -> None:
    while True:
        try:
            storage.set_study_user_attr(study_id, CLAIM_HEARTBEAT, time.time())
        except Exception:  # the claim was taken over (deleted), or the storage is briefly unreachable
            pass
        if stop.wait(storage.get_heartbeat_interval()):
            return


def _stale(storage, attrs: dict) -> bool:
    """Whether a final-protocol claim (its study's user attributes) is left by a dead owner:
    a process of this host that is gone, or, on a heartbeat storage, a claim that missed
    three heartbeats (its owner on any machine). A claim before its first beat is held."""
    if _gone(str(attrs.get(WORKER_KEY, ""))):
        return True
    beat = attrs.get(CLAIM_HEARTBEAT)
    return (beat is not None and is_heartbeat_enabled(storage)
            and time.time() - float(beat) > STALE_AFTER_BEATS * storage.get_heartbeat_interval())


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
