"""Every bad input is refused before any work starts: exit code 2, one `error:` line that
names the problem, no traceback, and an existing storage left byte-identical (issue 13)."""

import hashlib
from pathlib import Path

import pytest

from diffhpo.cli import main

pytestmark = pytest.mark.usefixtures("session_cache")

STUDY = "quadratic.random.smoke.seed0"


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished smoke run (quadratic x random, bilevel) whose storage the bad inputs meet."""
    out = tmp_path_factory.mktemp("done")
    main(["run", "-t", "quadratic", "-m", "random,bilevel", "-p", "smoke", "--out", str(out),
          "--no-progress", "--no-report"])
    return out


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Files of the user's that storage URLs may name by mistake: a SQLite database that is
    not an Optuna storage, and a text file (issue 24, 3a)."""
    import sqlite3

    folder = tmp_path_factory.mktemp("foreign")
    con = sqlite3.connect(folder / "people.db")
    con.execute("CREATE TABLE people (name TEXT)")
    con.commit()
    con.close()
    (folder / "notes.txt").write_text("hello\n")
    (folder / "empty.db").write_bytes(b"")
    return folder


def _fingerprint(folder: Path, pattern: str = "diffhpo.sqlite3*") -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob(pattern)) if p.suffix != ".lock"}


E = "{empty}"  # an empty folder of the test
D = "{done}"  # the finished run's folder
F = "{foreign}"  # the folder of the user's files
URL = "sqlite:///{done}/diffhpo.sqlite3"
SECRET = "S3cretPW"  # the password of the URLs below: in no error line
PG = "postgresql://alice:S3cretPW@127.0.0.1:9/dh"  # port 9 (discard): refused at once

RUN = ["run", "-p", "smoke", "--no-progress"]
Q = RUN + ["-t", "quadratic", "-m", "random"]
MS = RUN + ["-t", "mnist-schedule", "-m", "random"]
RM = RUN + ["-t", "reward-mnist", "-m", "random"]
SD = RUN + ["-t", "reward-sd", "-m", "random"]

