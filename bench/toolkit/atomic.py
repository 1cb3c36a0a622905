"""Every output file written atomically: a reader (or a full disk) never sees half a file.

:func:`write` is the one writer of the report's files (csv, parquet, md, html, png, json):
the content goes into a temporary file in the same folder, which is flushed to disk and
then renamed over the target with :func:`os.replace` (atomic on POSIX within one file
system, hence the same folder). If anything fails on the way (a full disk, a file-size
limit, a permission), the temporary file is removed, the target keeps its previous
content (or stays absent), and the failure is one :class:`DiffhpoError` naming the path.

Choices: the temporary file is named ``.NAME.<random>.tmp<suffix>``: hidden, and with the
target's suffix, since writers infer the format from it (``savefig``, ``to_parquet``,
``to_csv``'s compression). It is created with mode 0o666 less the umask, as ``open``
would create the target, not 0o600 as :func:`tempfile.mkstemp` would. It is fsynced
before the rename, so that a crash right after cannot leave an empty file in the
target's place. A process killed (SIGKILL) in the middle of a write can leave its hidden
temporary file behind, never a truncated target.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

from ..contracts.errors import DiffhpoError


def write(path: Path, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp)`` to write the content to a temporary path, then move it to
    ``path``; returns ``path``. ``writer`` gets a path with ``path``'s suffix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass  # never created, or already gone
        if isinstance(exc, OSError):
            text = str(exc).strip()
            reason = exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
            raise DiffhpoError(f"cannot write {str(path)!r}: {reason}; that file is left as it was "
                               "(every file written before it is complete)") from None
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """:func:`write` of a text (UTF-8)."""
    return write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def write_csv(frame, path: Path) -> Path:
    """:func:`write` of a data frame as CSV, without its index."""
    return write(path, lambda p: frame.to_csv(p, index=False))


def save_figure(fig, path: Path, **savefig_kwargs) -> Path:
    """:func:`write` of a matplotlib figure (``fig.savefig``), which is closed afterwards,
    also when the write fails."""
    import matplotlib.pyplot as plt

    try:
        return write(path, lambda p: fig.savefig(p, **savefig_kwargs))
    finally:
        plt.close(fig)
