"""Where diffhpo keeps derived files (parsed data sets, reference statistics).

``DIFFHPO_CACHE`` overrides the default ``~/.cache/diffhpo``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def config_key(description: dict[str, Any]) -> str:
    """A stable key of a configuration (a task's ``describe_config()``, or the copy stored
    with a cell: JSON turns tuples into lists, which serialise alike)."""
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class CacheWarning(UserWarning):
    """A cached file could not be read; it was removed and is rebuilt (:func:`unreadable`)."""


def cache_root() -> Path:
    """The diffhpo cache folder (not created): ``$DIFFHPO_CACHE``, else ``~/.cache/diffhpo``."""
    return Path(os.environ.get("DIFFHPO_CACHE", Path.home() / ".cache" / "diffhpo"))


def unreadable(path: str | Path, exc: BaseException) -> None:
    """A cached file failed to load (truncated, empty, corrupted): name it in one warning
    line and remove it, so that the caller rebuilds it. Rebuilding is the choice because
    every file under the cache is derived and can be made again; a file that cannot be
    removed is refused instead (:class:`~diffhpo.bench.contracts.errors.CacheError`, naming it)."""
    import warnings

    from ..contracts.errors import CacheError

    path = Path(path)
    why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise CacheError(f"cached file {path} could not be read ({why}) nor removed ({err.strerror}); "
                         "delete it and rerun") from None
    warnings.warn(f"cached file {path} could not be read ({why}); removed, rebuilding it", CacheWarning,
                  stacklevel=2)


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the diffhpo cache."""
    root = cache_root()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def torch_save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: a reader (another
    worker, a resumed run) never sees a half-written file."""
    import torch

    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path
