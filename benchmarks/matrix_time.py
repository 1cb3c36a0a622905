"""Where the time of a benchmark matrix goes: per task and per method, the search (sampler
and trials), the final protocol, and what lies outside any cell (task set-up, banks,
references, the report).

Run the default matrix (`diffhpo run` with no options) into a fresh folder and time it::

    python benchmarks/matrix_time.py --run [--out DIR] [-- EXTRA diffhpo run OPTIONS]

or read an earlier run's storage, given that run's wall time (from ``/usr/bin/time``)::

    python benchmarks/matrix_time.py --from results [--wall 3300]

Every figure comes from the stored trials (``wall_s`` and ``ask_s`` of each trial, the
final protocol's ``final_measure``), so the table of a run is the table of its storage.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from diffhpo.bench import storage as st
from diffhpo.bench.report import collect


def breakdown(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per task, per task and method) seconds: search, final protocol, their sum; ``trials``
    counts completed trials (pruned and failed ones aside)."""
    c = cells.assign(final_s=cells["final_wall_s"].fillna(0.0), search_s=cells["search_wall_s"].fillna(0.0))
    c["cell_s"] = c["search_s"] + c["final_s"]
    agg = dict(cells=("seed", "size"), trials=("n_trials", "sum"), search_s=("search_s", "sum"),
               final_s=("final_s", "sum"), cell_s=("cell_s", "sum"))
    return c.groupby("task").agg(**agg), c.groupby(["task", "method"]).agg(**agg)


def print_tables(cells: pd.DataFrame, wall: float | None) -> None:
    per_task, per_method = breakdown(cells)
    total = float(per_task["cell_s"].sum())
    whole = wall if wall is not None else total
    per_task["share"] = per_task["cell_s"] / whole
    print("## per task (seconds; share of the whole run)\n")
    print(per_task.round(2).to_markdown())
    print("\n## per task and method (seconds)\n")
    print(per_method.round(1).reset_index().to_markdown(index=False))
    print(f"\ninside cells: {total:.0f} s ({total / 60:.1f} min)")
    if wall is not None:
        outside = wall - total
        print(f"whole run:    {wall:.0f} s ({wall / 60:.1f} min)")
        print(f"outside cells (start-up, task set-up, banks and references, report): {outside:.0f} s "
              f"({outside / wall:.0%})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", action="store_true", help="run `diffhpo run` (the default matrix) and time it")
    g.add_argument("--from", dest="source", type=Path, help="an earlier run's results folder")
    p.add_argument("--out", type=Path, default=None, help="with --run: the results folder (default: a fresh one)")
    p.add_argument("--wall", type=float, default=None, help="with --from: that run's wall seconds")
    p.add_argument("extra", nargs="*", help="with --run: further `diffhpo run` options (after --)")
    a = p.parse_args()
    if a.run:
        out = a.out or Path(f"matrix_time_{time.strftime('%Y%m%d_%H%M%S')}")
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", "diffhpo", "run", "--out", str(out), *a.extra])
        wall = time.perf_counter() - t0
        if rc != 0:
            sys.exit(f"diffhpo run exited with {rc}")
        source = out
    else:
        source, wall = a.source, a.wall
    with st.opened(st.default_url(source), existing=True) as storage:
        _, cells = collect(storage)
    if cells.empty:
        sys.exit(f"no diffhpo cells in {source}")
    print_tables(cells, wall)


if __name__ == "__main__":
    main()
