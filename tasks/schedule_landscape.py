"""The paired landscape of a schedule task (``mnist-schedule``, ``gmm-schedule``): seed noise
against schedule effects, the measurement behind their profile docstrings and grids.

:func:`one_at_a_time` lists the default schedule and the schedules that move one parameter
from the default to the far end of its range; :func:`evaluate` runs the task's
``evaluate`` (one full training, sampling, metrics: a search trial) on each of them for
seeds ``0 .. n-1``; :func:`ratio` is the landscape ratio

    (max over schedules of the mean metric - min over schedules of the mean metric)
    / (largest standard deviation over seeds of one schedule),

how many seed spreads the differences between schedules span.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping


def one_at_a_time(task) -> list[tuple[str, dict]]:
    default = task.default_params()
    out = [("default", default)]
    for name, (lo, hi) in task.ranges.items():
        far = hi if abs(default[name] - lo) <= abs(default[name] - hi) else lo
        out.append((f"{name}={far:g}", {**default, name: far}))
    return out


def evaluate(task, seeds: int, *, final: bool = False, paired: bool = True,
             log: Callable[[str, int, dict, float], None] | None = None) -> dict[str, list[float]]:
    """``{schedule label: [primary metric per seed]}`` (moved schedules on seed 0 only unless ``paired``)."""
    values: dict[str, list[float]] = {}
    for label, params in one_at_a_time(task):
        for seed in range(seeds if paired or label == "default" else 1):
            t0 = time.perf_counter()
            m = task.evaluate(params, seed, final=final)
            if log is not None:
                log(label, seed, m, time.perf_counter() - t0)
            values.setdefault(label, []).append(m[task.primary.name])
    return values


def ratio(values: Mapping[str, list[float]]) -> float:
    """The landscape ratio of the module docstring (needs two seeds per schedule)."""
    means = [statistics.mean(v) for v in values.values()]
    spread = max(statistics.stdev(v) for v in values.values())
    return (max(means) - min(means)) / spread if spread > 0 else float("inf")
