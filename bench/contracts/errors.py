"""User-facing errors."""


class DiffhpoError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (SIGINT): the running trial is marked interrupted."""

    signal_name = "SIGTERM"


class CacheError(RuntimeError):
    """A cached file cannot be read and cannot be removed to be rebuilt (its path named)."""


#: Prefix of the ``fail_reason`` of a trial that failed for a cause outside its configuration.
ENVIRONMENT = "environment"


def environment_cause(exc: BaseException) -> BaseException | None:
    """The exception, in ``exc``'s chain (``__cause__``/``__context__``), that shows a trial
    failed for a cause outside its configuration, or None.

    Classification (a choice: what a rerun on a repaired machine can fix): every
    :class:`OSError` (a missing file, permissions, a full disk, a read-only folder, a lost
    connection), and the errors of reading a truncated or corrupted file: :class:`EOFError`,
    :class:`zipfile.BadZipFile`, :class:`pickle.UnpicklingError` and :class:`CacheError`.
    Everything else (a ``ValueError`` of a parameter, a NaN, a CUDA out-of-memory error, which
    a configuration can cause) belongs to the configuration, and its trial counts as failed."""
    import pickle
    import zipfile

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, CacheError)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
