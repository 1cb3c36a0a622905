"""``gmm-reward``: where the exact tilt, the guided sampler and the bilevel oracle's bank
estimate put their optimum in lambda (the curves of the report's ``_lambda.png``).

Prints lambda* (exact), the argmax of a dense sweep of the guided sampler's upper score
(``--sweep`` lambdas, log-spaced, seeds 0 .. ``--seeds``-1, mean over seeds) with its
distance to lambda* in decades, the exact regret of that lambda, and the argmax of the bank
estimate for each lower-level solver (guided: un-guided DDIM samples in the bank; exact:
exact draws of p_pre).

    .venv/bin/python benchmarks/gmm_reward_curve.py --profile quick
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from diffhpo.tasks.gmm import GmmRewardTask
from diffhpo.tasks.gmm.plots import curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--sweep", type=int, default=41)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    task = GmmRewardTask(args.profile)
    star = task.lambda_star()
    print(f"exact: lambda* = {star:.4g}, E(lambda*) = {task.known_optimum():.4f}")
    runs = [curves(task, seed, n_sweep=args.sweep) for seed in range(args.seeds)]
    lams = runs[0]["guided"][0]
    guided = np.mean([r["guided"][1] for r in runs], axis=0)
    best = float(lams[int(np.argmax(guided))])
    print(f"guided sampler (mean of {args.seeds} seeds, {args.sweep} lambdas): argmax lambda = {best:.4g} "
          f"({math.log10(best / star):+.2f} decades from lambda*), upper there {guided.max():.4f}, "
          f"exact regret of that lambda {task.known_optimum() - task.exact_upper(best):.4f}")
    for sampler in ("guided", "exact"):
        t = GmmRewardTask(args.profile, sampler=sampler)
        for seed in range(args.seeds):
            lam_grid, bank = curves(t, seed, n_sweep=2)["bank"]
            b = float(lam_grid[int(np.argmax(bank))])
            print(f"bank estimate, sampler={sampler}, seed {seed}: argmax lambda = {b:.4g} "
                  f"({math.log10(b / star):+.2f} decades)")


if __name__ == "__main__":
    main()
