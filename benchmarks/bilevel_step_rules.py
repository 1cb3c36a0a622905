"""The bilevel sampler's step rules under a noisy gradient (issue 18: iRprop- halves its
step at every sign flip, and a hypergradient dominated by noise flips often).

Synthetic problem: ``f(u) = sum_i a_i (u_i - u*_i)^2 / 2`` on ``[0, 1]^4``, curvatures
``a = (1, 3, 0.3, 10)``, start ``(0.05, 0.9, 0.1, 0.5)``, optimum ``(0.7, 0.3, 0.6, 0.52)``
(distance 1.02), projected steps ``u <- clip(u - step(g))``; the gradient carries Gaussian
noise of ``1/SNR`` times the start gradient, per coordinate. Printed: the median distance
to the optimum after K steps over the seeds, and, under a pure-noise gradient (8
coordinates), percentiles over coordinates and seeds of each coordinate's median step
length over the last 50 steps (the initial step is 0.04).

    python benchmarks/bilevel_step_rules.py [--seeds 50]

Rules: those of ``diffhpo.methods.step_rules`` with the sampler's defaults (``adam`` with
lr 0.05).
"""

from __future__ import annotations

import argparse

import numpy as np

from diffhpo.methods.step_rules import StepRule

A = np.array([1.0, 3.0, 0.3, 10.0])
U0 = np.array([0.05, 0.9, 0.1, 0.5])
U_STAR = np.array([0.7, 0.3, 0.6, 0.52])
RULES = ("irprop", "adam", "rprop")


def distance(rule: str, steps: int, snr: float | None, seed: int) -> float:
    rng = np.random.default_rng(seed)
    opt, u = StepRule(rule, len(U0)), U0.copy()
    sigma = np.abs(A * (U0 - U_STAR)) / snr if snr else np.zeros_like(U0)
    for _ in range(steps):
        g = A * (u - U_STAR) + sigma * rng.standard_normal(len(u))
        u = np.clip(u - opt.step(g), 0.0, 1.0)
    return float(np.linalg.norm(u - U_STAR))


def noise_steps(rule: str, steps: int, seed: int, dim: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    opt = StepRule(rule, dim)
    lengths = np.array([np.abs(opt.step(rng.standard_normal(dim))) for _ in range(steps)])
    return np.median(lengths[-50:], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    args = parser.parse_args()
    snrs = (None, 3.0, 1.0, 0.3, 0.1)
    print(f"median distance to the optimum over {args.seeds} seeds (start 1.02)\n")
    print("| rule | K | " + " | ".join("SNR inf" if s is None else f"SNR {s:g}" for s in snrs) + " |")
    print("| --- | --- |" + " --- |" * len(snrs))
    for k in (20, 100, 300):
        for rule in RULES:
            row = [np.median([distance(rule, k, snr, s) for s in range(args.seeds)]) for snr in snrs]
            print(f"| {rule} | {k} | " + " | ".join(f"{x:.3f}" for x in row) + " |", flush=True)
    print("\npure-noise gradient: each coordinate's median step over the last 50 steps, "
          f"percentiles over 8 coordinates x {min(args.seeds, 10)} seeds\n")
    print("| rule | K | 5% | 50% |")
    print("| --- | --- | --- | --- |")
    for k in (100, 300, 1000):
        for rule in RULES:
            s = np.concatenate([noise_steps(rule, k, seed) for seed in range(min(args.seeds, 10))])
            print(f"| {rule} | {k} | {np.percentile(s, 5):.5f} | {np.median(s):.4f} |", flush=True)


if __name__ == "__main__":
    main()
