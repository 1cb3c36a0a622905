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


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the diffhpo cache."""
    root = Path(os.environ.get("DIFFHPO_CACHE", Path.home() / ".cache" / "diffhpo"))
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
