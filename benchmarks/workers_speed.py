"""Trials per second with 1, 2 and 4 local workers against the ideal linear speed-up.

Each trial of the `quadratic` task sleeps 0.5 s (``--option sleep_s=0.5``), so the ideal
rate with N workers is N / 0.5 trials per second. The storage is a fresh journal file per
run (Optuna JournalStorage, the documented storage for processes on one machine). Two rates are printed: over the whole
command (process start-up included) and over the search alone (first trial start to last
trial end, from the stored trials).

    python benchmarks/workers_speed.py [--trials 24]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from diffhpo.bench import storage as st

SLEEP_S = 0.5


def measure(n_workers: int, trials: int, url: str, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "diffhpo", "run", "--task", "quadratic", "--method", "random",
           "--profile", "quick", "--budget", str(trials), "--option", f"sleep_s={SLEEP_S}",
           "--storage", url, "--out", str(out), "--workers", str(n_workers), "--no-progress", "--no-report"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    total = time.perf_counter() - t0
    study = optuna.load_study(study_name="quadratic.random.quick.seed0", storage=st.open_storage(url))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return len(done) / total, len(done) / span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=24)
    args = parser.parse_args()
    print(f"{'workers':>7} {'ideal/s':>8} {'whole/s':>8} {'search/s':>9} {'search/ideal':>12}")
    for n in (1, 2, 4):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"journal://{Path(tmp) / 'journal.log'}"
            whole, search = measure(n, args.trials, url, Path(tmp))
        ideal = n / SLEEP_S
        print(f"{n:>7} {ideal:>8.2f} {whole:>8.2f} {search:>9.2f} {search / ideal:>12.0%}")


if __name__ == "__main__":
    main()
