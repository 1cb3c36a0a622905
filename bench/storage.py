"""Optuna storage: opening URLs, naming cells, reading back what was stored.

Each cell (task x method x seed, under one profile) is one Optuna study named
``{task}.{method}.{profile}.seed{seed}``. Study user attributes hold what the reports
need (task, method, seed, profile, budget, metric directions, and once the search is
over the chosen hyperparameters and the final-protocol metrics).

Storage URLs: any Optuna RDB URL (``sqlite:///path``, ``postgresql://...``,
``mysql://...``), ``journal:///path/to/file.log`` for Optuna's JournalStorage with a
file backend, or ``grpc://HOST:PORT`` for Optuna's ``GrpcStorageProxy`` in front of a
``diffhpo storage-proxy`` (:func:`serve_proxy`). The default is ``sqlite:///<out>/diffhpo.sqlite3``.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
from optuna.storages import BaseStorage

from . import workers
from .contracts.errors import DiffhpoError
from .provenance import redact_url as shown

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


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written into, or None; creates nothing (a probe
    file in the nearest existing folder is made and removed at once, since permission bits
    say nothing about read-only mounts, or to root)."""
    import tempfile

    probe = Path(os.path.abspath(folder))
    while not probe.exists():
        if probe.is_symlink():
            return f"{probe} is a broken link"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return f"{probe} is not writable ({exc.strerror or exc})"
    return None


DEFAULT_HEARTBEAT_S = 10
VALID_URLS = "sqlite:///FILE, postgresql://..., mysql://..., journal:///FILE, grpc://HOST:PORT"
_SCHEMES = ("sqlite", "postgresql", "mysql", "journal", "grpc")
GRPC_WAIT_S = 5.0  # how long a grpc:// storage waits for its proxy before refusing the run


def grpc_address(url: str) -> tuple[str, int]:
    """(host, port) of a ``grpc://HOST:PORT`` URL, refused with one line when it has no host,
    no valid port, or a path, user or query (the proxy serves one storage at one address)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or not 0 < port < 65536 or parts.path.strip("/") or parts.query \
            or parts.username:
        raise DiffhpoError(f"storage {shown(url)!r} is not a gRPC proxy address; valid: grpc://HOST:PORT "
                           "(a `diffhpo storage-proxy` listening there)")
    return parts.hostname, port


def check_url(url: str) -> str:
    """Refuse storage URLs that cannot keep results: empty, unknown schemes, URLs that
    SQLAlchemy cannot parse, and SQLite in memory (the whole run would be computed and
    nothing kept); and a file that exists but is not a storage of its kind
    (:func:`check_file`). Nothing is written. Messages show the URL through
    :func:`~diffhpo.bench.provenance.redact_url` (no password)."""
    scheme = url.partition("://")[0].partition("+")[0].lower()
    if not url.strip():
        raise DiffhpoError(f"--storage is empty; valid: {VALID_URLS}")
    if "://" not in url or scheme not in _SCHEMES:
        raise DiffhpoError(f"storage {shown(url)!r} is not a storage URL; valid: {VALID_URLS}")
    if scheme == "grpc":
        grpc_address(url)
        return url
    if scheme != "journal":
        from sqlalchemy.engine import make_url

        try:
            make_url(url)
        except Exception:  # its message may quote the password: name only the URL, redacted
            raise DiffhpoError(f"storage {shown(url)!r} is not a valid database URL (SQLAlchemy cannot parse it; "
                               "a password with '@', ':' or '/' in it can be written with %40, %3A, %2F); "
                               f"valid: {VALID_URLS}") from None
    if scheme == "sqlite" and url.partition("://")[2].lstrip("/") in ("", ":memory:"):
        raise DiffhpoError(f"storage {shown(url)!r} is an in-memory database, which keeps nothing; valid: {VALID_URLS}")
    if scheme == "journal" and not url[len("journal://"):].strip("/"):
        raise DiffhpoError(f"storage {shown(url)!r} names no file; valid: {VALID_URLS}")
    check_file(url)
    return url


def _sqlite_tables(path: Path) -> set[str] | None:
    """The tables of the SQLite file ``path``, read through a read-only connection (nothing
    is created or written); None when it is not a SQLite database. Any other failure (an
    unreadable file, a lock) is an OSError with SQLite's message."""
    import sqlite3

    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):  # SQLITE_NOTADB
            return None
        raise OSError(str(exc)) from None


