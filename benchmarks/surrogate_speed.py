"""The surrogate tasks' performance targets (issue 23): one evaluation in at most 5 ms, and every
method x 50 seeds on a surrogate in at most 3 minutes on 2 cores, with the samplers' share
(BoTorch's separately).

1. **One evaluation**: ``N`` seeded random configurations of the task's space, each evaluated on
   its own seed (search-time, with the fidelity reporter where the task has checkpoints) and once
   under the final protocol; median, 95th percentile and maximum milliseconds, and the time of
   the first construction (the model fit, or its cache).
2. **The matrix**: ``diffhpo run -t TASK -m all --seeds S`` into a fresh folder, timed as a whole
   process; from its storage, per method: cells, trials, the samplers' time (every trial's
   ``ask_s``: the proposal, which for BoTorch includes its model fit), the evaluations' time (every
   trial's ``wall_s``), and the rest of the cells' time (storage, the final protocol, the
   runner).

Run on an idle machine (the figures are wall times)::

    python benchmarks/surrogate_speed.py --task mnist-schedule-surrogate --seeds 50
    python benchmarks/surrogate_speed.py --task gmm-schedule-surrogate --evaluations 200 --no-matrix
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from diffhpo.bench import storage as st
from diffhpo.bench.contracts import space as sp
from diffhpo.bench.contracts.registry import TASKS
from diffhpo.bench.report import collect


def evaluation_times(name: str, profile: str, n: int, seed: int = 0) -> None:
    t0 = time.perf_counter()
    task = TASKS.get(name)(profile)
    built = time.perf_counter() - t0
    space = task.search_space()
    rng = np.random.default_rng(seed)
    names = list(space)
    lo, hi = sp.bounds(space).T
    checkpoints = tuple(getattr(task.config, "checkpoints", ())) if task.has_fidelity else ()
    search, final = [], []
    for i in range(n):
        u = lo + (hi - lo) * rng.random(len(names))
        params = {k: sp.from_internal(space[k], float(x)) for k, x in zip(names, u)}
        kwargs = {"report": lambda f, v: None} if checkpoints else {}
        t = time.perf_counter()
        task.evaluate(params, i, **kwargs)
        search.append(time.perf_counter() - t)
        t = time.perf_counter()
        task.evaluate(params, 1000 + i, final=True)
        final.append(time.perf_counter() - t)
    print(f"## {name} ({profile}): one evaluation, {n} random configurations\n")
    rows = [{"evaluation": what, "median ms": 1e3 * np.median(x), "p95 ms": 1e3 * np.percentile(x, 95),
             "max ms": 1e3 * np.max(x)} for what, x in (("search", search), ("final protocol", final))]
    print(pd.DataFrame(rows).round(2).to_markdown(index=False))
    print(f"\nfirst construction (model fit or its cache): {built:.2f} s; target: at most 5 ms per evaluation\n")


def matrix_times(name: str, profile: str, seeds: int, out: Path | None) -> None:
    out = out or Path(tempfile.mkdtemp(prefix="surrogate_speed_"))
    cmd = [sys.executable, "-m", "diffhpo", "run", "-t", name, "-m", "all", "-p", profile, "--seeds", str(seeds),
           "--out", str(out), "--no-progress"]
    print("$ " + " ".join(cmd[1:]))
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"diffhpo run exited with {rc}")
    with st.opened(st.default_url(out), existing=True) as storage:
        trials, cells = collect(storage)
    c = cells.assign(cell_s=cells["search_wall_s"].fillna(0.0) + cells["final_wall_s"].fillna(0.0))
    per = c.groupby("method").agg(cells=("seed", "size"), cell_s=("cell_s", "sum"))
    t = trials.assign(ask_s=pd.to_numeric(trials["ask_s"], errors="coerce").fillna(0.0),
                      wall_s=pd.to_numeric(trials["wall_s"], errors="coerce").fillna(0.0))
    per = per.join(t.groupby("method").agg(trials=("number", "size"), sampler_s=("ask_s", "sum"),
                                           evaluations_s=("wall_s", "sum")))
    per["rest_s"] = per["cell_s"] - per["sampler_s"] - per["evaluations_s"]
    per.loc["all methods"] = per.sum(numeric_only=True)
    print(f"\n## {name} ({profile}): every method x {seeds} seeds\n")
    print(per.round(1).reset_index().to_markdown(index=False))
    total = float(per.loc["all methods", "cell_s"])
    sampler = float(per.loc["all methods", "sampler_s"])
    bo = float(per.loc["botorch", "sampler_s"]) if "botorch" in per.index else float("nan")
    print(f"\nwhole run: {wall:.0f} s ({wall / 60:.1f} min; target: at most 3 min); inside cells {total:.0f} s, "
          f"of which samplers {sampler:.0f} s (BoTorch {bo:.0f} s); outside cells (start-up, model fit, report) "
          f"{wall - total:.0f} s. Storage: {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="gmm-schedule-surrogate")
    p.add_argument("--profile", default="quick")
    p.add_argument("--evaluations", type=int, default=200)
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--out", type=Path, default=None, help="results folder of the matrix (default: a fresh one)")
    p.add_argument("--no-matrix", action="store_true", help="only time single evaluations")
    a = p.parse_args()
    if a.task not in TASKS.names():
        sys.exit(f"error: unknown task {a.task!r}; valid: {', '.join(TASKS.names())}")
    evaluation_times(a.task, a.profile, a.evaluations)
    if not a.no_matrix:
        matrix_times(a.task, a.profile, a.seeds, a.out)


if __name__ == "__main__":
    main()
