"""Search-space helpers shared by the methods: the box, log scale, steps and projection.

Optuna's numeric distributions are honoured as Optuna defines them: a value is clipped to
``[low, high]``, rounded to the grid ``low + k * step`` when the distribution has a step
(``IntDistribution`` always has one, 1 unless given), and returned as ``int`` for an
``IntDistribution`` and ``float`` for a ``FloatDistribution``. A distribution with
``low == high`` (a range of a single value) is *fixed*: nothing can move in it.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any, Mapping

import numpy as np
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution, distribution_to_json


def is_log(dist: BaseDistribution) -> bool:
    return bool(getattr(dist, "log", False))


def is_numeric(dist: BaseDistribution) -> bool:
    return isinstance(dist, (FloatDistribution, IntDistribution))


def is_movable(dist: BaseDistribution) -> bool:
    """A numeric distribution with more than one value (a coordinate a method can move)."""
    return is_numeric(dist) and dist.high > dist.low


def to_internal(dist: BaseDistribution, value: float) -> float:
    """The coordinate in which the methods move: log(value) for log-scale parameters."""
    return math.log(value) if is_log(dist) else float(value)


def snap(dist: BaseDistribution, value: float) -> Any:
    """``value`` as a member of ``dist``: clipped, rounded to its step, of its type."""
    low, high = dist.low, dist.high
    value = min(max(float(value), low), high)
    step = getattr(dist, "step", None)
    if step is not None:
        value = low + round((value - low) / step) * step
        value = min(max(value, low), high)
    if isinstance(dist, IntDistribution):
        return int(round(value))
    return float(value)


def from_internal(dist: BaseDistribution, u: float) -> Any:
    return snap(dist, math.exp(u) if is_log(dist) else float(u))


def bounds(space: Mapping[str, BaseDistribution]) -> np.ndarray:
    """Internal-coordinate box, shape (d, 2)."""
    out = []
    for name, dist in space.items():
        if not is_numeric(dist):
            raise ValueError(f"parameter {name!r}: only numeric distributions are supported")
        out.append((to_internal(dist, dist.low), to_internal(dist, dist.high)))
    return np.asarray(out, dtype=float).reshape(-1, 2)


def centre(space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """Midpoint of the box in internal coordinates (geometric mean for log scale)."""
    box = bounds(space)
    return {
        name: from_internal(dist, float(box[i].mean()))
        for i, (name, dist) in enumerate(space.items())
    }


def fingerprint(space: Mapping[str, BaseDistribution]) -> str:
    """A short tag of a search space (names and distributions), stable across processes."""
    text = json.dumps(sorted((n, distribution_to_json(d)) for n, d in space.items()))
    return f"{zlib.crc32(text.encode()):08x}"
