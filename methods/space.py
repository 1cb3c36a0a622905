"""Search-space helpers shared by the methods: the box, log scale and projection."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution


def is_log(dist: BaseDistribution) -> bool:
    return bool(getattr(dist, "log", False))


def to_internal(dist: BaseDistribution, value: float) -> float:
    """The coordinate in which the methods move: log(value) for log-scale parameters."""
    return math.log(value) if is_log(dist) else float(value)


def from_internal(dist: BaseDistribution, u: float) -> float:
    value = math.exp(u) if is_log(dist) else float(u)
    low, high = dist.low, dist.high
    value = min(max(value, low), high)
    if isinstance(dist, IntDistribution):
        return int(round(value))
    return value


def bounds(space: Mapping[str, BaseDistribution]) -> np.ndarray:
    """Internal-coordinate box, shape (d, 2)."""
    out = []
    for name, dist in space.items():
        if not isinstance(dist, (FloatDistribution, IntDistribution)):
            raise ValueError(f"parameter {name!r}: only numeric distributions are supported")
        out.append((to_internal(dist, dist.low), to_internal(dist, dist.high)))
    return np.asarray(out, dtype=float)


def centre(space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """Midpoint of the box in internal coordinates (geometric mean for log scale)."""
    box = bounds(space)
    return {
        name: from_internal(dist, float(box[i].mean()))
        for i, (name, dist) in enumerate(space.items())
    }