CASES = [
    # names and lists
    (RUN + ["--method", "nope"], "unknown method 'nope'; valid methods: all, grid"),
    (RUN + ["--task", "nope"], "unknown task 'nope'; valid tasks: all, quadratic"),
    (RUN + ["--task", "quadratic,nope"], "unknown task 'nope'"),
    (RUN + ["--method", ""], "--method needs a comma-separated list"),
    (RUN + ["--method", "grid,,random"], "--method needs a comma-separated list"),
    (RUN + ["--method", "grid,grid"], "appears twice"),
    (RUN + ["--task", ","], "--task needs a comma-separated list"),
    (RUN + ["--profile", "huge"], "Invalid value for '--profile'"),
    # seeds and budgets
    (Q + ["--seeds", "0"], "--seeds must be at least 1"),
    (Q + ["--seeds", "-2"], "--seeds must be at least 1"),
    (Q + ["--seed-start", "-1"], "seed -1 is out of range"),
    (Q + ["--seed-start", "4294967296"], "seed 4294967296 is out of range"),
    (Q + ["--seed-start", "2147483000", "--seeds", "2"], "is out of range"),
    (Q + ["--seeds", "x"], "Invalid value for '--seeds'"),
    (Q + ["--budget", "0"], "--budget must be a positive finite number"),
    (Q + ["--budget", "-3"], "--budget must be a positive finite number"),
    (Q + ["--budget", "1e309"], "--budget must be a positive finite number, got inf"),
    (Q + ["--budget", "nan"], "--budget must be a positive finite number"),
    (Q + ["--time-budget", "0"], "--time-budget must be a positive finite number"),
    (Q + ["--time-budget", "inf"], "--time-budget must be a positive finite number"),
    (Q + ["--budget", "3", "--option", "budget=5"], "--budget 3 and --option budget=5 both set the budget"),
    (RUN + ["-t", "quadratic", "-m", "sha,hyperband,median"],
     "nothing to run: no method of --method applies to any task of --task (sha, hyperband, median on quadratic: "
     "a pruning method, and the task has no fidelity"),
    (Q + ["--workers", "0"], "--workers must be at least 1"),
    (Q + ["--workers", "2"], "--workers needs a storage several processes can share"),
    (Q + ["--heartbeat", "0"], "--heartbeat must be a positive finite number"),
    # task options: names, types, ranges, rules
    (Q + ["--option", "novalue"], "--option takes KEY=VALUE"),
    (Q + ["--option", "=3"], "--option takes KEY=VALUE"),
    (Q + ["--option", "colour=red"], "has no option 'colour'; valid options"),
    (Q + ["--option", "noise=1", "--option", "noise=2"], "--option noise is given twice"),
    (Q + ["--option", "budget=nan"], "option budget=nan must be a finite number"),
    (Q + ["--option", "budget=-1"], "option budget=-1 must be > 0"),
    (Q + ["--option", "budget=inf"], "option budget=inf must be a finite number"),
    (Q + ["--option", "n_train=0"], "option n_train=0 must be >= 1"),
    (Q + ["--option", "noise=nan"], "option noise=nan must be a finite number"),
    (Q + ["--option", "noise=-1"], "option noise=-1 must be >= 0"),
    (Q + ["--option", "group_size=0"], "option group_size=0 must be >= 1"),
    (Q + ["--option", "alpha_low=0"], "option alpha_low=0 must be > 0"),
    (Q + ["--option", "alpha_low=10", "--option", "alpha_high=1"], "alpha_low must be below alpha_high"),
    (Q + ["--option", "data_seed=-1"], "option data_seed=-1 must be >= 0"),
    (Q + ["--option", "n_groups=11"], "option n_groups=11 must be >= 1 and <= 10"),
    (Q + ["--option", "n_groups=2.5"], "option n_groups='2.5' is not a valid int"),
    (Q + ["--option", "hypergradient=magic"], "must be one of penalty, exact"),
    (Q + ["--option", "sleep_s=-1"], "option sleep_s=-1 must be >= 0"),
    (RUN + ["-t", "gmm-schedule", "-m", "random", "--option", "checkpoints=0.5,,0.25"],
     "option checkpoints='0.5,,0.25' has an empty item"),
    (MS + ["--option", "checkpoints=0.5,"], "option checkpoints='0.5,' has an empty item"),
    (MS + ["--option", "schedule=linear"], "must be one of cosine, sigmoid"),
    (MS + ["--option", "image_size=3"], "option image_size=3 must be >= 4"),
    (MS + ["--option", "image_size=7"], "image_size must be a multiple of 2"),
    (MS + ["--option", "ema_decay=1"], "option ema_decay=1 must be >= 0 and < 1"),
    (MS + ["--option", "lr_schedule=step"], "must be one of cosine, constant"),
    (MS + ["--option", "unet_channels=8,10"], "unet_norm_groups must divide every unet_channels value"),
    (MS + ["--option", "dataset=mnist", "--option", "data_root={empty}"], "full MNIST not found"),
    (RM + ["--option", "digits=3,3"], "digits must be distinct"),
    (RM + ["--option", "digits=12"], "option digits=12 must be >= 0 and <= 9"),
    (RM + ["--option", "digits=a"], "is not a valid"),
    (RM + ["--option", "eta=2"], "option eta=2 must be >= 0 and <= 1"),
    (RM + ["--option", "lam_low=0"], "option lam_low=0 must be > 0"),
    (RM + ["--option", "lam_low=5", "--option", "lam_high=1"], "lam_low must be below lam_high"),
    (RM + ["--option", "grad_through=nowhere"], "must be one of unet, decoder"),
    (RM + ["--option", "classifier_weights={empty}/none.pt"], "classifier_weights"),
    (RM + ["--option", "bank_cache=maybe"], "is not a valid bool"),
    (SD + ["--option", "model={empty}/none"], "is neither a folder nor in the Hugging Face cache"),
    (SD + ["--option", "dtype=float8"], "must be one of auto, float16, bfloat16, float32"),
    (SD + ["--option", "device=tpu"], "device must be auto, cpu, cuda or cuda:N"),
    # method options
    (Q + ["--method-option", "random.x=1"], "method 'random' has no option 'x'"),
    (Q + ["--method-option", "nodot=1"], "--method-option takes METHOD.KEY=VALUE"),
    (Q + ["--method-option", "grid.x=1"], "--method-option for 'grid', which is not in --method"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.bogus=1"], "valid options: preset, optimizer"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.optimizer=foo"],
     "must be one of rprop, irprop, adam, adamw, sgd"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.step=abc"], "is not a valid float"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.step=-1"], "option step=-1 must be > 0"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.zo_directions=0"],
     "option zo_directions=0 must be >= 1"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.gamma_growth=0.5"],
     "option gamma_growth=0.5 must be >= 1"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.preset=reference"],
     "option preset='reference' must be one of default, paper"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.zo_term=maybe"],
     "option zo_term='maybe' must be one of on, off, noise"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.penalty_term=none"],
     "option penalty_term='none' must be one of on, off, noise"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.lr_schedule=cyclic"],
     "must be one of constant, one-cycle"),
    # method options that cannot act with the other settings (issue 24, 3f)
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.lr_schedule=one-cycle"],
     "option lr_schedule='one-cycle' has no effect with optimizer rprop (it acts with optimizer adamw only)"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.cycle_length=5"],
     "option cycle_length=5 has no effect with optimizer rprop and lr_schedule constant"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.optimizer=adamw",
            "--method-option", "bilevel.cycle_length=5"], "option cycle_length=5 has no effect with optimizer adamw"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.lr=0.1"],
     "option lr=0.1 has no effect with optimizer rprop"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.preset=paper",
            "--method-option", "bilevel.step=0.1"], "option step=0.1 has no effect with optimizer adamw"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.weight_decay=0.1"],
     "option weight_decay=0.1 has no effect with optimizer rprop"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.zo_scheme=central",
            "--method-option", "bilevel.zo_central=never"], "has no effect with zo_scheme central"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.preset=paper",
            "--method-option", "bilevel.gamma0=20", "--method-option", "bilevel.gamma_max=5"],
     "gamma0 must not exceed gamma_max"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.zo_step=0.1"],
     "option zo_step=0.1 has no effect on any task of the matrix (on quadratic: it has a first-order oracle"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--method-option", "bilevel.zo_term=off"],
     "option zo_term=off has no effect on any task of the matrix (on quadratic: its oracle runs no single loop"),
    # storages
    (Q + ["--storage", "sqlite://"], "is an in-memory database"),
    (Q + ["--storage", "sqlite:///:memory:"], "is an in-memory database"),
    (Q + ["--storage", ""], "--storage is empty"),
    (Q + ["--storage", "nosuch://x"], "is not a storage URL"),
    (Q + ["--storage", "results.db"], "is not a storage URL"),
    (Q + ["--storage", "journal://"], "names no file"),
    # storages naming the user's files: refused before anything is written into them (24, 3a)
    (Q + ["--storage", "sqlite:///{foreign}/people.db"], "is a SQLite database but not an Optuna storage"),
    (Q + ["--storage", "journal:///{foreign}/notes.txt"], "is not an Optuna journal"),
    (["report", "--out", E, "--storage", "sqlite:///{foreign}/people.db"], "but not an Optuna storage"),
    (["report", "--out", E, "--storage", "journal:///{foreign}/notes.txt"], "is not an Optuna journal"),
    (["report", "--out", E, "--storage", "sqlite:///{foreign}/empty.db"], "is an empty file, not an Optuna storage"),
    (["report", "--out", E, "--merge", "journal:///{foreign}/notes.txt", D], "is not an Optuna journal"),
    (["worker", "--storage", "journal:///{foreign}/notes.txt", "--study", STUDY], "is not an Optuna journal"),
    (["worker", "--storage", "sqlite:///{foreign}/people.db", "--study", STUDY], "but not an Optuna storage"),
    # storage URLs with passwords: named without them, in every form (24, 3b)
    (Q + ["--storage", PG], "cannot open storage 'postgresql://alice:***@127.0.0.1:9/dh'"),
    (Q + ["--storage", "postgresql://:S3cretPW@127.0.0.1:9/dh"], "storage 'postgresql://:***@127.0.0.1:9/dh'"),
    (Q + ["--storage", "postgresql://bob:Sec/S3cretPW@127.0.0.1:9/dh"], "'postgresql://bob:***@127.0.0.1:9/dh'"),
    (Q + ["--storage", "postgresql://me:p@ss:S3cretPW@127.0.0.1:9/dh"],
     "storage 'postgresql://me:***@127.0.0.1:9/dh' is not a valid database URL"),
    (Q + ["--storage", "nosuch://alice:S3cretPW@h/x"], "storage 'nosuch://alice:***@h/x' is not a storage URL"),
    (["report", "--out", E, "--storage", "mysql://alice:S3cretPW@127.0.0.1:9/dh"],
     "cannot open storage 'mysql://alice:***@127.0.0.1:9/dh'"),
    (["report", "--out", E, "--storage", PG], "cannot open storage 'postgresql://alice:***@127.0.0.1:9/dh'"),
    (["report", "--out", E, "--merge", D, "postgresql://:S3cretPW@127.0.0.1:9/dh"],
     "merge input 'postgresql://:***@127.0.0.1:9/dh': cannot open storage 'postgresql://:***@127.0.0.1:9/dh'"),
    (["worker", "--storage", PG, "--study", "nope"], "cannot open storage 'postgresql://alice:***@127.0.0.1:9/dh'"),
    # reruns of the finished run: other settings are refused, naming the stored ones
    (Q + ["--out", D, "--budget", "5"], "was run with --budget 12"),
    (RUN + ["-t", "quadratic", "-m", "bilevel", "--out", D, "--method-option", "bilevel.step=0.1"],
     "was run with --method-option (none)"),
    (Q + ["--out", D, "--option", "noise=0.5"],
     "already exists in this storage with other task settings (stored --option noise=1.0, now 0.5)"),
    (Q + ["--out", D, "--time-budget", "100"], "was run with --time-budget (none)"),
    # ... and refused before any cell is created: the new cell of the first method too (24, 3a)
    (RUN + ["-t", "quadratic", "-m", "tpe,random", "--out", D, "--option", "n_groups=4"],
     "study 'quadratic.random.smoke.seed0' already exists in this storage with other task settings"),
    (RUN + ["-t", "quadratic", "-m", "grid,random", "--out", D, "--budget", "5"], "was run with --budget 12"),
    # report
    (["report", "--out", E], "no results in"),
    (["report", "--out", E, "--storage", "sqlite:///{empty}/new.db"], "no such file"),
    (["report", "--out", E, "--storage", "journal:///{empty}/none.log"], "no such file"),
    (["report", "--out", E, "--storage", "sqlite://"], "is an in-memory database"),
    (["report", "--out", E, "--storage", "nosuch://x"], "is not a storage URL"),
    # worker
    (["worker", "--storage", "sqlite:///{empty}/none.db", "--study", STUDY], "no such file"),
    (["worker", "--storage", URL, "--study", "nosuch"], "no study 'nosuch'"),
    (["worker", "--storage", URL, "--study", STUDY, "--heartbeat", "0"], "--heartbeat must be a positive"),
    (["worker", "--storage", "", "--study", STUDY], "--storage is empty"),
    (["worker", "--study", STUDY], "Missing option '--storage'"),
    # assets
    (["assets", "build", "nope"], "'nope' is not an asset; valid: feature-net"),
    (["assets", "build", "feature-net", "--steps", "5", "--out", E], "--steps and --checkpoints apply to mnist-ddpm"),
    (["assets", "build", "feature-net", "--seed", "-1", "--out", E], "Invalid value for '--seed'"),
    (["assets", "verify", "nope"], "'nope' is not an asset"),
    # metrics
    (["metrics", "sanity", "--images-per-set", "5"], "--images-per-set must lie in 10..500"),
    (["metrics", "sanity", "--images-per-set", "100000"], "--images-per-set must lie in 10..500"),
    (["metrics", "sanity", "--seed", "-1"], "Invalid value for '--seed'"),
    (["metrics", "sanity", "--backend", "clip"], "Invalid value for '--backend'"),
    (["metrics", "sanity", "--dataset", "mnist", "--data-root", E], "full MNIST not found"),
    (["metrics", "sanity", "--backend", "inception", "--inception-weights", "{empty}/none.pth"],
     "Invalid value for '--inception-weights'"),
]


