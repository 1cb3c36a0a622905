"""Optuna storage: opening URLs, naming cells, reading back what was stored.

Each cell (task x method x seed, under one profile) is one Optuna study named
``{task}.{method}.{profile}.seed{seed}``. Study user attributes hold what the reports
need (task, method, seed, profile, budget, metric directions, and once the search is
over the chosen hyperparameters and the final-protocol metrics).

Storage URLs: any Optuna RDB URL (``sqlite:///path``, ``postgresql://...``,
``mysql://...``), or ``journal:///path/to/file.log`` for Optuna's JournalStorage with a
file backend. The default is ``sqlite:///<out>/diffhpo.sqlite3``.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from .errors import DiffhpoError

CELL_MARK = "diffhpo_cell"
DEFAULT_DB = "diffhpo.sqlite3"


def default_url(out: Path) -> str:
    return f"sqlite:///{(Path(out) / DEFAULT_DB).resolve()}"


def study_name(task: str, method: str, profile: str, seed: int) -> str:
    return f"{task}.{method}.{profile}.seed{seed}"


def ensure_writable(out: Path) -> Path:
    """Create the output folder and prove it is writable (one clear error otherwise)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".diffhpo-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise DiffhpoError(f"output folder {str(out)!r} is not writable: {exc.strerror or exc}") from None
    return out


DEFAULT_HEARTBEAT_S = 10


def open_storage(url: str, *, heartbeat: float | None = None) -> BaseStorage:
    """Open an Optuna storage, turning connection problems into one clear error.

    Server databases (PostgreSQL, MySQL) get Optuna's heartbeats: every running trial
    records one each ``heartbeat`` seconds (default 10); a trial silent for three intervals
    (its worker was killed) is marked FAILED by the next worker and its configuration is
    retried (RetryFailedTrialCallback, at most 3 times). SQLite and journal files are
    local: there, a trial whose process is gone is detected directly (bench/workers.py).
    """
    try:
        if url.startswith("journal://"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = url[len("journal://"):]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            if not path.parent.exists() or not os.access(path.parent, os.W_OK):
                raise DiffhpoError(f"storage {url!r}: folder {str(path.parent)!r} is missing or not writable")
        kwargs: dict = {}
        if not url.startswith("sqlite"):
            interval = max(1, int(round(heartbeat or DEFAULT_HEARTBEAT_S)))
            kwargs = dict(
                heartbeat_interval=interval, grace_period=3 * interval,
                failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=3),
            )
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
    except DiffhpoError:
        raise
    except Exception as exc:  # sqlalchemy / driver errors vary by backend
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ImportError):  # the database driver is missing
            reason += ' (postgresql:// needs pip install -e ".[postgres]"; mysql:// a driver such as PyMySQL)'
        raise DiffhpoError(
            f"cannot open storage {url!r}: {reason} (valid: sqlite:///FILE, postgresql://..., "
            "mysql://..., journal:///FILE)"
        ) from None


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite:///") and url[len("sqlite:///"):] not in ("", ":memory:"):
        return {"creator": _sqlite_connector(url[len("sqlite:///"):])}
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def _sqlite_connector(path: str):
    """Connections to a SQLite file in write-ahead-log mode with ``synchronous=NORMAL``.

    Optuna commits once per stored value (each user attribute of a trial is its own
    transaction); in SQLite's default rollback-journal mode with full sync every commit
    waits for several fsyncs, which made storage, not the search, most of a quick
    ``quadratic`` run. In WAL mode a commit is one append to the log; a process killed at
    any point (SIGINT, SIGKILL) loses no committed trial, and readers (``diffhpo report``)
    never block the writer. Only an operating-system crash or power loss can drop the
    last commits (the database stays consistent). WAL needs a local file system, as
    SQLite itself does for locking. ``timeout``: wait for a lock instead of failing.
    """
    import sqlite3

    def connect():
        con = sqlite3.connect(path, timeout=60, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    return connect


def cell_studies(storage: BaseStorage) -> list[optuna.study.StudySummary]:
    """Every diffhpo cell study in the storage, as frozen studies."""
    return [s for s in storage.get_all_studies() if s.user_attrs.get(CELL_MARK)]
