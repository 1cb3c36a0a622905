"""Rebuild ``gmm-schedule``'s reference optimum (``tasks/gmm/schedule_reference.json``), the
schedule against which its regret is measured.

1. A long search: Optuna's multivariate TPE (seed 0) for ``--trials`` trials (default 200)
   on the search-time distance of seed 0 (one full training each; one seed, so that the
   schedules are compared on common random numbers: the same initialisation, batches and
   sampling noise).
2. The ``--top`` best schedules (default 10) are re-evaluated under the final protocol on
   the final seeds 1000 .. 1000 + ``--final-seeds`` - 1 (default 10), as the runner's final
   protocol evaluates a method's choice; the schedule with the lowest mean is the reference
   and its mean the known optimum (``GmmScheduleTask.known_optimum``). The default schedule
   is evaluated on the same seeds for comparison.

    .venv/bin/python benchmarks/gmm_schedule_reference.py --profile quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import optuna

from diffhpo.bench.runner import FINAL_SEED_OFFSET
from diffhpo.tasks.gmm.schedule_task import REFERENCE_FILE, GmmScheduleTask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--final-seeds", type=int, default=10)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = GmmScheduleTask(args.profile)
    space = task.search_space()
    t0 = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        params = {n: trial.suggest_float(n, d.low, d.high) for n, d in space.items()}
        return task.evaluate(params, 0)["distance"]

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, multivariate=True))
    study.enqueue_trial(task.default_params())
    study.optimize(objective, n_trials=args.trials)
    search_s = time.perf_counter() - t0
    print(f"search: {args.trials} TPE trials in {search_s:.0f} s, best seed-0 distance {study.best_value:.4f}",
          flush=True)
    seeds = [FINAL_SEED_OFFSET + s for s in range(args.final_seeds)]

    def final(params: dict) -> list[float]:
        return [task.evaluate(params, s, final=True)["distance"] for s in seeds]

    done = sorted((t for t in study.trials if t.value is not None), key=lambda t: t.value)[: args.top]
    rows = [(t.params, final(t.params)) for t in done]
    for params, vals in rows:
        print(f"  {', '.join(f'{k}={v:.4g}' for k, v in params.items())}: final mean {statistics.mean(vals):.4f} "
              f"(std {statistics.stdev(vals):.4f})", flush=True)
    best_params, best_vals = min(rows, key=lambda r: statistics.mean(r[1]))
    default_vals = final(task.default_params())
    entry = {
        "params": best_params, "value": statistics.mean(best_vals), "final_values": best_vals,
        "final_std": statistics.stdev(best_vals), "final_seeds": seeds,
        "default_value": statistics.mean(default_vals), "default_final_values": default_vals,
        "search": {"sampler": "optuna TPESampler(seed=0, multivariate=True), default schedule enqueued first",
                   "trials": args.trials, "objective": "search-time distance, seed 0",
                   "best_search_value": study.best_value, "rescored_top": args.top,
                   "wall_s": round(time.perf_counter() - t0, 1)},
        "config": json.loads(json.dumps(dataclasses.asdict(task.config), default=str)),
        "command": f"python benchmarks/gmm_schedule_reference.py --profile {args.profile} --trials {args.trials} "
                   f"--top {args.top} --final-seeds {args.final_seeds}",
    }
    data = json.loads(REFERENCE_FILE.read_text()) if REFERENCE_FILE.is_file() else {}
    data[args.profile] = entry
    REFERENCE_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"reference {best_params}: {entry['value']:.4f} (default {entry['default_value']:.4f}); "
          f"wrote {REFERENCE_FILE} in {entry['search']['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
