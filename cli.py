"""The ``diffhpo`` command (Click group): run, report, list, and the groups of other modules."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path

import click

from .bench.contracts.errors import DiffhpoError, Terminated
from .bench.console import one_line_warnings, quiet_libraries as _quiet_libraries  # noqa: F401
from .bench.profiles import DEFAULT_PROFILE, PROFILES


def _split(value: str, what: str, valid: list[str], *, default_all: list[str] | None = None) -> list[str]:
    """Parse 'a,b' or 'all' into names, with one clear error for bad input."""
    items = [x.strip() for x in value.split(",")]
    if not value.strip() or any(not x for x in items):
        raise DiffhpoError(f"--{what} needs a comma-separated list of names, got {value!r}; valid: all, {', '.join(valid)}")
    if items == ["all"]:
        return list(default_all if default_all is not None else valid)
    unknown = [x for x in items if x not in valid]
    if unknown:
        raise DiffhpoError(f"unknown {what} {unknown[0]!r}; valid {what}s: all, {', '.join(valid)}")
    if len(set(items)) != len(items):
        raise DiffhpoError(f"--{what} names {', '.join(items)}: a name appears twice")
    return items


def _key_values(pairs: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DiffhpoError(f"{flag} takes KEY=VALUE, got {pair!r}")
        if key.strip() in out:
            raise DiffhpoError(f"{flag} {key.strip()} is given twice ({out[key.strip()]!r} and {value.strip()!r}); give it once")
        out[key.strip()] = value.strip()
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffhpo")
def cli():
    """diffhpo: benchmark hyperparameter-optimisation methods on diffusion-model tasks.

    Runs a matrix of tasks x HPO methods x seeds, one Optuna study per cell, and writes
    comparison tables and plots. Start with `diffhpo list`, then `diffhpo run`.
    """


@cli.command()
@click.option("--task", "-t", "task_list", default="all", show_default=True,
              help="Comma-separated task names, or 'all': the default matrix, every task that works offline "
                   "(there mnist-schedule's quick cells search 2 trainings and leave out the pruners; "
                   "`-t mnist-schedule` runs them in full; the run's first lines say so).")
@click.option("--method", "-m", "method_list", default="all", show_default=True,
              help="Comma-separated method names, or 'all'.")
@click.option("--seeds", default=None, type=int,
              help="Number of seeds per task: seeds 0..N-1 (or --seed-start..). Default: each task's own "
                   "(20 for the surrogate tasks, 10 for quadratic and the gmm tasks, 1 for the real MNIST tasks).")
@click.option("--seed-start", default=0, show_default=True, type=int, help="First seed.")
@click.option("--profile", "-p", default=DEFAULT_PROFILE, show_default=True,
              type=click.Choice(list(PROFILES)), help="Size of every task's work (see `diffhpo list`).")
@click.option("--out", "-o", "out", default="results", show_default=True, type=click.Path(path_type=Path),
              help="Output folder: storage (SQLite by default), tables, plots.")
@click.option("--storage", default=None,
              help="Optuna storage URL (sqlite:///FILE, postgresql://..., mysql://..., journal:///FILE, grpc://HOST:PORT); "
                   "default: sqlite:///OUT/diffhpo.sqlite3.")
@click.option("--budget", type=float, default=None,
              help="Budget per cell in the task's cost unit (default: the task's, per profile).")
@click.option("--time-budget", type=float, default=None,
              help="Also stop each cell's search after this many wall seconds (search time, summed over resumes).")
@click.option("--option", "task_options", multiple=True, metavar="KEY=VALUE",
              help="Task setting overriding the profile (repeatable), e.g. --option n_groups=8.")
@click.option("--method-option", "method_options", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Method setting (repeatable), e.g. --method-option bilevel.optimizer=adam.")
@click.option("--workers", "n_workers", default=1, show_default=True, type=int,
              help="Worker processes per cell (needs a journal:/// or server storage; SQLite is single-process).")
@click.option("--heartbeat", type=float, default=None,
              help="Heartbeat seconds of running trials on PostgreSQL/MySQL and the gRPC proxy (default 10; "
                   "stale after 3x).")
@click.option("--simulate-workers", type=int, default=None, metavar="N",
              help="Simulate N asynchronous workers on a simulated clock, in one process (tasks with a time "
                   "model only; --time-budget is then in simulated seconds). See bench/simulate.py.")
@click.option("--create-only", is_flag=True,
              help="Create the cells' studies and exit (then start `diffhpo worker`s on any machine).")
@click.option("--launcher", type=click.Choice(["local", "slurm"]), default=None,
              help="Create the cells, then run --workers N matrix workers as one submitit job array "
                   "(local processes, or Slurm jobs), wait for them and write the report.")
@click.option("--slurm-partition", default=None, help="--launcher slurm: the partition.")
@click.option("--gpus-per-worker", type=int, default=None, help="--launcher slurm: GPUs per worker job.")
@click.option("--time", "time_min", type=int, default=None, help="--launcher: time limit per worker job, minutes.")
@click.option("--slurm-option", "slurm_options", multiple=True, metavar="KEY=VALUE",
              help="--launcher slurm: another sbatch option (repeatable), e.g. --slurm-option account=lab.")
@click.option("--detach", is_flag=True,
              help="--launcher: exit once the worker jobs are submitted, printing their ids and the "
                   "`diffhpo report` command that writes the report when they are done.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
@click.option("--no-report", is_flag=True, help="Do not write tables and plots at the end.")
def run(task_list, method_list, seeds, seed_start, profile, out, storage, budget, time_budget,
        task_options, method_options, n_workers, heartbeat, simulate_workers, create_only, launcher,
        slurm_partition, gpus_per_worker, time_min, slurm_options, detach, no_progress, no_report):
    """Run (or resume) the benchmark matrix tasks x methods x seeds.

    Each cell is one Optuna study in one storage; every method of a cell gets the same
    budget. Rerunning the same command resumes: finished cells are skipped and unfinished
    studies continue from their stored trials. Tables and plots are written to OUT at the
    end (see `diffhpo report`).
    """
    from .bench.contracts.registry import TASKS
    from .bench.runner import RunSpec, build_tasks, check_spec, run_matrix
    from .methods import METHODS

    _quiet_libraries()
    slurm = _key_values(slurm_options, "--slurm-option")
    if launcher is not None:
        from .bench.launch import check_launcher

        if create_only or simulate_workers is not None:
            raise DiffhpoError("--launcher runs the matrix on its workers: not with "
                               + ("--create-only" if create_only else "--simulate-workers"))
        check_launcher(launcher, storage, n_workers, partition=slurm_partition, time_min=time_min,
                       gpus=gpus_per_worker)
    elif slurm_partition is not None or gpus_per_worker is not None or time_min is not None or slurm or detach:
        raise DiffhpoError("--slurm-partition, --gpus-per-worker, --time, --slurm-option and --detach need --launcher")
    if seeds is not None and seeds < 1:
        raise DiffhpoError(f"--seeds must be at least 1, got {seeds}")
    offline = [n for n, cls in TASKS.items() if getattr(cls, "offline", True)]
    tasks = _split(task_list, "task", TASKS.names(), default_all=offline)
    methods = _split(method_list, "method", METHODS.names())
    per_method: dict[str, dict[str, str]] = {}
    for key, value in _key_values(method_options, "--method-option").items():
        name, dot, opt = key.partition(".")
        if not dot or not opt:
            raise DiffhpoError(f"--method-option takes METHOD.KEY=VALUE, got {key}={value}")
        per_method.setdefault(name, {})[opt] = value
    spec = RunSpec(
        tasks=tasks, methods=methods, seeds=list(range(seed_start, seed_start + seeds)) if seeds is not None else None,
        seed_start=seed_start, profile=profile, out=out, storage=storage, budget=budget, time_budget=time_budget,
        task_options=_key_values(task_options, "--option"), method_options=per_method,
        progress=not no_progress, workers=1 if launcher else n_workers, heartbeat=heartbeat,
        create_only=create_only or launcher is not None, simulate_workers=simulate_workers,
        default_matrix=task_list.strip() == "all",
    )
    check_spec(spec)  # every value, and every task's data and weights, before the first line of work
    built = build_tasks(spec)
    outcomes = run_matrix(spec, log=lambda line: click.echo(line, err=True), tasks=built)
    if launcher is not None:
        from .bench import launch as la

        jobs = la.launch(launcher, storage, n_workers, Path(out) / "launch", partition=slurm_partition,
                         time_min=time_min, gpus=gpus_per_worker, options=slurm, heartbeat=heartbeat)
        click.echo(f"launcher {launcher}: {len(jobs)} matrix worker job(s) submitted "
                   f"({', '.join(str(j.job_id) for j in jobs[:8])}{', ...' if len(jobs) > 8 else ''}); "
                   f"logs in {Path(out) / 'launch'}", err=True)
        from .bench import storage as st

        if detach:
            click.echo(f"launcher {launcher}: job ids {' '.join(str(j.job_id) for j in jobs)}", err=True)
            click.echo("when they are done: " + shlex.join(["diffhpo", "report", "--out", str(out),
                                                            "--storage", st.shown(storage)]), err=True)
            for job in jobs:
                job._cancel_at_deletion = False  # detached: the jobs outlive this process
            return
        with st.opened(storage, existing=True) as opened:
            errors = la.wait(jobs, log=lambda line: click.echo(line, err=True), storage=opened,
                             progress=not no_progress)
            done, n_cells, _, _ = la.cell_counts(opened)
        del jobs  # submitit's LocalJob.__del__ fails at interpreter exit: collect the jobs now
        import gc

        gc.collect()
        create_only = False
        if not errors and done < n_cells:
            errors = [f"{n_cells - done} of {n_cells} cell(s) unfinished after every worker job ended; "
                      f"continue them with `diffhpo worker --storage {st.shown(storage)}`"]
        if errors:
            click.echo("error: " + "; ".join(errors[:5]), err=True)
            if not no_report:
                _report(out, storage, brief=True)
            sys.exit(1)
    if not no_report and not create_only:
        _report(out, storage, brief=True)
        if (Path(out) / "report.html").exists():
            click.echo(f"report: {Path(out) / 'report.html'} (open it in a browser; no server needed)", err=True)
    failed = [o for o in outcomes if o.status.startswith("failed")]
    if failed:
        click.echo(f"error: {len(failed)} of {len(outcomes)} cell(s) failed: "
                   + "; ".join(f"{o.study_name}: {o.status}" for o in failed[:5]), err=True)
        sys.exit(1)


@cli.command()
@click.option("--storage", required=True,
              help="Optuna storage URL holding the cells (journal:///FILE, postgresql://..., grpc://HOST:PORT).")
@click.option("--study", "study_name", default=None,
              help="Serve only this cell, {task}.{method}.{profile}.seed{seed} (see `diffhpo run`); "
                   "default: every unfinished cell of the matrix stored there, one after another.")
@click.option("--task", "-t", "task_list", default=None, help="Matrix worker: only the cells of these tasks (comma-separated).")
@click.option("--method", "-m", "method_list", default=None, help="Matrix worker: only the cells of these methods.")
@click.option("--profile", "-p", "profile_list", default=None, help="Matrix worker: only the cells of these profiles.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Folder for task checkpoints (default: none; single-loop tasks keep state there).")
@click.option("--heartbeat", type=float, default=None, help="Heartbeat seconds on PostgreSQL/MySQL and the gRPC proxy (default 10; "
                                                                    "stale after 3x).")
@click.option("--no-final", is_flag=True, help="Leave the final protocol to the process that started the run.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def worker(storage, study_name, task_list, method_list, profile_list, workdir, heartbeat, no_final, no_progress):
    """Join existing cells and share their budgets with every other worker.

    Start any number of these, on any machines that reach the storage; the cells must exist
    (create them with `diffhpo run --storage URL ... [--create-only]`). With --study the
    worker serves that cell; without it, it is a matrix worker: it takes an unfinished cell
    (sequential bilevel cells first, then the one with the most remaining budget), stays on
    it until its budget is taken (spent, or held by other workers' running trials), and
    takes the next; the worker whose trial ends a cell's search runs its final protocol
    unless another process does. It exits 0 once no unfinished cell is left. Trials are never counted
    twice and the budget is never exceeded beyond the trials already running.
    """
    import math

    from .bench.contracts.registry import TASKS
    from .bench.runner import join_cell, join_matrix
    from .methods import METHODS

    _quiet_libraries()
    if heartbeat is not None and not (math.isfinite(heartbeat) and heartbeat > 0):
        raise DiffhpoError(f"--heartbeat must be a positive finite number, got {heartbeat:g}")
    if study_name is not None:
        given = [f for f, v in (("--task", task_list), ("--method", method_list), ("--profile", profile_list)) if v]
        if given:
            raise DiffhpoError(f"--study names one cell; {', '.join(given)} select cells of a matrix worker: "
                               "give --study or the filters, not both")
        outcomes = [join_cell(storage, study_name, final=not no_final, progress=not no_progress,
                              workdir=workdir, heartbeat=heartbeat)]
        for outcome in outcomes:
            click.echo(f"{outcome.study_name}: {outcome.status} ({outcome.n_trials} trials, cost {outcome.spent:g})",
                       err=True)
    else:
        tasks = _split(task_list, "task", TASKS.names()) if task_list is not None else None
        methods = _split(method_list, "method", METHODS.names()) if method_list is not None else None
        profiles = _split(profile_list, "profile", list(PROFILES)) if profile_list is not None else None
        outcomes = join_matrix(storage, tasks=tasks, methods=methods, profiles=profiles, final=not no_final,
                               progress=not no_progress, workdir=workdir, heartbeat=heartbeat,
                               log=lambda line: click.echo(line, err=True))
        click.echo(f"worker: no unfinished cell left ({len(outcomes)} cell(s) served by this worker)", err=True)
    if any(o.status.startswith("failed") for o in outcomes):
        sys.exit(1)


@cli.command(name="storage-proxy")
@click.option("--storage", required=True,
              help="The database to serve: postgresql://..., mysql://... (or sqlite:///FILE, then used by the proxy alone).")
@click.option("--port", required=True, type=int, help="TCP port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; the proxy has no authentication).")
@click.option("--threads", default=10, show_default=True, type=int, help="Threads of the server (Optuna's default).")
def storage_proxy(storage, port, host, threads):
    """Serve one storage to many workers through Optuna's gRPC proxy.

    Workers and `diffhpo run` then use `--storage grpc://HOST:PORT`: they hold one gRPC
    channel each instead of their own database connections. Runs until Ctrl-C or SIGTERM.
    """
    from .bench import storage as st

    _quiet_libraries()
    url = f"grpc://{host}:{port}" if ":" not in host else f"grpc://[{host}]:{port}"

    def ready() -> None:
        click.echo(f"storage-proxy: serving {st.shown(storage)} at {url} (Ctrl-C stops)", err=True)

    try:
        with st.storage_errors(storage):
            st.serve_proxy(storage, host, port, threads=threads, on_ready=ready)
    except KeyboardInterrupt:
        click.echo("storage-proxy: stopped", err=True)


@cli.command()
@click.option("--out", "-o", "out", default="results", show_default=True, type=click.Path(path_type=Path),
              help="Folder to write the tables and plots into (and of the default storage).")
@click.option("--storage", default=None, help="Optuna storage URL (default: sqlite:///OUT/diffhpo.sqlite3).")
@click.option("--no-plots", is_flag=True, help="Tables only (report.html then has no pictures).")
@click.option("--html/--no-html", default=True, show_default=True,
              help="Write report.html, the whole report in one self-contained file.")
@click.option("--merge", is_flag=True,
              help="One report from the cells of several storages, given as SOURCES (folders holding "
                   "diffhpo.sqlite3, SQLite or journal files, or URLs); nothing is written into them.")
@click.argument("sources", nargs=-1)
def report(out, storage, no_plots, html, merge, sources):
    """Write the tables, the comparison of methods, plots, an export and report.html.

    From one storage (--storage, default OUT/diffhpo.sqlite3), or with --merge from several:
    `diffhpo report --merge A B ... --out DIR`. Files: summary.csv/.md, cells.csv,
    trials.csv, regret.csv, ranks.csv, pairs.csv, comparison.md, results_long.csv
    (.parquet with pyarrow), plots/*.png and report.html (see the README, "Output files").
    """
    _quiet_libraries()
    if sources and not merge:
        raise DiffhpoError(f"unexpected argument {sources[0]!r}: storages to combine need --merge (--merge A B ...)")
    if merge and not sources:
        raise DiffhpoError("--merge needs the storages to combine: --merge A B ...")
    if merge and storage is not None:
        raise DiffhpoError("--merge and --storage exclude each other: list every storage after --merge")
    _report(out, storage, plots=not no_plots, html=html, merge=list(sources) if merge else None)


def _report(out: Path, storage: str | None, plots: bool = True, html: bool = True,
            merge: list[str] | None = None, brief: bool = False) -> None:
    """Write the report into ``out``: from ``storage`` (default ``OUT/diffhpo.sqlite3``), or
    from the storages in ``merge``. ``run`` calls it with the defaults (report.html too) and
    ``brief``: it then prints ``verdict.md`` (the verdict and the rank table) instead of
    summary.md and comparison.md, whose pairs table belongs in the files, not on the
    terminal's last screen."""
    from .bench import storage as st
    from .bench.report import write_frames, write_report

    if merge:
        from .bench.merge import collect_sources

        from .bench.merge import journal_warnings

        trials, cells = collect_sources(merge)
        warnings = journal_warnings(merge)
        written = write_frames(trials, cells, st.ensure_writable(Path(out)), plots=plots, html=html,
                               command=_command(), warnings=warnings)
    else:
        if storage is None:
            db = Path(out) / st.DEFAULT_DB
            if not db.exists():
                raise DiffhpoError(f"no results in {str(out)!r} (no {st.DEFAULT_DB}); run `diffhpo run` first or pass --storage")
            storage = st.default_url(Path(out))
        with st.storage_errors(storage), st.opened(storage, existing=True) as opened:
            if not st.cell_studies(opened):
                raise DiffhpoError(f"storage {st.shown(storage)!r} holds no diffhpo cells; nothing written "
                                   f"(files in {str(out)!r} left as they are)")
            from .bench.merge import journal_warning

            warnings = [w for w in [journal_warning(storage, storage)] if w]
            written = write_report(opened, st.ensure_writable(Path(out)), plots=plots, html=html,
                                   command=_command(), source=storage, warnings=warnings)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if brief:
        click.echo(f"wrote {len(written)} files into {out} (tables, comparison, plots)", err=True)
    else:
        for path in written.values():
            click.echo(f"wrote {path}", err=True)
    for key in ("verdict_md",) if brief else ("summary_md", "comparison_md"):
        if written.get(key) is not None:
            click.echo(written[key].read_text())


def _command() -> str | None:
    """The current command (``diffhpo run ...`` or ``diffhpo report ...``) with the options
    given, rebuilt from click's context (the same when called in-process); None outside one."""
    import shlex

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    parts = ["diffhpo", ctx.info_name]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source == click.core.ParameterSource.DEFAULT:
            continue
        value = ctx.params[param.name]
        if isinstance(param, click.Argument):
            parts += [str(v) for v in value]
            continue
        flag = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            if value:
                parts.append(flag)
            elif param.secondary_opts:
                parts.append(max(param.secondary_opts, key=len))
        else:
            for v in value if getattr(param, "multiple", False) else [value]:
                parts += [flag, str(v)]
    return shlex.join(parts)


@cli.command(name="list")
@click.option("--options", "show_options", metavar="NAME", default=None,
              help="Show every option of task or method NAME: default (per profile for a task), range, meaning.")
def list_cmd(show_options):
    """List tasks, methods and profiles, one line of description each."""
    from .bench.contracts.registry import TASKS
    from .methods import METHODS

    if show_options is not None:
        _list_options(show_options, TASKS, METHODS)
        return
    click.echo("tasks:")
    for name, cls in TASKS.items():
        flag = "" if getattr(cls, "offline", True) else f" [{getattr(cls, 'offline_note', 'needs downloaded weights')}]"
        click.echo(f"  {name:<16} {cls.description}{flag}")
    click.echo("methods:")
    for name, method in METHODS.items():
        click.echo(f"  {name:<16} {method.description}")
    click.echo("profiles:")
    for name, text in PROFILES.items():
        default = " (default)" if name == DEFAULT_PROFILE else ""
        click.echo(f"  {name:<16} {text}{default}")
    click.echo("(`diffhpo list --options NAME` shows the options of a task or method)")


def _list_options(name: str, tasks, methods) -> None:
    from .bench.contracts.options import describe

    if name in tasks:
        profiles = tasks.get(name).profiles
        rows = {p: describe(cfg) for p, cfg in profiles.items()}
        click.echo(f"task {name}: --option KEY=VALUE (defaults per profile: {', '.join(profiles)})")
        for i, (key, _, valid, doc) in enumerate(next(iter(rows.values()))):
            defaults = " / ".join(_text(rows[p][i][1]) for p in profiles)
            click.echo(f"  {key:<20} {defaults:<28} {valid:<36} {doc}")
    elif name in methods:
        declared = methods.get(name).options
        click.echo(f"method {name}: --method-option {name}.KEY=VALUE")
        if isinstance(declared, type):
            for key, default, valid, doc in describe(declared):
                click.echo(f"  {key:<20} {_text(default):<12} {valid:<36} {doc}")
        else:
            click.echo("  " + (", ".join(declared) or "(no options)"))
    else:
        raise DiffhpoError(f"no task or method {name!r}; valid: {', '.join([*tasks.names(), *methods.names()])}")


def _text(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value) if value != "" else "''"


@cli.command(name="record")
@click.argument("task_name", metavar="TASK")
@click.option("--profile", "-p", default=DEFAULT_PROFILE, show_default=True, type=click.Choice(list(PROFILES)),
              help="The task's profile the table is recorded under.")
@click.option("--space", "variant", default="default", show_default=True,
              help="Search-space variant (default; weighted-sum for the reward tasks' w).")
@click.option("--configs", type=int, default=1000, show_default=True,
              help="Design points (scrambled Sobol), each on one seed; at least the space's dimension.")
@click.option("--replicates", default="20:5", show_default=True, metavar="K:R",
              help="K configurations (default, grid points, then design points) on R seeds each.")
@click.option("--design", default="sobol", show_default=True, type=click.Choice(["sobol", "linspace"]),
              help="sobol: scrambled Sobol; linspace: evenly spaced (log scale where the parameter is), 1-D spaces only.")
@click.option("--design-seed", type=int, default=0, show_default=True, help="Seed of the scrambled Sobol design.")
@click.option("--option", "task_options", multiple=True, metavar="KEY=VALUE",
              help="Task setting overriding the profile (repeatable), e.g. --option objective=bold.")
@click.option("--table", "table_path", type=click.Path(path_type=Path), default=None,
              help="The table to write (default: assets/recordings/TASK.PROFILE.SPACE[.OPTIONS].csv.gz); "
                   "an existing partial table of the same plan is loaded first (resume from committed chunks).")
@click.option("--out", "-o", "out", default="results/record", show_default=True, type=click.Path(path_type=Path),
              help="Folder of the default storage (sqlite:///OUT/diffhpo.sqlite3).")
@click.option("--storage", default=None, help="Optuna storage URL (default: sqlite:///OUT/diffhpo.sqlite3).")
@click.option("--shard", default="0/1", show_default=True, metavar="I/N",
              help="Evaluate the plan entries i with i mod N = I (N workers or machines on one server storage).")
@click.option("--export-every", type=int, default=25, show_default=True,
              help="Rewrite the table after this many evaluations (and at the end).")
@click.option("--dry-run", is_flag=True, help="Check everything and print the plan's size; evaluate nothing.")
def record_cmd(task_name, profile, variant, configs, replicates, design, design_seed, task_options, table_path,
               out, storage, shard, export_every, dry_run):
    """Record TASK's real evaluations as a table for the surrogate tasks.

    Evaluates a seeded scrambled-Sobol design of the task's search space (one seed per point)
    and K configurations on R seeds, one Optuna study in the storage; rerunning the same
    command resumes. Writes one gzip CSV with its .sha256 (see README, "Recorded benchmarks
    and surrogates", and diffhpo/bench/record.py).
    """
    import optuna

    from .bench import record as rec
    from .bench import storage as st
    from .bench.contracts.registry import TASKS

    _quiet_libraries()
    k, r = rec.parse_replicates(replicates)
    me, sep, of = shard.partition("/")
    if not sep or not me.isdigit() or not of.isdigit() or int(of) < 1 or int(me) >= int(of):
        raise DiffhpoError(f"--shard takes I/N with 0 <= I < N, got {shard!r}")
    if export_every < 1:
        raise DiffhpoError(f"--export-every must be at least 1, got {export_every}")
    task = TASKS.get(task_name)(profile, **_key_values(task_options, "--option"))
    space = task.search_space_for(variant)
    if space is None:
        raise DiffhpoError(f"task {task_name!r} has no search-space variant {variant!r}; valid: default"
                           + (", weighted-sum" if task.search_space_for("weighted-sum") is not None else ""))
    rec.check_space(space, f"task {task_name!r} space {variant!r}")
    plan = rec.make_plan(task, space, task.default_grid_for(variant), configs=configs, replicated=k, seeds=r,
                         design=design, design_seed=design_seed)
    task.check_ready()
    meta = rec.table_metadata(task, variant, plan, space)
    path = Path(table_path) if table_path is not None else rec.default_table_path(task, variant)
    previous = None
    if path.exists():
        previous = rec.load_table(path)
        mine = {k_: v for k_, v in json.loads(json.dumps(meta)).items() if k_ != "plan"}
        if {k_: v for k_, v in previous.meta.items() if k_ in mine} != mine:
            raise DiffhpoError(f"table {str(path)!r} exists and was recorded for another task version, space or "
                               "options; give another --table or remove it")
        # another plan (more configurations or replicates): its evaluations that the new plan holds are reused
    url = st.check_url(storage) if storage else st.default_url(st.ensure_writable(out))
    click.echo(f"recording {task_name} ({profile}, space {variant}): {len(plan.entries)} evaluations "
               f"({configs} design points, {plan.replicated} configurations x {r} seeds) -> {path}", err=True)
    if dry_run:
        return
    name = rec.recording_name(task, variant)
    command = None  # provenance: the command line as typed (sys.argv)
    with st.opened(url) as storage_obj, st.storage_errors(url):
        study = optuna.create_study(storage=storage_obj, study_name=name, load_if_exists=True,
                                    direction=task.primary.direction, pruner=optuna.pruners.NopPruner())
        if previous is not None:
            n = rec._import_table(study, previous.frame, previous.meta, plan, space, set(rec.done_indices(study, plan)))
            if n:
                click.echo(f"loaded {n} evaluations from {path}", err=True)

        def export(done: int) -> None:
            if done % export_every == 0:
                rec.export_table(study, plan, meta, path, command=command)

        try:
            n = rec.record(task, study, plan, space, shard=(int(me), int(of)), on_done=export,
                           log=lambda line: click.echo(line, err=True))
        finally:
            digest = rec.export_table(study, plan, meta, path, command=command)
        done = len(rec.done_indices(study, plan))
    click.echo(f"evaluated {n} now, {done} of {len(plan.entries)} stored; wrote {path} (sha256 {digest[:16]}...)",
               err=True)


# --- subcommand groups from other modules (metrics, assets, ...) ---
from .bench.metrics_cli import metrics_group  # noqa: E402
from .bench.assets_cli import assets_group  # noqa: E402
cli.add_command(metrics_group)
cli.add_command(assets_group)


def _on_sigterm(signum, frame) -> None:
    """SIGTERM ends a run as Ctrl-C does: the running trial is marked interrupted and retried."""
    raise Terminated()


def _quiet_further_interrupts() -> None:
    """After the first interrupt has been handled (the storage is closed, the trial marked),
    another Ctrl-C or SIGTERM ends the process at once with code 130, without a word:
    raised inside an exit handler (torch's teardown), it used to print Python's
    ten-line "Exception ignored in atexit callback" after the ``interrupted:`` line.
    Exiting (not ignoring) keeps a second Ctrl-C meaning "stop now"."""
    import os

    def leave(signum, frame) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)

    signal.signal(signal.SIGINT, leave)
    signal.signal(signal.SIGTERM, leave)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors print one line and exit with code 2."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    one_line_warnings()
    try:
        cli.main(args=argv, standalone_mode=False)
    except DiffhpoError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _quiet_further_interrupts()
        click.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # click's own checks (choices, types, unknown options)
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
