"""The landscape of a schedule task (``mnist-schedule``, ``gmm-schedule``): seed noise
against schedule effects.

Evaluates the task (one full training, sampling and metrics each, exactly as a search
trial) at the default schedule for several seeds, and at schedules that move one
parameter at a time from the default to the far end of its range (seed 0; every seed with
``--paired``), then prints the metrics and wall seconds (:mod:`diffhpo.tasks.schedule_landscape`).
This is the measurement behind the choice of the grid's two parameters and behind the
profile docstrings' statements on seed noise against schedule effects. With ``--paired``
it also prints, per schedule, the primary metric over seeds and its difference from the
default *on the same seed* (the trials of one cell share their initialisation seed, so
paired differences are what a search sees), and the landscape ratio.

    .venv/bin/python benchmarks/mnist_schedule_landscape.py --profile quick --seeds 3 --paired
    .venv/bin/python benchmarks/mnist_schedule_landscape.py --profile smoke --option schedule=sigmoid
    .venv/bin/python benchmarks/mnist_schedule_landscape.py --task gmm-schedule --seeds 5 --paired
"""

from __future__ import annotations

import argparse
import statistics

from diffhpo.tasks import TASKS
from diffhpo.tasks import schedule_landscape as land


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist-schedule", choices=("mnist-schedule", "gmm-schedule"))
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seeds", type=int, default=3, help="seeds at the default schedule")
    ap.add_argument("--option", action="append", default=[], help="task option KEY=VALUE (repeatable)")
    ap.add_argument("--final", action="store_true", help="use the final protocol's sample count")
    ap.add_argument("--paired", action="store_true", help="evaluate every moved schedule at every seed too")
    args = ap.parse_args()
    options = dict(o.split("=", 1) for o in args.option)
    task = TASKS.get(args.task)(args.profile, **options)
    key = task.primary.name
    cfg = task.config
    print(f"{args.task} {args.profile} ({cfg.schedule}), {task.train_steps} training steps, "
          f"{cfg.final_samples if args.final else cfg.search_samples} samples, {cfg.sample_steps} DDIM steps",
          flush=True)
    others = [m.name for m in task.metrics[1:] if m.name not in ("regret", "train_loss")]
    print(f"{'schedule':<14} {'seed':>4} {key:>9} " + " ".join(f"{n:>10}" for n in others) + f" {'wall s':>7}",
          flush=True)

    def log(label, seed, m, wall):
        print(f"{label:<14} {seed:>4} {m[key]:>9.4g} " + " ".join(f"{m.get(n, float('nan')):>10.3g}" for n in others)
              + f" {wall:>7.2f}", flush=True)

    values = land.evaluate(task, args.seeds, final=args.final, paired=args.paired, log=log)
    seeds = values["default"]
    if len(seeds) > 1:
        print(f"default over {len(seeds)} seeds: {key} range {max(seeds) - min(seeds):.4g}, "
              f"std {statistics.stdev(seeds):.4g}")
    for label, vals in values.items():
        if label == "default":
            continue
        if len(vals) == 1:
            print(f"{label:<14} {key} - default(seed 0) = {vals[0] - seeds[0]:+.4g}")
            continue
        diffs = [v - d for v, d in zip(vals, seeds)]
        print(f"{label:<14} {key} over seeds {' / '.join(f'{v:.4g}' for v in vals)} (std "
              f"{statistics.stdev(vals):.3g}); minus the default on the same seed: "
              f"{' / '.join(f'{d:+.4g}' for d in diffs)} (mean {statistics.mean(diffs):+.4g})")
    if args.paired and args.seeds > 1:
        print(f"landscape ratio (range of the schedule means / largest seed std): {land.ratio(values):.1f}")


if __name__ == "__main__":
    main()