def test_the_table_is_large():
    assert len(CASES) >= 60


def test_every_option_of_every_task_and_method_is_declared():
    from diffhpo.bench.contracts.options import Spec, undeclared
    from diffhpo.bench.contracts.registry import TASKS
    from diffhpo.methods import METHODS

    configs = [cfg for _, cls in TASKS.items() for cfg in cls.profiles.values()]
    configs += [m.options() for _, m in METHODS.items() if isinstance(m.options, type)]
    assert configs and undeclared(configs) == []
    for cfg in configs:  # every profile's own defaults pass the checks
        from diffhpo.bench.contracts.options import check

        check("test", cfg)
    assert Spec(ge=0, le=9).problem((3, 12)) and not Spec(ge=0, le=9).problem((3, 8))


@pytest.mark.parametrize("args, needle", CASES, ids=[" ".join(a[:1] + a[4:])[:60] for a, _ in CASES])
def test_bad_input_is_one_error_line_with_exit_2_and_no_change(args, needle, done, foreign, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(empty=empty, done=done, foreign=foreign) for a in args]
    if args[0] == "run" and "--out" not in args:
        args += ["--out", str(tmp_path / "o")]
    before, theirs = _fingerprint(done), _fingerprint(foreign, "*")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle.format(empty=empty, done=done, foreign=foreign) in lines[0]
    assert SECRET not in err
    assert _fingerprint(done) == before  # the storage is untouched
    assert _fingerprint(foreign, "*") == theirs and sorted(p.name for p in foreign.iterdir()) == sorted(theirs)
    assert not any(empty.iterdir())  # nothing written where nothing was asked


