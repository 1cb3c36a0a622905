"""``gmm-reward``: how far the guided sampler is from the exact tilt ``p*_lambda`` over lambda,
for each guidance scheme (``grad_through`` x ``weighting``, :mod:`diffhpo.tasks.reward.guidance`),
and how the twisted-SMC corrector converges as its particle count grows.

Distance: the task's ``fidelity`` metric (energy distance between the sampler's
``n_samples`` draws and as many exact draws of the tilt, :mod:`diffhpo.tasks.gmm.distance`),
mean over seeds 0 .. ``--seeds``-1; the row ``exact`` (``sampler=exact``) is the noise floor
of the distance.

    PYTHONPATH=.. python benchmarks/gmm_reward_fidelity.py --profile quick --seeds 3
    PYTHONPATH=.. python benchmarks/gmm_reward_fidelity.py --smc --seeds 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diffhpo.bench.toolkit.seeding import derive_seed
from diffhpo.tasks.gmm import GmmRewardTask
from diffhpo.tasks.gmm.distance import energy_distance
from diffhpo.tasks.gmm.mixture import tilt
from diffhpo.tasks.gmm.reward_task import FIDELITY_REF
from diffhpo.tasks.reward.common import EVAL_NOISE
from diffhpo.tasks.reward.guidance import GRAD_THROUGH, WEIGHTING, sample_images

LAMS = [0.01, 0.03, 0.1, 0.3, 0.79, 1.0, 3.0, 10.0, 100.0]


def fidelity_row(task: GmmRewardTask, lams, seeds: int) -> np.ndarray:
    return np.array([[task.evaluate({"lam": lam}, s)["fidelity"] for lam in lams] for s in range(seeds)])


def exact_score_row(task: GmmRewardTask, lams, seeds: int) -> np.ndarray:
    """The same DDIM sampler (steps, noise, reference draws as the task's ``fidelity``) on the
    *exact* eps of the tilted mixture: what a perfect guidance term would reach."""
    m, cfg, n = task.model(), task.config, task.config.n_samples
    out = []
    for s in range(seeds):
        row = []
        for lam in lams:
            target = tilt(task.p_pre, task.r2.scaled(cfg.guidance), lam)
            noise = task._noise(s, 0, n, EVAL_NOISE).to(m.dtype)
            run = sample_images(lambda z, t, c: target.eps(z, float(m.alphabar[int(t)])),
                                lambda: m.scheduler(cfg.steps), noise, value_range=None, batch_size=cfg.batch_size,
                                eta=float(cfg.eta), seed=s)
            ref = target.sample(n, torch.Generator().manual_seed(derive_seed(n, FIDELITY_REF)))
            row.append(float(energy_distance(run.samples.to(ref.dtype), ref)))
        out.append(row)
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--smc", action="store_true", help="the corrector's convergence instead of the scheme table")
    ap.add_argument("--particles", default="1,4,16,64")
    ap.add_argument("--smc-lams", default="0.1,0.79")
    args = ap.parse_args()
    if args.smc:
        lams = [float(v) for v in args.smc_lams.split(",")]
        print(f"twisted SMC (grad_through=unet, weighting=constant proposal), profile {args.profile}, "
              f"mean fidelity over {args.seeds} seeds")
        print("particles " + " ".join(f"lam={v:<8g}" for v in lams) + " seconds")
        for k in [int(v) for v in args.particles.split(",")]:
            t0 = time.time()
            f = fidelity_row(GmmRewardTask(args.profile, particles=k), lams, args.seeds)
            print(f"{k:9d} " + " ".join(f"{v:<12.3f}" for v in f.mean(0)) + f" {time.time() - t0:.0f}")
        f = fidelity_row(GmmRewardTask(args.profile, sampler="exact"), lams, args.seeds)
        print("    exact " + " ".join(f"{v:<12.3f}" for v in f.mean(0)))
        return
    print(f"fidelity (energy distance to exact draws of p*_lambda), profile {args.profile}, "
          f"mean (max) over {args.seeds} seeds; lambda* = {GmmRewardTask(args.profile).lambda_star():.3g}")
    print(f"{'scheme':22s} " + " ".join(f"{v:<13g}" for v in LAMS))
    rows = [(f"{g}/{w}", dict(grad_through=g, weighting=w)) for g in GRAD_THROUGH for w in WEIGHTING]
    rows.append(("exact (floor)", dict(sampler="exact")))
    for name, kw in rows:
        f = fidelity_row(GmmRewardTask(args.profile, **kw), LAMS, args.seeds)
        print(f"{name:22s} " + " ".join(f"{m:.3f}({x:.3f})" for m, x in zip(f.mean(0), f.max(0))))
    f = exact_score_row(GmmRewardTask(args.profile), LAMS, args.seeds)
    print(f"{'exact-score DDIM':22s} " + " ".join(f"{m:.3f}({x:.3f})" for m, x in zip(f.mean(0), f.max(0))))


if __name__ == "__main__":
    main()
