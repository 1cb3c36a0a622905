"""Trials per second with 1, 2 and 4 local workers against the ideal linear speed-up.

Each trial of the `quadratic` task sleeps 0.5 s (``--option sleep_s=0.5``), so the ideal
rate with N workers is N / 0.5 trials per second. The storage is a fresh journal file per
run (Optuna JournalStorage, the documented storage for processes on one machine). Two rates are printed: over the whole
command (process start-up included) and over the search alone (first trial start to last
trial end, from the stored trials).

    python benchmarks/workers_speed.py [--trials 24]

``--matrix``: matrix workers (``diffhpo run --launcher local --workers N``: N ``diffhpo
worker`` processes of submitit's local executor sharing a whole matrix) on PostgreSQL,
directly and through Optuna's gRPC proxy (``diffhpo storage-proxy``), at 1, 2, 4, 8 and 16
workers. Trials sleep (``quadratic`` with ``--option sleep_s=S``, 1 s by default: the task
that already sleeps, rather than a copy), so a couple of cores suffice. The matrix is
``quadratic x random x 4 seeds`` (``--cells``; random: every cell takes many workers at once), with a
budget per cell giving about ``--trials-per-worker`` trials per worker. Per run it reports
the search's throughput (completed trials over first trial start to last trial end)
against the ideal N/S, the same once every worker runs (trials started after the last
worker's first trial start, over the time from then to the last trial end: process
start-ups, staggered on a loaded machine, left out), the database's peak connection count (``pg_stat_activity`` of the
run's fresh database, sampled every 0.2 s), the wall time from the last trial's end to
the command's exit (final protocols and the processes gone; ``--no-report``), the final
protocols' seconds (a cell's final protocol occupies its worker, so the search-only ratios
above cannot reach 1 while other cells search), and **workers busy**: the seconds of trials
and final protocols over N times the span from the first trial's start to the command's exit,
the whole matrix's efficiency (1 would be no start-up, no idle wait and no shutdown), and
**where the rest was lost** (:func:`_where_lost`): before each worker's first trial, in short
gaps between its trials and final protocols, in longer waits, and after its last one.

    source .ci/postgres.sh && pg_start     # or any server: --postgres postgresql://user@host/db
    python benchmarks/workers_speed.py --matrix [--workers 1,2,4,8,16] [--sleep 1]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
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


def _peak_connections(admin: str, db: str, stop: threading.Event, peak: list[int]) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        while not stop.is_set():
            n = conn.execute("select count(*) from pg_stat_activity where datname = %s", (db,)).fetchone()[0]
            peak[0] = max(peak[0], n)
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_matrix(admin: str, n_workers: int, proxy: bool, sleep_s: float, per_worker: int, seeds: int = 4) -> dict:
    """One matrix run on a fresh database; the row of the table."""
    import psycopg

    db = f"diffhpo_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"create database {db}")
    pg = admin.rsplit("/", 1)[0] + "/" + db
    server, url = None, pg
    budget = max(1, math.ceil(per_worker * n_workers / seeds))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if proxy:
                port = _free_port()
                server = subprocess.Popen([sys.executable, "-m", "diffhpo", "storage-proxy", "--storage", pg,
                                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                url = f"grpc://127.0.0.1:{port}"
            stop, peak = threading.Event(), [0]
            sampler = threading.Thread(target=_peak_connections, args=(admin, db, stop, peak), daemon=True)
            sampler.start()
            cmd = [sys.executable, "-m", "diffhpo", "run", "--task", "quadratic", "--method", "random",
                   "--profile", "smoke", "--seeds", str(seeds), "--budget", str(budget),
                   "--option", f"sleep_s={sleep_s}", "--storage", url, "--out", tmp, "--launcher", "local",
                   "--workers", str(n_workers), "--no-progress", "--no-report"]
            env = dict(os.environ, OMP_NUM_THREADS="1")
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            end = datetime.datetime.now()
            stop.set()
            sampler.join()
            if p.returncode != 0:
                raise SystemExit(f"error: the run with {n_workers} worker(s) failed: {p.stderr[-1500:]}")
        storage = st.open_storage(pg)
        studies = st.cell_studies(storage)
        done = [t for s in studies
                for t in storage.get_all_trials(s._study_id, states=(optuna.trial.TrialState.COMPLETE,))]
        finals_s = sum(float(s.user_attrs.get("final_measure", {}).get("wall_s", 0.0)) for s in studies)
        storage.engine.dispose()
        first = min(t.datetime_start for t in done)
        last = max(t.datetime_complete for t in done)
        rate = len(done) / (last - first).total_seconds()
        starts: dict[str, datetime.datetime] = {}
        for t in done:
            w = t.user_attrs["worker"]
            starts[w] = min(starts.get(w, t.datetime_start), t.datetime_start)
        all_in = max(starts.values())  # every worker has started its first trial
        steady = sum(t.datetime_start >= all_in for t in done) / max((last - all_in).total_seconds(), 1e-9)
        # the workers' busy seconds (trials and final protocols) over all they could have given
        # from the first trial's start to the command's exit (start-up, idle waits, shutdown lost)
        busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) + finals_s
        return dict(trials=len(done), rate=rate, steady=steady, ideal=n_workers / sleep_s, connections=peak[0],
                    tail_s=(end - last).total_seconds(), finals_s=finals_s,
                    busy=busy / (n_workers * (end - first).total_seconds()),
                    lost=_where_lost(done, studies, n_workers, first, end, sleep_s))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"drop database {db} with (force)")


def _where_lost(done, studies, n_workers: int, first, end, sleep_s: float) -> dict[str, float]:
    """Where the workers' time went, as shares of N times the span from the first trial's
    start to the command's exit: each worker's timeline is its trials (``worker`` user
    attribute) and the final protocols it ran (the cell's ``final_worker``); ``start`` is
    the time before its first activity, ``end`` after its last one, ``gaps`` between two
    activities shorter than half a trial (asking, admitting, the storage's round trips),
    ``waits`` the longer ones (no room in its cell, or no open cell)."""
    t0, t_end = first.timestamp(), end.timestamp()
    spans: dict[str, list[tuple[float, float]]] = {}
    for t in done:
        spans.setdefault(t.user_attrs["worker"], []).append((t.datetime_start.timestamp(), t.datetime_complete.timestamp()))
    for s in studies:
        fw = s.user_attrs.get("final_worker")
        if fw:
            spans.setdefault(fw["worker"], []).append((fw["start"], fw["end"]))
    total = n_workers * (t_end - t0)
    lost = dict(start=0.0, gaps=0.0, waits=0.0, end=0.0)
    for items in spans.values():
        items.sort()
        lost["start"] += items[0][0] - t0
        lost["end"] += t_end - max(e for _, e in items)
        reach = items[0][1]
        for a, b in items[1:]:
            gap = max(0.0, a - reach)
            lost["gaps" if gap < sleep_s / 2 else "waits"] += gap
            reach = max(reach, b)
    lost["start"] += (n_workers - len(spans)) * (t_end - t0)  # a worker that never ran a trial
    return {k: v / total for k, v in lost.items()}


def main_matrix(args) -> None:
    admin = args.postgres or os.environ.get("DIFFHPO_TEST_POSTGRES_URL")
    if not admin:
        raise SystemExit("error: --matrix needs a PostgreSQL server: --postgres URL or DIFFHPO_TEST_POSTGRES_URL "
                         "(source .ci/postgres.sh && pg_start)")
    print(f"quadratic x random x {args.cells} seeds, trials sleep {args.sleep:g} s, about {args.trials_per_worker} trials "
          f"per worker; {os.cpu_count()} CPU(s)\n")
    print("| storage | workers | trials | trials/s | ideal/s | throughput / ideal | once all workers run / ideal "
          "| peak DB connections | last trial end to exit (s) | final protocols (s) | workers busy (trials + finals) "
          "| lost: start | lost: gaps | lost: waits | lost: end |")
    print("|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for proxy in (False, True):
        for n in args.workers:
            r = measure_matrix(admin, n, proxy, args.sleep, args.trials_per_worker, args.cells)
            print(f"| {'gRPC proxy' if proxy else 'PostgreSQL'} | {n} | {r['trials']} | {r['rate']:.2f} | "
                  f"{r['ideal']:.2f} | {r['rate'] / r['ideal']:.2f} | {r['steady'] / r['ideal']:.2f} | {r['connections']} | {r['tail_s']:.1f} | {r['finals_s']:.0f} | {r['busy']:.2f} | "
                  + " | ".join(f"{r['lost'][k]:.3f}" for k in ("start", "gaps", "waits", "end")) + " |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--matrix", action="store_true", help="matrix workers on PostgreSQL, direct and proxied")
    parser.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4, 8, 16])
    parser.add_argument("--sleep", type=float, default=1.0, help="--matrix: seconds each trial sleeps")
    parser.add_argument("--trials-per-worker", type=int, default=10)
    parser.add_argument("--cells", type=int, default=4,
                        help="--matrix: cells (seeds of quadratic x random); more cells than workers shorten the tail "
                             "where the last cells' final protocols run while the other workers have nothing left")
    parser.add_argument("--postgres", default=None, help="--matrix: a PostgreSQL URL whose server may create databases")
    args = parser.parse_args()
    if args.matrix:
        main_matrix(args)
        return
    print(f"{'workers':>7} {'ideal/s':>8} {'whole/s':>8} {'search/s':>9} {'search/ideal':>12}")
    for n in (1, 2, 4):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"journal://{Path(tmp) / 'journal.log'}"
            whole, search = measure(n, args.trials, url, Path(tmp))
        ideal = n / SLEEP_S
        print(f"{n:>7} {ideal:>8.2f} {whole:>8.2f} {search:>9.2f} {search / ideal:>12.0%}")


if __name__ == "__main__":
    main()