def test_a_matrix_where_nothing_applies_creates_nothing(tmp_path, capsys):
    """Issue 24, 3e: every method skipped used to run 0 cells, create an empty storage and exit 0."""
    out = tmp_path / "new"
    with pytest.raises(SystemExit) as exc:
        main(RUN + ["-t", "quadratic", "-m", "sha,hyperband,median", "--no-report", "--out", str(out)])
    assert exc.value.code == 2
    assert "nothing to run" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("options", [
    ["bilevel.preset=paper", "bilevel.gamma_max=5"],  # the preset's gamma0 (1) is checked, not the default's (10)
    ["bilevel.optimizer=adamw", "bilevel.lr_schedule=one-cycle", "bilevel.cycle_length=5"],
    ["bilevel.preset=paper", "bilevel.cycle_length=5", "bilevel.lr=0.1"],
    ["bilevel.optimizer=irprop", "bilevel.step=0.1"],
])
def test_method_options_that_act_together_are_accepted(options):
    """Issue 24, 3f: checks apply to the values that will be used (the preset's where not given)."""
    from diffhpo.bench.runner import RunSpec, check_spec

    spec = RunSpec(tasks=["quadratic"], methods=["bilevel"], seeds=[0],
                   method_options={"bilevel": dict(o.split(".", 1)[1].split("=") for o in options)})
    check_spec(spec)


def test_a_method_option_that_acts_on_one_task_of_the_matrix_is_accepted():
    """The ablation switch acts on gmm-schedule's single loop, though not on quadratic."""
    from diffhpo.bench.runner import RunSpec, build_tasks, check_options_act, check_spec

    spec = RunSpec(tasks=["quadratic", "gmm-schedule"], methods=["bilevel"], seeds=[0], profile="smoke",
                   method_options={"bilevel": {"zo_term": "off"}})
    methods = check_spec(spec)
    check_options_act(spec, build_tasks(spec), methods)
