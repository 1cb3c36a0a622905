"""Where the reward tasks keep their final-protocol files (sample grids, premise tables), shared by
the tasks (:mod:`.common`) and their plots (:mod:`.plots`), so that neither imports the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def final_grid_dir(task_name: str, profile: str) -> Path:
    """Folder of the final-protocol sample grids of one reward task and profile."""
    from ...bench.toolkit.cache import cache_dir

    return cache_dir("reward-final", task_name, profile)


def _params_key(params: Mapping[str, Any]) -> str:
    if not params:
        return "none"
    return "_".join(f"{k}{float(v):.6g}" for k, v in sorted(params.items()))
