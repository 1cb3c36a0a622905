"""Where diffhpo keeps derived files (parsed data sets, reference statistics).

``DIFFHPO_CACHE`` overrides the default ``~/.cache/diffhpo``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the diffhpo cache."""
    root = Path(os.environ.get("DIFFHPO_CACHE", Path.home() / ".cache" / "diffhpo"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
