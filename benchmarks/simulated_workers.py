"""Best value against simulated wall time with 1, 4 and 16 simulated asynchronous workers.

Runs one method (default TPE) on a task with a time model with ``--simulate-workers`` 1, 4
and 16 (bench/simulate.py), the same budget of trials each, and prints the median over
seeds of the best-so-far regret at simulated times, from the report's own curve code
(:func:`diffhpo.bench.analysis.regret.search_path` on :func:`diffhpo.bench.report.collect`).

The task: by default ``quadratic-timed``, the ``quadratic`` task (quick profile, 5
hyperparameters, known optimum) given a time model defined here, because no surrogate task
with a recorded time model exists yet: one lower-level solve is modelled to take
``30 + 90 u`` seconds, ``u`` in [0, 1] the mean position of the log-alphas in their range
from the top (weak regularisation, an ill-conditioned system, is slow), plus a
deterministic +-10% jitter from (params, seed). ``--task NAME`` uses any registered task
with ``modelled_seconds`` instead (a surrogate task, once there).

    python benchmarks/simulated_workers.py [--method tpe] [--seeds 5] [--budget 64] [--task NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

from diffhpo.bench import storage as st
from diffhpo.bench.analysis.regret import search_path, value_at
from diffhpo.bench.contracts.registry import TASKS
from diffhpo.bench.report import collect
from diffhpo.bench.runner import RunSpec, run_matrix
from diffhpo.tasks.quadratic import QuadraticTask

WORKERS = (1, 4, 16)


class TimedQuadratic(QuadraticTask):
    """``quadratic`` with a modelled wall time per evaluation (see the module docstring)."""

    name = "quadratic-timed"
    description = "quadratic with a modelled evaluation time (benchmarks/simulated_workers.py)"

    def modelled_seconds(self, params, seed) -> float:
        lo, hi = np.log(self.config.alpha_low), np.log(self.config.alpha_high)
        u = float(np.mean([(hi - np.log(float(params[k]))) / (hi - lo) for k in self.param_names]))
        key = json.dumps([sorted((k, round(float(v), 12)) for k, v in params.items()), int(seed)])
        jitter = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF  # in [0, 1]
        return (30.0 + 90.0 * u) * (0.9 + 0.2 * jitter)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="quadratic-timed")
    ap.add_argument("--method", default="tpe")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=64)
    ap.add_argument("--profile", default="quick")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "quadratic-timed" not in TASKS.names():
        TASKS.register("quadratic-timed", TimedQuadratic)
    curves, ends, seconds = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in WORKERS:
            out = Path(tmp) / f"w{n}"
            t0 = time.perf_counter()
            run_matrix(RunSpec(tasks=[args.task], methods=[args.method], seeds=list(range(args.seeds)),
                               profile=args.profile, out=out, budget=args.budget, progress=False,
                               simulate_workers=n), log=lambda s: None)
            seconds[n] = time.perf_counter() - t0
            trials, cells = collect(st.open_storage(st.default_url(out)))
            curves[n] = []
            for _, c in cells.iterrows():
                t = trials[(trials.seed == c.seed)]
                path = search_path(t, c.direction == "maximize")
                # signed (best - optimum, minimise): a noisy search value can fall below a
                # surrogate's optimum, which is the optimum of its mean; |.| would then grow
                # as the search improves
                sign = -1.0 if c.direction == "maximize" else 1.0
                path = path.assign(best=sign * (path.best - c.optimum) if np.isfinite(c.optimum) else path.best)
                curves[n].append(path)
            ends[n] = float(np.median([p.elapsed_s.max() for p in curves[n]]))
    first = min(float(p.elapsed_s.min()) for ps in curves.values() for p in ps)  # the first result of any run
    grid = np.geomspace(max(first, 1e-3), max(ends.values()), 12)
    what = "regret" if np.isfinite(cells.optimum.iloc[0]) else "best value"
    print(f"{args.task} ({args.profile}), {args.method}, budget {args.budget:g}, {args.seeds} seeds: "
          f"median {what} so far at simulated time (NaN: no result yet; regret is signed, search value minus "
          f"the task's optimum, negative where a noisy value beats the optimum of a surrogate's mean)")
    print("| simulated s | " + " | ".join(f"{n} worker{'s' * (n > 1)}" for n in WORKERS) + " |")
    print("| ---: | " + " | ".join("---:" for _ in WORKERS) + " |")
    for x in grid:
        vals = []
        for n in WORKERS:
            with np.errstate(all="ignore"):
                v = np.array([value_at(p, np.array([x]), axis="elapsed_s")[0] for p in curves[n]])
            vals.append(f"{np.nanmedian(v):.4g}" if np.isfinite(v).sum() * 2 > len(v) else "NaN")
        print(f"| {x:,.0f} | " + " | ".join(vals) + " |")
    print("| end of search (median s) | " + " | ".join(f"{ends[n]:,.0f}" for n in WORKERS) + " |")
    print("| final " + what + " (median) | " + " | ".join(
        f"{np.median([p.best.iloc[-1] for p in curves[n]]):.4g}" for n in WORKERS) + " |")
    print("real seconds of the simulation: " + ", ".join(f"{n} workers {seconds[n]:.1f}" for n in WORKERS))


if __name__ == "__main__":
    main()
