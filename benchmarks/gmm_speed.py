"""Wall time of one evaluation of ``gmm-reward`` and ``gmm-schedule`` (the issue's targets: at
most 1 s and 2 s on 2 cores), median of ``--repeats`` runs after a warm-up, and the parts
of a ``gmm-schedule`` evaluation (training, DDIM sampling, energy distance). The last line
is the measured cost of the distance per sample in network-forward equivalents, the
figure behind ``GmmScheduleTask.metric_work`` (single-loop cost accounting).

    .venv/bin/python benchmarks/gmm_speed.py --profile quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffhpo.tasks.gmm import GmmRewardTask, GmmScheduleTask
from diffhpo.tasks.gmm.distance import energy_distance


CPU: list[float] = []  # CPU seconds of the last timed call (median), printed beside the wall time


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls after a warm-up (CPU seconds into ``CPU``: on a
    shared machine the wall time includes waiting for a core, the CPU time does not)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    CPU[:] = [statistics.median(cpus)]
    return statistics.median(walls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    r = args.repeats
    for sampler in ("guided", "exact"):
        task = GmmRewardTask(args.profile, sampler=sampler)
        lam = task.lambda_star()
        search = timed(lambda: task.evaluate({"lam": lam}, 0), r)
        cpu = CPU[0]
        final = timed(lambda: task.evaluate({"lam": lam}, 1000, final=True), r)
        print(f"gmm-reward sampler={sampler}: one evaluation {search:.3f} s wall, {cpu:.3f} s CPU "
              f"(final protocol {final:.3f} s wall)")
    task = GmmScheduleTask(args.profile)
    params = task.default_params()
    sched = task.schedule_of(params)
    cfg = task.config
    full = timed(lambda: task.evaluate(params, 0), r)
    cpu = CPU[0]
    torch.set_num_threads(1)
    train = timed(lambda: task.train_full(sched, 0), r)
    net, _ = task.train_full(sched, 0)
    n = int(cfg.search_samples)
    samp = timed(lambda: task.generate(net, sched, n, 0), r)
    x, ref = task.generate(net, sched, n, 0), task.reference_draws(0, n)
    dist = timed(lambda: energy_distance(x, ref), r)
    print(f"gmm-schedule: one evaluation {full:.3f} s wall, {cpu:.3f} s CPU; training {train:.3f} s ({task.train_steps} steps) + "
          f"sampling {samp:.3f} s ({n} samples, {cfg.sample_steps} steps) + distance {dist:.3f} s")
    per_forward = train / (3.0 * task.train_steps * int(cfg.batch_size))
    print("(the distance here recomputes the reference's self-distance, which evaluations cache)")
    print(f"distance per sample = {dist / n / per_forward:.1f} network-forward equivalents "
          f"(training: {per_forward * 1e6:.2f} us per forward-equivalent)")


if __name__ == "__main__":
    main()
