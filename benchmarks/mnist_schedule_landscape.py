"""The FID landscape of ``mnist-schedule``: seed noise against schedule effects.

Evaluates the task (one full training, sampling and metrics each, exactly as a search
trial) at the default schedule for several seeds, and at schedules that move one
parameter at a time from the default to the far end of its range (seed 0; every seed with
``--paired``), then prints FID, KID, IS and wall seconds. This is the measurement behind
the choice of the grid's two parameters and behind the profile docstrings' statements on
seed noise against schedule effects. With ``--paired`` it also prints, per schedule, the
FID over seeds and its difference from the default *on the same seed* (the trials of
one cell share their initialisation seed, so paired differences are what a search sees).

    .venv/bin/python benchmarks/mnist_schedule_landscape.py --profile quick --seeds 3 --paired
    .venv/bin/python benchmarks/mnist_schedule_landscape.py --profile smoke --option schedule=sigmoid
"""

from __future__ import annotations

import argparse
import statistics
import time

from diffhpo.tasks.mnist_schedule import MnistScheduleTask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seeds", type=int, default=3, help="seeds at the default schedule")
    ap.add_argument("--option", action="append", default=[], help="task option KEY=VALUE (repeatable)")
    ap.add_argument("--final", action="store_true", help="use the final protocol's sample count")
    ap.add_argument("--paired", action="store_true", help="evaluate every moved schedule at every seed too")
    args = ap.parse_args()
    options = dict(o.split("=", 1) for o in args.option)
    task = MnistScheduleTask(args.profile, **options)
    default = task.default_params()
    runs: list[tuple[str, dict, int]] = [("default", default, s) for s in range(args.seeds)]
    for name, (lo, hi) in task.ranges.items():
        far = hi if abs(default[name] - lo) <= abs(default[name] - hi) else lo
        for seed in range(args.seeds if args.paired else 1):
            runs.append((f"{name}={far:g}", {**default, name: far}, seed))
    print(f"mnist-schedule {args.profile} ({task.config.schedule}), {task.train_steps} training steps, "
          f"{task.config.final_samples if args.final else task.config.search_samples} samples, "
          f"{task.config.sample_steps} DDIM steps", flush=True)
    print(f"{'schedule':<14} {'seed':>4} {'FID':>9} {'KID':>9} {'IS':>6} {'alphabar_T':>10} {'wall s':>7}", flush=True)
    fids: dict[str, list[float]] = {}
    for label, params, seed in runs:
        t0 = time.perf_counter()
        m = task.evaluate(params, seed, final=args.final)
        wall = time.perf_counter() - t0
        fids.setdefault(label, []).append(m["fid"])
        print(f"{label:<14} {seed:>4} {m['fid']:>9.1f} {m['kid_mean']:>9.3g} {m['is_mean']:>6.2f} "
              f"{m['alphabar_T']:>10.3g} {wall:>7.1f}", flush=True)
    seeds = fids["default"]
    if len(seeds) > 1:
        print(f"default over {len(seeds)} seeds: FID range {max(seeds) - min(seeds):.1f}, "
              f"std {statistics.stdev(seeds):.1f}")
    for label, values in fids.items():
        if label == "default":
            continue
        if len(values) == 1:
            print(f"{label:<14} FID - default(seed 0) = {values[0] - seeds[0]:+.1f}")
            continue
        diffs = [v - d for v, d in zip(values, seeds)]
        print(f"{label:<14} FID over seeds {' / '.join(f'{v:.1f}' for v in values)} (std "
              f"{statistics.stdev(values):.1f}); minus the default on the same seed: "
              f"{' / '.join(f'{d:+.1f}' for d in diffs)} (mean {statistics.mean(diffs):+.1f})")


if __name__ == "__main__":
    main()
