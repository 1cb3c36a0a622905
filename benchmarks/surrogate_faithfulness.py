"""Faithfulness of a surrogate task (issue 23, item 4): the same matrix on the real task and on
its surrogate, the methods' mean final ranks side by side, Kendall's tau between them, and
whether the Friedman and Nemenyi conclusions agree.

    python benchmarks/surrogate_faithfulness.py --run            # runs both matrices (resumable)
    python benchmarks/surrogate_faithfulness.py --real DIR --surrogate DIR   # from finished runs

``--run`` calls ``diffhpo run -t TASK -m all -p quick --seeds N`` and the same with
``TASK-surrogate`` into ``OUT/real`` and ``OUT/surrogate`` (each resumes when rerun), then
reads both storages. The ranks and tests are the report's own
(:func:`diffhpo.bench.comparison.compare`, :func:`diffhpo.bench.analysis.ranks.across_tasks`):
one block per seed, ranked by the final-protocol value. A method whose cells have no final
value on one side is left out of both. Kendall's tau is :func:`scipy.stats.kendalltau` of the
two mean-rank vectors; the Nemenyi agreement is the share of method pairs that both sides
call significant or both call not significant at the report's alpha.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from diffhpo.bench import storage as st
from diffhpo.bench.analysis import ranks as ranks_mod
from diffhpo.bench.comparison import compare
from diffhpo.bench.report import collect


def _run(task: str, seeds: int, out: Path) -> None:
    cmd = [sys.executable, "-m", "diffhpo", "run", "-t", task, "-m", "all", "-p", "quick", "--seeds", str(seeds),
           "--no-progress", "--no-report", "--out", str(out)]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def _friedman(folder: Path) -> ranks_mod.Friedman:
    storage = st.open_existing(st.default_url(folder))
    trials, cells = collect(storage)
    (res,) = ranks_mod.across_tasks(compare(trials, cells).points)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="gmm-schedule")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("results/faithfulness"))
    ap.add_argument("--run", action="store_true", help="run (or resume) both matrices first")
    ap.add_argument("--real", type=Path, help="folder of a finished run on the real task")
    ap.add_argument("--surrogate", type=Path, help="folder of a finished run on the surrogate")
    args = ap.parse_args()
    real, sur = args.real or args.out / "real", args.surrogate or args.out / "surrogate"
    if args.run:
        _run(args.task, args.seeds, real)
        _run(f"{args.task}-surrogate", args.seeds, sur)
    a, b = _friedman(real), _friedman(sur)
    ra, rb = (res.mean_ranks[f"rank {ranks_mod.FINAL}"].dropna() for res in (a, b))
    methods = sorted(set(ra.index) & set(rb.index), key=lambda m: ra[m])
    left_out = sorted(set(ra.index) ^ set(rb.index))
    print(f"\n{args.task}: {a.n_blocks} blocks on the real task, {b.n_blocks} on the surrogate"
          + (f"; left out (a final value on one side only): {', '.join(left_out)}" if left_out else ""))
    print("\n| method | mean final rank, real | mean final rank, surrogate |\n|---|---:|---:|")
    for m in methods:
        print(f"| {m} | {ra[m]:.2f} | {rb[m]:.2f} |")
    tau, p = stats.kendalltau([ra[m] for m in methods], [rb[m] for m in methods])
    print(f"\nKendall's tau = {tau:.3f} (p = {p:.3g}, {len(methods)} methods)")
    for name, res in (("real", a), ("surrogate", b)):
        print(f"Friedman, {name}: " + ranks_mod.describe(res))
    if a.nemenyi is not None and b.nemenyi is not None:
        pairs = [(x, y) for i, x in enumerate(methods) for y in methods[i + 1:]]
        sig = [(a.nemenyi.loc[x, y] < ranks_mod.ALPHA, b.nemenyi.loc[x, y] < ranks_mod.ALPHA) for x, y in pairs]
        same = np.mean([s == t for s, t in sig])
        print(f"Nemenyi: {sum(s for s, _ in sig)} of {len(pairs)} pairs significant on the real task, "
              f"{sum(t for _, t in sig)} on the surrogate; the two agree on {same:.0%} of the pairs")
        for (x, y), (s, t) in zip(pairs, sig):
            if s != t:
                print(f"  differs: {x} vs {y}: real {'significant' if s else 'not'}, surrogate {'significant' if t else 'not'}")


if __name__ == "__main__":
    main()