def _is_journal(path: Path) -> bool:
    """Whether the file's first line is one of Optuna's journal records (a JSON object with
    an ``op_code``, as :class:`optuna.storages.journal.JournalFileBackend` writes them)."""
    import json

    with open(path, "rb") as fh:
        first = fh.readline(1 << 20)
    try:
        record = json.loads(first)
    except ValueError:  # not JSON, not UTF-8, or a first line cut short
        return False
    return isinstance(record, dict) and "op_code" in record


def check_file(url: str, *, existing: bool = False) -> None:
    """Refuse a storage file that exists but is no storage of its URL's kind, before
    anything opens it: opening would write into it (Optuna creates its tables inside any
    SQLite database, and appends its records to any file named by a journal URL).

    Choices: an empty file is a new storage (nothing of the user's is in it), but not one
    to read from, where it is refused if SQLite (opening would create Optuna's tables); a SQLite
    database must hold Optuna's ``studies`` table, or no table at all; a journal's first
    line must be an Optuna record (checking the first line finds a foreign file; a journal
    cut short at its end is another matter). ``existing``: the storage is to be read, so a
    SQLite database without Optuna's tables is refused too (``diffhpo report``).
    """
    path = _file_of(url)
    if path is None or not path.exists():
        return
    if not path.is_file():
        raise DiffhpoError(f"storage {shown(url)!r}: {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        if existing and not url.startswith("journal://"):  # SQLite would create its tables in it
            raise DiffhpoError(f"storage {shown(url)!r} is an empty file, not an Optuna storage; nothing to read")
        return
    try:
        if url.startswith("journal://"):
            if not _is_journal(path):
                raise DiffhpoError(f"storage {shown(url)!r} is not an Optuna journal (its first line is not a "
                                   "journal record); nothing written: name a new file or an existing journal")
            return
        tables = _sqlite_tables(path)
    except OSError as exc:
        raise DiffhpoError(f"cannot open storage {shown(url)!r}: {exc.strerror or exc}") from None
    if tables is None:
        raise DiffhpoError(f"cannot open storage {shown(url)!r}: file is not a database; nothing written")
    if "studies" not in tables and (tables or existing):
        held = f" (it holds tables {', '.join(sorted(tables))})" if tables else ""
        raise DiffhpoError(f"storage {shown(url)!r} is a SQLite database but not an Optuna storage{held}; "
                           "nothing written: name a new file or an Optuna storage")


def _file_of(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if url.startswith("journal://"):
        return Path(url[len("journal://"):])
    return None


def open_existing(url: str, *, heartbeat: float | None = None) -> BaseStorage:
    """Open a storage for reading without creating one: a file storage must exist, and a
    database server must already hold Optuna's tables."""
    check_url(url)
    path = _file_of(url)
    if path is not None and not path.is_file():
        raise DiffhpoError(f"storage {shown(url)!r}: no such file {str(path)!r}; nothing to read")
    check_file(url, existing=True)
    if path is None and not url.startswith("grpc://"):
        try:
            import sqlalchemy

            engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
            try:
                has = sqlalchemy.inspect(engine).has_table("studies")
            finally:
                engine.dispose()
        except Exception as exc:
            raise DiffhpoError(f"cannot open storage {shown(url)!r}: {_first_line(exc, url)}") from None
        if not has:
            raise DiffhpoError(f"storage {shown(url)!r} holds no Optuna studies; nothing to read")
    return open_storage(url, heartbeat=heartbeat)


@contextmanager
def opened(url: str, *, heartbeat: float | None = None, existing: bool = False) -> Iterator[BaseStorage]:
    """A storage for the duration of a block, its connections closed afterwards (a SQLite
    file in WAL mode is then checkpointed and its -wal/-shm side files removed)."""
    storage = open_existing(url, heartbeat=heartbeat) if existing else open_storage(url, heartbeat=heartbeat)
    try:
        yield storage
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()
        if url.startswith("grpc://"):
            storage.close()


def _first_line(exc: BaseException, url: str = "") -> str:
    """The first line of an error's message, with ``url``'s password hidden should a
    driver quote it."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if url:
        from sqlalchemy.engine import make_url

        try:
            password = make_url(url).password if not url.startswith("journal://") else None
        except Exception:  # not parseable: check_url refuses it before anything is opened
            password = None
        line = line.replace(url, shown(url))
        if password:
            line = line.replace(password, "***")
    return line


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn a storage failure in the middle of a run (a corrupted file, a full disk, a lost
    server) into one line naming the storage and the cause. Every trial committed before
    it stays, and rerunning the same command resumes."""
    import sqlalchemy.exc

    kinds: tuple = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError)
    if url.startswith("grpc://"):
        try:
            import grpc
        except ImportError:  # opening the storage says what to install
            pass
        else:
            kinds += (grpc.RpcError,)  # the proxy stopped or lost its database
    try:
        yield
    except kinds as exc:
        inner = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
        cause = _first_line(getattr(inner, "orig", None) or inner, url)
        raise DiffhpoError(
            f"storage {shown(url)!r} failed: {cause}; the trials stored before it are kept, "
            "rerun the same command to resume once the cause is fixed"
        ) from None


def open_storage(url: str, *, heartbeat: float | None = None) -> BaseStorage:
    """Open an Optuna storage, turning connection problems into one clear error.

    Server databases (PostgreSQL, MySQL) get Optuna's heartbeats: every running trial
    records one each ``heartbeat`` seconds (default 10); a trial silent for three intervals
    (its worker was killed) is marked FAILED by the next worker and its configuration is
    retried (:func:`diffhpo.bench.workers.retry`, at most 3 times). SQLite and journal files are
    local: there, a trial whose process is gone is detected directly (bench/workers.py).

    ``grpc://HOST:PORT``: Optuna's ``GrpcStorageProxy``, after waiting up to ``GRPC_WAIT_S``
    seconds for the proxy (no proxy there: one clear error before any work). Optuna's proxy
    has no heartbeat call, so its client gets the same heartbeats as a trial system
    attribute (:class:`workers.HeartbeatProxy`): a trial cut off on any machine is failed
    and retried by the next worker anywhere, as on PostgreSQL.
    """
    check_url(url)
    if url.startswith("grpc://"):
        return _grpc_client(url, heartbeat)
    try:
        if url.startswith("journal://"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = url[len("journal://"):]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            if not path.parent.exists() or not os.access(path.parent, os.W_OK):
                raise DiffhpoError(f"storage {shown(url)!r}: folder {str(path.parent)!r} is missing or not writable")
        kwargs: dict = {}
        if not url.startswith("sqlite"):
            interval = heartbeat_interval(heartbeat)
            kwargs = dict(heartbeat_interval=interval, grace_period=workers.STALE_AFTER_BEATS * interval)
            kwargs[_STALE_CALLBACK] = workers.retry
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
    except DiffhpoError:
        raise
    except Exception as exc:  # sqlalchemy / driver errors vary by backend
        reason = _first_line(exc, url)
        if isinstance(exc, ImportError):  # the database driver is missing
            reason += ' (postgresql:// needs pip install -e ".[postgres]"; mysql:// a driver such as PyMySQL)'
        raise DiffhpoError(
            f"cannot open storage {shown(url)!r}: {reason} (valid: {VALID_URLS})"
        ) from None


# RDBStorage's argument for the stale-trial callback: Optuna 4.9 renamed it (the old name warns)
_STALE_CALLBACK = ("heartbeat_stale_trial_callback"
                   if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                   else "failed_trial_callback")


def heartbeat_interval(heartbeat: float | None) -> int:
    """Whole seconds between a running trial's heartbeats (``--heartbeat``, default 10); a
    trial silent for three of them is stale."""
    return max(1, int(round(heartbeat or DEFAULT_HEARTBEAT_S)))


def _grpc_client(url: str, heartbeat: float | None = None) -> BaseStorage:
    host, port = grpc_address(url)
    try:
        import grpc  # noqa: F401  (GrpcStorageProxy imports it lazily)
    except ImportError:
        raise DiffhpoError(f'storage {shown(url)!r} needs the grpcio and protobuf packages: pip install -e ".[grpc]"') \
            from None
    interval = heartbeat_interval(heartbeat)
    proxy = workers.HeartbeatProxy(host=host, port=port, heartbeat_interval=interval,
                                   grace_period=workers.STALE_AFTER_BEATS * interval, failed_trial_callback=workers.retry)
    try:
        proxy.wait_server_ready(timeout=GRPC_WAIT_S)
    except ConnectionError:
        proxy.close()
        raise DiffhpoError(f"no storage proxy answers at {shown(url)!r} (waited {GRPC_WAIT_S:g} s); start one with "
                           "`diffhpo storage-proxy --storage postgresql://... --port PORT`") from None
    return proxy


PROXY_BACKENDS = "postgresql://..., mysql://..., sqlite:///FILE"


def serve_proxy(url: str, host: str, port: int, *, threads: int = 10,
                on_ready=lambda: None) -> None:
    """``diffhpo storage-proxy``: serve the storage ``url`` to ``grpc://HOST:PORT`` clients with
    Optuna's gRPC proxy (``optuna.storages.run_grpc_proxy_server``'s server, built by its
    ``make_server`` so that a port already taken is refused with one line instead of a
    server that serves nothing) until interrupted.

    Choices: the backend is an RDB storage (PostgreSQL, MySQL, or SQLite, which then has one
    process, the proxy, as SQLite needs); Optuna's proxy does not support JournalStorage
    (optuna/optuna#6084), and a proxy in front of a proxy is pointless, so both are refused.
    The RDB storage is wrapped in Optuna's ``_CachedStorage`` through ``get_storage``, as
    Optuna's documentation of the proxy asks. ``threads``: the server's thread pool
    (Optuna's default, 10: calls are short, so many more workers than threads are served)."""
    from concurrent.futures import ThreadPoolExecutor

    check_url(url)
    scheme = url.partition("://")[0].partition("+")[0].lower()
    if scheme not in ("postgresql", "mysql", "sqlite"):
        raise DiffhpoError(f"storage-proxy serves a database, not {shown(url)!r} (Optuna's gRPC proxy does not "
                           f"support journal files); valid: {PROXY_BACKENDS}")
    if not 0 < port < 65536:
        raise DiffhpoError(f"--port must be between 1 and 65535, got {port}")
    if threads < 1:
        raise DiffhpoError(f"--threads must be at least 1, got {threads}")
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's own C-level log lines: the errors below say it
    try:
        import grpc  # noqa: F401
        from optuna.storages._grpc.server import make_server
    except ImportError:
        raise DiffhpoError('storage-proxy needs the grpcio and protobuf packages: pip install -e ".[grpc]"') from None
    taken = f"storage-proxy cannot listen on {host}:{port} (the port is taken, or the host is not an address of " \
            "this machine); nothing served"
    import socket

    try:  # before the database is opened (which creates Optuna's tables in an empty one)
        with socket.create_server((host, port)):
            pass
    except OSError:
        raise DiffhpoError(taken) from None
    backend = optuna.storages.get_storage(open_storage(url))
    try:
        server = make_server(backend, host, port, ThreadPoolExecutor(max_workers=threads))
    except RuntimeError:  # grpc: "Failed to bind to address" (taken in the meantime)
        raise DiffhpoError(taken) from None
    server.start()
    try:
        on_ready()
        server.wait_for_termination()
    finally:
        server.stop(grace=2).wait()


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


def cell_studies(storage: BaseStorage, *, tasks=None, methods=None,
                 profiles=None) -> list[optuna.study.StudySummary]:
    """Every diffhpo cell study in the storage, as frozen studies; with ``tasks``,
    ``methods`` or ``profiles`` (collections of names), only the cells among them."""
    def keep(a: dict) -> bool:
        return all(want is None or a.get(key) in want
                   for key, want in (("task", tasks), ("method", methods), ("profile", profiles)))

    return [s for s in storage.get_all_studies() if s.user_attrs.get(CELL_MARK) and keep(s.user_attrs)]
