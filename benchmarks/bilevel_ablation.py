"""Where the bilevel method's progress comes from, on the schedule tasks (issue 18): the
signal-to-noise ratio of the hypergradient's two terms, the default step rule beside the
paper preset, and two controls of each with the zeroth-order term set to zero and
replaced by noise of the same size.

Each variant is one ``diffhpo run`` of the bilevel method (the exact commands are
printed), in ``OUT/<task>/<variant>``:

* ``default``: the default step rule (``methods/step_rules.py``), gamma growing;
* ``paper``: ``--method-option bilevel.preset=paper`` (``methods/bilevel_paper.py``);
* ``... zo=off`` / ``... zo=noise``: the same rule with ``--method-option
  bilevel.zo_term=off`` (the zeroth-order term is zero) or ``=noise`` (a Gaussian vector
  of the estimate's norm in normalised coordinates; ``tasks/single_loop.py``, ``ablated``).
  The estimate is still computed and recorded, so the cost and the iteration count are
  those of the variant with the term on;
* ``... penalty=noise``: the penalty term replaced by noise of its size
  (``bilevel.penalty_term=noise``): where the penalty term dominates the step (the default
  rule on ``mnist-schedule``), this is a random walk of q under the same step rule, the
  control for "any move away from the default schedule helps";
* ``prox``, ``drift``, ``resync``, ``ysteps`` (issue 27, the drift variants, each with the
  same controls as suffixes): ``bilevel.prox_mu=100`` (proximal term ``(mu/2)|y - z|^2`` on
  y), ``bilevel.gamma_rule=drift`` (gamma grows only while ``|y - z|`` shrinks),
  ``bilevel.resync_every=5`` (``y <- z`` every 5 outer iterations), ``bilevel.y_step_ratio=0.5``
  (y takes half the inner steps). The values are first guesses, measured at these values only
  (README, "Drift variants": none works on mnist-schedule; a sweep of each value is not run);
* ``no search``: the ``default`` method (the task's default schedule), for scale.

**Signal-to-noise ratio** of a term, per coordinate: ``|mean_k t_k| / std_k t_k`` over
the outer iterations k of one cell (trial user attributes ``zo_<name>`` and
``penalty_<name>``), median over seeds. Why over iterations and not over repeated
estimates at a fixed point: the step rules integrate the hypergradient over iterations
(momentum, Adam moments, sign agreement), so the part of a term that is consistent from
one iteration to the next is what moves q, and the rest is a random walk; it needs no
extra evaluations. A term with SNR well below ``1/sqrt(K)`` (K iterations) cannot move q
on purpose. ``|zo| / |penalty|``: the ratio of the terms' root-mean-square sizes
(normalised coordinates), median over seeds.

**Premise of the penalty method** (:func:`~diffhpo.tasks.schedule_diagnostics.premise_row`): ``y - z = O(w/gamma)``, per cell:
``|y - z|`` (weight space), gamma and the penalty term's norm at the first and the last
outer iteration. Where ``|y - z|`` does not shrink, the penalty term ``(gamma/w)(grad_q g(y)
- grad_q g(z))`` grows with gamma, and the ``|zo|/|penalty|`` ratio says what is left of the
zeroth-order term in the step.

Final metrics: the final protocol's (the report's ``cells`` table), median [min, max] over seeds; the
chosen schedule, median over seeds. ``--replay`` also times the sampler's proposal, which
replays every stored trial (O(k) per trial): on the schedule runs (``ask_s`` of each
trial) and on a synthetic 4-parameter study with hundreds of trials in SQLite.

    python benchmarks/bilevel_ablation.py --task gmm-schedule --seeds 10 --replay
    python benchmarks/bilevel_ablation.py --task mnist-schedule --seeds 1 --variants default,paper,default-zo-off,default-zo-noise
    python benchmarks/bilevel_ablation.py --task gmm-schedule --seeds 10 --variants default,prox,drift,resync,ysteps,prox-zo-off,prox-zo-noise,prox-penalty-noise
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from diffhpo.bench import storage as st
from diffhpo.bench.report import collect
from diffhpo.tasks import TASKS
from diffhpo.tasks.schedule_diagnostics import TERMS, premise_row, term_table

optuna.logging.set_verbosity(optuna.logging.ERROR)

#: rule name (no "-") -> its method options. The drift variants of issue 27 (tasks/single_loop.py,
#: methods/bilevel.py): their values are first guesses, measured at these values (README; no sweep).
RULES = {"default": [], "paper": ["bilevel.preset=paper"], "prox": ["bilevel.prox_mu=100"],
         "drift": ["bilevel.gamma_rule=drift"], "resync": ["bilevel.resync_every=5"],
         "ysteps": ["bilevel.y_step_ratio=0.5"]}
#: variant suffix -> the ablation switch it sets (the method option ``bilevel.<switch>``)
SWITCHES = {"-zo-off": "zo_term=off", "-zo-noise": "zo_term=noise", "-penalty-noise": "penalty_term=noise"}
VARIANTS = [f"{rule}{suffix}" for rule in RULES for suffix in ("", *SWITCHES)] + ["no-search"]


def command(task: str, variant: str, seeds: int, profile: str, out: Path) -> list[str]:
    method = "default" if variant == "no-search" else "bilevel"
    cmd = [sys.executable, "-m", "diffhpo", "run", "--task", task, "--method", method, "--profile", profile,
           "--seeds", str(seeds), "--out", str(out / task / variant), "--no-progress", "--no-report"]
    if method == "bilevel":
        rule = variant.split("-")[0]  # a rule's name has no "-"
        switch = SWITCHES.get(variant[len(rule):])
        for opt in RULES[rule] + ([f"bilevel.{switch}"] if switch else []):
            cmd += ["--method-option", opt]
    return cmd


def run_variant(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def trials_of(out: Path, task: str, method: str, profile: str, seed: int) -> list[optuna.trial.FrozenTrial]:
    url = f"sqlite:///{out / 'diffhpo.sqlite3'}"
    study = optuna.load_study(study_name=st.study_name(task, method, profile, seed), storage=url)
    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def fmt(values: pd.Series) -> str:
    return f"{values.median():.4g} [{values.min():.3g}, {values.max():.3g}]"


def report(task_name: str, profile: str, seeds: int, out: Path, variants: list[str], replay: bool) -> None:
    task = TASKS.get(task_name)(profile)
    names = list(task.ranges)
    primary = task.primary.name
    print(f"\n## {task_name} ({profile}, seeds 0..{seeds - 1})\n")
    rows, snrs, asks, premises = [], {}, [], []
    for v in variants:
        folder = out / task_name / v
        cells = collect(st.open_existing(f"sqlite:///{folder / 'diffhpo.sqlite3'}"))[1]
        method = "default" if v == "no-search" else "bilevel"
        row = {"variant": v, "trials": f"{cells['n_trials'].median():g}"}
        for col in ("final_regret", f"final_{primary}"):
            if col in cells and cells[col].notna().any():
                row[col.removeprefix("final_")] = fmt(cells[col])
        for n in names:
            row[n] = f"{cells[f'param_{n}'].median():.4g}"
        rows.append(row)
        if method == "bilevel":
            trials = [trials_of(folder, task_name, method, profile, s) for s in range(seeds)]
            snrs[v] = term_table(task.ranges, [[t.user_attrs for t in ts] for ts in trials])
            premises += [{"variant": v, "seed": s} | premise_row(task.ranges, [t.user_attrs for t in ts])
                         for s, ts in enumerate(trials) if ts]
            asks += [(len(ts), float(t.user_attrs.get("ask_s", np.nan)), float(t.user_attrs.get("wall_s", np.nan)))
                     for ts in trials for t in ts]
    print("Final protocol, median [min, max] over seeds; chosen schedule, median over seeds:\n")
    print(pd.DataFrame(rows).to_markdown(index=False))
    print("\nHypergradient terms: SNR = |mean| / std over the iterations of a cell, per coordinate; "
          "|zo|/|penalty| = ratio of rms sizes (normalised coordinates); medians over seeds:\n")
    srows = []
    for v, s in snrs.items():
        if not s:
            continue
        r = {"variant": v}
        for t in TERMS:
            r |= {f"SNR {t} {n}": f"{x:.2f}" for n, x in zip(names, s[f"snr_{t}"])}
        r["|zo|/|penalty|"] = f"{float(s['ratio']):.3g}"
        srows.append(r)
    print(pd.DataFrame(srows).to_markdown(index=False))
    if premises:
        p = pd.DataFrame(premises)
        table = p.drop(columns="seed").groupby("variant", sort=False).median()
        grew = p.assign(g=p["|y-z| last"] > p["|y-z| first"]).groupby("variant", sort=False)["g"]
        table["|y-z| grew (cells)"] = [f"{int(n)} of {len(g)}" for (_, g), n in zip(grew, grew.sum())]
        print("\nThe penalty method's premise y - z = O(w/gamma): first and last outer iteration of a cell, "
              "median over seeds (|y-z| in weight space, |penalty| in normalised coordinates):\n")
        print(table.reset_index().to_markdown(index=False, floatfmt=".3g"))
    if replay and asks:
        a = np.array(asks)
        print(f"\nSampler proposal on these runs: ask_s median {np.nanmedian(a[:, 1]):.4f} s, max "
              f"{np.nanmax(a[:, 1]):.4f} s, against a trial's wall_s median {np.nanmedian(a[:, 2]):.2f} s "
              f"(cells of up to {int(a[:, 0].max())} trials)")


def replay_cost(n_trials: int = 500) -> None:
    """Proposal time against the number of stored trials (SQLite, as the runner's storage)."""
    from diffhpo.methods.bilevel import BilevelSampler

    space = {n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in ("a", "b", "c", "d")}
    print(f"\n## Sampler proposal time against stored trials (synthetic, 4 parameters, SQLite, {n_trials} trials)\n")
    print("| preset | trials stored | ask s (mean of 10) |")
    print("| --- | --- | --- |")
    for preset in ("default", "paper"):
        with tempfile.TemporaryDirectory() as tmp:
            study = optuna.create_study(storage=f"sqlite:///{tmp}/s.db",
                                        sampler=BilevelSampler(space, preset=preset, cycle_length=n_trials))
            times = {}
            for k in range(n_trials):
                t0 = time.perf_counter()
                trial = study.ask()
                p = {n: trial.suggest_float(n, 0.0, 1.0) for n in space}
                times[k] = time.perf_counter() - t0
                trial.set_user_attr("hypergrad", {n: 2 * (p[n] - 0.3) for n in space})
                study.tell(trial, sum((v - 0.3) ** 2 for v in p.values()))
            for k in (10, 100, 300, n_trials - 10):
                print(f"| {preset} | {k} | {np.mean([times[j] for j in range(k, k + 10)]):.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="gmm-schedule", help="gmm-schedule, mnist-schedule or both (comma-separated)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: 10 for gmm-schedule, 1 for mnist)")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=Path("results/bilevel_ablation"))
    ap.add_argument("--report-only", action="store_true", help="print the tables of finished runs")
    ap.add_argument("--replay", action="store_true", help="also time the sampler's proposals")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    for task in args.task.split(","):
        seeds = args.seeds or (10 if task == "gmm-schedule" else 1)
        for v in variants:
            cmd = command(task, v, seeds, args.profile, args.out)
            print("$ " + shlex.join(["python"] + cmd[1:]), flush=True)
            if not args.report_only:
                print(f"  {run_variant(cmd):.0f} s", flush=True)
        report(task, args.profile, seeds, args.out, variants, args.replay)
    if args.replay:
        replay_cost()


if __name__ == "__main__":
    main()
