"""What the intermediate values (issue 17) add to a search trial's wall time: one search
evaluation of a task with a fidelity, with and without its checkpoint metrics, on the
same seeds. The cost unit counts training progress only, so this overhead is wall time
that no method is charged for; it is the same for every method (every search trial
reports its checkpoints, pruned or not).

    python benchmarks/fidelity_overhead.py --task mnist-schedule --profile quick --seeds 2
    python benchmarks/fidelity_overhead.py --task gmm-schedule --profile quick --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from diffhpo.bench.contracts.registry import TASKS


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist-schedule", choices=[n for n, c in TASKS.items() if c.has_fidelity])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args()
    task = TASKS.get(a.task)(a.profile)
    task.check_ready()
    params = task.default_params()
    reported: list[float] = []
    plain, checked = [], []
    task.evaluate(params, a.seeds)  # warm-up (caches, reference statistics), not timed
    for seed in range(a.seeds):  # alternate the two, so that machine load hits both alike
        plain.append(timed(lambda: task.evaluate(params, seed)))
        checked.append(timed(lambda: task.evaluate(params, seed, report=lambda f, v: reported.append(f))))
    n_points = len(reported) // a.seeds
    p, c = statistics.median(plain), statistics.median(checked)
    print(f"{a.task} ({a.profile}), {a.seeds} seed(s), default hyperparameters, {n_points} checkpoints per training")
    print(f"  search evaluation without checkpoints: median {p:.2f} s  ({', '.join(f'{x:.2f}' for x in plain)})")
    print(f"  with checkpoint metrics:               median {c:.2f} s  ({', '.join(f'{x:.2f}' for x in checked)})")
    print(f"  overhead: {c - p:+.2f} s per trial ({(c - p) / p:+.1%}), {(c - p) / max(n_points, 1):.2f} s per checkpoint")


if __name__ == "__main__":
    main()
