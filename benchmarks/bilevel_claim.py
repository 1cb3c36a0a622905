"""The paper's headline claim, checked side by side (issue 27, item 3): about 30% lower FID than
the default schedule at about 2.5 times the time of one training (Xiao et al., ICML 2025, the
schedule experiment; :data:`diffhpo.tasks.schedule_diagnostics.PAPER_CLAIM`).

Runs, on ``mnist-schedule`` (quick unless ``--profile``), seeds 0..S-1, every method with the
same budget of 2.5 trainings (``--budget``):

* ``OUT/main``: ``default`` (the default schedule, no search), ``random``, ``tpe``, ``botorch`` and
  ``bilevel`` (the single loop's default step rule, with any ``--bilevel-option``);
* ``OUT/paper``: ``default`` and ``bilevel --method-option bilevel.preset=paper``.

Then prints, per method, its final FID relative to the default schedule's on the same seed (the
report's claim table, :func:`~diffhpo.tasks.schedule_diagnostics.claim_table`), the search time in
trainings (search wall time over one black-box evaluation's median wall time) and the wall
seconds; the first row is the claim. Reruns resume (finished cells are kept).

    python benchmarks/bilevel_claim.py --seeds 3
    python benchmarks/bilevel_claim.py --report-only --out results/bilevel_claim
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from diffhpo.bench import storage as st
from diffhpo.bench.report import collect
from diffhpo.tasks.schedule_diagnostics import PAPER_CLAIM, claim_table

MAIN_METHODS = "default,random,tpe,botorch,bilevel"


def run(out: Path, methods: str, args: argparse.Namespace, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "diffhpo", "run", "-t", args.task, "-m", methods, "-p", args.profile,
           "--seeds", str(args.seeds), "--budget", str(args.budget), "--out", str(out), "--no-progress",
           "--no-report", *extra]
    print("$ " + " ".join(["python", *cmd[1:]]), flush=True)
    rc = subprocess.call(cmd)
    if rc not in (0, 2):  # 2: nothing left to run (every cell finished before)
        sys.exit(f"diffhpo run exited with {rc}")


def cells_of(out: Path) -> pd.DataFrame:
    with st.opened(st.default_url(out), existing=True) as storage:
        return collect(storage)[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="mnist-schedule")
    p.add_argument("--profile", default="quick")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=PAPER_CLAIM["trainings"])
    p.add_argument("--bilevel-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a bilevel method option for OUT/main's bilevel (repeatable), e.g. prox_mu=100")
    p.add_argument("--out", type=Path, default=Path("results/bilevel_claim"))
    p.add_argument("--report-only", action="store_true", help="print the table of finished runs")
    a = p.parse_args()
    if not a.report_only:
        run(a.out / "main", MAIN_METHODS, a, [x for o in a.bilevel_option for x in ("--method-option", f"bilevel.{o}")])
        run(a.out / "paper", "default,bilevel", a, ["--method-option", "bilevel.preset=paper"])
    main_cells = cells_of(a.out / "main")
    paper = cells_of(a.out / "paper")
    paper = paper.assign(method=paper.method.replace({"bilevel": "bilevel (paper preset)"}))
    both = pd.concat([main_cells, paper[paper.method != "default"]], ignore_index=True)
    table = claim_table(both)
    claim = {"profile": "", "method": "claimed (paper)", "seeds": "",
             table.columns[3] if len(table.columns) > 3 else "vs default": f"{PAPER_CLAIM['relative']:+.0%}",
             "search time (trainings, median)": f"{PAPER_CLAIM['trainings']:g}"}
    table = pd.concat([pd.DataFrame([claim]), table], ignore_index=True).fillna("")[list(table.columns)]
    print(f"\n## {a.task} ({a.profile}), seeds 0..{a.seeds - 1}, budget {a.budget:g} trainings: claimed / measured here\n")
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
