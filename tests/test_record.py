"""Recorded benchmarks and surrogate tasks (issue 23): ``diffhpo record``, the table, the
surrogate task built from it, the validation script, and the bad inputs."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from diffhpo.bench import record as rec
from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.bench.contracts.registry import TASKS
from diffhpo.cli import main
from diffhpo.tasks.surrogate import make_surrogate

pytestmark = pytest.mark.usefixtures("session_cache")

TASK = "gmm-schedule"
PLAN = ["--configs", "6", "--replicates", "3:2"]  # 6 design points + 3 configurations x 2 seeds = 12
SAME = ["index", "config", "role", "seed", "state"]  # plus p_*, m_*, iv_*: what must equal across runs


def _record(table: Path, store: Path, *extra: str) -> None:
    main(["record", TASK, "-p", "smoke", *PLAN, "--table", str(table), "--out", str(store), *extra])


def _content(frame: pd.DataFrame) -> pd.DataFrame:
    cols = SAME + ["error"] + [c for c in frame if c[:2] in ("p_", "m_") or c.startswith("iv_")]
    return frame[cols].reset_index(drop=True)


@pytest.fixture(scope="module")
def smoke_table(tmp_path_factory) -> Path:
    """An uninterrupted smoke recording of gmm-schedule (12 evaluations)."""
    folder = tmp_path_factory.mktemp("table")
    path = folder / "gmm.smoke.csv.gz"
    _record(path, folder / "store")
    return path


def _surrogate(path: Path, profile: str = "smoke", **options):
    return make_surrogate("gmm-smoke-surrogate", TASK, profile, {"default": path})("smoke", **options)


def test_table_holds_the_plan(smoke_table):
    t = rec.load_table(smoke_table)
    f = t.frame
    assert t.meta["complete"] and len(f) == 12 and (f["state"] == "COMPLETE").all()
    assert list(f["role"].iloc[6:]) == ["default"] * 2 + ["grid"] * 4  # the default, then the grid
    assert set(f["seed"].iloc[6:]) == {rec.REPLICATE_SEED, rec.REPLICATE_SEED + 1}
    assert f[["iv_250", "iv_500", "iv_750"]].notna().all().all()  # the checkpoints' intermediate values
    assert (f["wall_s"] > 0).all() and (f["peak_rss_mib"] > 0).all()
    assert t.meta["provenance"]["version_optuna"] == optuna.__version__


def test_killed_and_resumed_recording_equals_an_uninterrupted_one(smoke_table, tmp_path, monkeypatch):
    """Interrupted at the 5th evaluation (Ctrl-C / SIGTERM), and a trial left RUNNING as by
    SIGKILL; the rerun of the same command resumes and the table's content is the same."""
    cls = TASKS.get(TASK)
    real = cls.evaluate
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(cls, "evaluate", flaky)
    table, store = tmp_path / "t.csv.gz", tmp_path / "store"
    with pytest.raises(SystemExit) as exc:
        _record(table, store)
    assert exc.value.code == 130
    monkeypatch.setattr(cls, "evaluate", real)
    part = rec.load_table(table, verify=True)  # the partial table was exported on the way out
    assert len(part.frame) == 4 and not part.meta["complete"]
    # a trial left RUNNING, as a SIGKILL leaves it
    url = f"sqlite:///{store / 'diffhpo.sqlite3'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    study.enqueue_trial({"q_s": 0.0, "q_e": 1.0, "q_tau": 1.0, "q_eps": 0.008}, user_attrs={rec.PLAN_KEY: 4})
    study.ask()
    # and one left WAITING, as a kill between enqueueing and asking leaves it
    study.enqueue_trial({"q_s": 0.0, "q_e": 1.0, "q_tau": 2.0, "q_eps": 0.008}, user_attrs={rec.PLAN_KEY: 5})
    _record(table, store)
    resumed = rec.load_table(table)
    assert resumed.meta["complete"]
    pd.testing.assert_frame_equal(_content(resumed.frame), _content(rec.load_table(smoke_table).frame))


def test_resume_from_a_committed_partial_table(smoke_table, tmp_path, monkeypatch):
    """A new storage that finds an exported table of the same plan loads its rows: nothing is
    evaluated again (a recording spread over sittings from committed tables)."""
    table = tmp_path / "t.csv.gz"
    shutil.copy(smoke_table, table)
    shutil.copy(str(smoke_table) + ".sha256", str(table) + ".sha256")
    monkeypatch.setattr(TASKS.get(TASK), "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    _record(table, tmp_path / "fresh-store")
    pd.testing.assert_frame_equal(_content(rec.load_table(table).frame), _content(rec.load_table(smoke_table).frame))


def test_surrogate_is_deterministic_and_seeds_draw_independently(smoke_table):
    task = _surrogate(smoke_table)
    p = task.default_params()
    curve1, curve2 = [], []
    a = task.evaluate(p, 3, report=lambda f, v: curve1.append((f, v)))
    b = _surrogate(smoke_table).evaluate(p, 3, report=lambda f, v: curve2.append((f, v)))
    assert a == b and curve1 == curve2 and [f for f, _ in curve1] == [0.25, 0.5, 0.75]
    c = task.evaluate(p, 4)
    assert c["distance"] != a["distance"] and c["train_loss"] != a["train_loss"]
    final = task.evaluate(p, 1000, final=True)
    assert final["distance"] not in (a["distance"], c["distance"])
    assert final["regret"] == pytest.approx(final["distance"] - task.known_optimum())
    assert task.modelled_seconds(p, 3) == task.modelled_seconds(p, 3) > 0
    assert _surrogate(smoke_table, noise=0.0).evaluate(p, 3) == _surrogate(smoke_table, noise=0.0).evaluate(p, 4)
    assert task.search_space() == TASKS.get(TASK)("smoke").search_space()
    assert not task.has_oracle and "zeroth-order" in task.description


def test_surrogate_runs_in_the_matrix(smoke_table, tmp_path, monkeypatch):
    cls = make_surrogate("gmm-smoke-surrogate", TASK, "smoke", {"default": smoke_table})
    TASKS.register(cls.name, cls)
    try:
        main(["run", "-t", cls.name, "-m", "random,sha,bilevel", "-p", "smoke", "--seeds", "1",
              "--out", str(tmp_path), "--no-progress", "--no-report"])
    finally:
        TASKS.unregister(cls.name)
    url = f"sqlite:///{tmp_path / 'diffhpo.sqlite3'}"
    names = optuna.get_all_study_names(url)
    assert len(names) == 3
    sha = optuna.load_study(study_name=f"{cls.name}.sha.smoke.seed0", storage=url)
    assert any(t.intermediate_values for t in sha.trials)  # the pruning method saw the modelled curve


def test_validation_script_runs_on_a_smoke_table(smoke_table, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import surrogate_validation
    finally:
        sys.path.pop(0)
    assert surrogate_validation.main([str(smoke_table)]) == 0
    out = capsys.readouterr().out
    assert "| gmm-schedule smoke default | distance |" in out and "noise ceiling" in out


# -- bad input -----------------------------------------------------------------------------------


def _rewrite(src: Path, dst: Path, edit) -> None:
    """A copy of the table with its metadata edited and a matching checksum."""
    with gzip.open(src, "rt") as f:
        meta = json.loads(f.readline()[2:])
        rest = f.read()
    edit(meta)
    data = gzip.compress(("# " + json.dumps(meta) + "\n" + rest).encode(), mtime=0)
    dst.write_bytes(data)
    Path(str(dst) + ".sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {dst.name}\n")


def _run_with(table: Path, capsys) -> str:
    cls = make_surrogate("gmm-bad-surrogate", TASK, "smoke", {"default": table})
    TASKS.register(cls.name, cls)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["run", "-t", cls.name, "-m", "random", "-p", "smoke", "--out", str(table.parent / "out"),
                  "--no-progress", "--no-report"])
    finally:
        TASKS.unregister(cls.name)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert not (table.parent / "out").exists()  # refused before any work
    return err[0]


@pytest.mark.parametrize("case, words", [
    ("missing", "does not exist"),
    ("no-checksum", "no checksum file"),
    ("mismatch", "does not match its checksum"),
    ("corrupt", "is corrupt"),
    ("profile", "profile 'quick', not 'smoke'"),
    ("space", "another search space"),
    ("version", "task version"),
    ("task", "task 'mnist-schedule'"),
])
def test_bad_tables_are_refused(case, words, smoke_table, tmp_path, capsys):
    table = tmp_path / "bad.csv.gz"
    side = Path(str(table) + ".sha256")
    if case != "missing":
        shutil.copy(smoke_table, table)
        shutil.copy(str(smoke_table) + ".sha256", side)
    if case == "no-checksum":
        side.unlink()
    elif case == "mismatch":
        data = bytearray(table.read_bytes())
        data[-5] ^= 0xFF
        table.write_bytes(bytes(data))
    elif case == "corrupt":
        table.write_bytes(b"not a gzip file")
        side.write_text(f"{hashlib.sha256(b'not a gzip file').hexdigest()}  {table.name}\n")
    elif case == "profile":
        _rewrite(smoke_table, table, lambda m: m.update(profile="quick"))
    elif case == "space":
        _rewrite(smoke_table, table, lambda m: m["space"]["q_e"].update(attributes={**m["space"]["q_e"]["attributes"], "high": 9.0}))
    elif case == "version":
        _rewrite(smoke_table, table, lambda m: m.update(task_version="0" * 24))
    elif case == "task":
        _rewrite(smoke_table, table, lambda m: m.update(task="mnist-schedule"))
    assert words in _run_with(table, capsys)


@pytest.mark.parametrize("args, words", [
    (["--configs", "3"], "below the space's dimension 4"),
    (["--configs", "0"], "below the space's dimension 4"),
    (["--replicates", "0:5"], "0 replicates"),
    (["--replicates", "5:0"], "0 replicates"),
    (["--replicates", "5"], "takes K:R"),
    (["--space", "weighted-sum"], "no search-space variant"),
    (["--design", "linspace"], "one-dimensional space"),
    (["--shard", "2/2"], "--shard takes I/N"),
])
def test_bad_recordings_are_refused(args, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["record", TASK, "-p", "smoke", "--table", str(tmp_path / "t.csv.gz"), "--out", str(tmp_path / "s"),
              *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_grown_plan_reuses_the_evaluations_it_holds(smoke_table, tmp_path, monkeypatch):
    """More design points and replicated configurations, from a committed table of the smaller
    plan in a fresh storage: only the new entries are evaluated."""
    table = tmp_path / "t.csv.gz"
    shutil.copy(smoke_table, table)
    shutil.copy(str(smoke_table) + ".sha256", str(table) + ".sha256")
    cls = TASKS.get(TASK)
    real, calls = cls.evaluate, []
    monkeypatch.setattr(cls, "evaluate", lambda self, p, s, **k: calls.append(s) or real(self, p, s, **k))
    main(["record", TASK, "-p", "smoke", "--configs", "8", "--replicates", "4:2", "--table", str(table),
          "--out", str(tmp_path / "store")])
    assert sorted(calls) == [6, 7, rec.REPLICATE_SEED, rec.REPLICATE_SEED + 1]  # 2 design points, 1 grid point x 2
    grown, small = rec.load_table(table).frame, rec.load_table(smoke_table).frame
    assert len(grown) == 16
    cols = [c for c in _content(small) if c not in ("index", "config")]
    key = ["seed"] + [c for c in cols if c.startswith("p_")]
    merged = small[cols].merge(grown[cols], on=key, suffixes=("", "_grown"))
    assert len(merged) == 12
    for c in cols:
        if c not in key:
            pd.testing.assert_series_equal(merged[c], merged[f"{c}_grown"], check_names=False)


def test_the_mean_model_predicts_each_output(smoke_table):
    """Every output of the multi-output model is its own (a defect once returned the first
    output, rescaled, for all of them): the trees' direct prediction equals scikit-learn's."""
    import numpy as np

    from diffhpo.tasks.surrogate import model as M

    t = rec.load_table(smoke_table)
    space = TASKS.get(TASK)("smoke").search_space()
    mean = M.fit_mean(t.frame, t.meta, space)
    x = M.unit_features(space, {n: t.frame[f"p_{n}"].to_numpy() for n in space})
    np.testing.assert_allclose(mean.predict(x), mean.est.predict(x) * mean.sd + mean.mu, rtol=1e-5)


def test_a_checkpoint_reported_off_its_step_is_recorded():
    """mnist-schedule quick reports its half-way FID at step 501 (measured progress); the table's
    iv_500 column takes it, and a step far from every checkpoint is no checkpoint's value."""
    import math

    iv = {250: 9.0, 501: 5.0, 750: 3.0, 900: 1.0}
    assert [rec.checkpoint_value(iv, s) for s in (250, 500, 750)] == [9.0, 5.0, 3.0]
    assert math.isnan(rec.checkpoint_value(iv, 600))


def test_the_wall_model_leaves_out_rows_starved_by_other_work():
    """Rows recorded beside other work (CPU/wall ratio well below the table's usual) do not enter
    the wall-time model; rows of a machine to themselves, fast or slow, do."""
    from diffhpo.tasks.surrogate import model as M

    rows = pd.DataFrame({"wall_s": [50.0, 60.0, 55.0, 130.0, 240.0, 65.0],
                         "cpu_s": [99.0, 119.0, 109.0, 80.0, 82.0, 129.0]})
    assert rows[M.timed_rows(rows)].index.tolist() == [0, 1, 2, 5]
    one_core = pd.DataFrame({"wall_s": [80.0, 90.0, 300.0], "cpu_s": [79.0, 88.0, 85.0]})
    assert one_core[M.timed_rows(one_core)].index.tolist() == [0, 1]


def test_the_shipped_table_matches_its_task():
    """The shipped gmm-schedule table verifies against its checksum and the task's current
    configuration and space (a change to either refuses the surrogate until it is re-recorded)."""
    assert "gmm-schedule-surrogate" in TASKS.names()
    real = TASKS.get(TASK)("quick")
    table = rec.load_table(rec.TABLES_DIR / "gmm-schedule.quick.default.csv.gz")
    rec.check_table_for(table, task=TASK, profile="quick", version=rec.task_version(real), variant="default",
                        space=real.search_space())
    assert table.meta["plan"]["configs"] >= 512 and table.meta["plan"]["replicated"] == 20


def test_the_shipped_mnist_table_matches_its_task():
    """The shipped mnist-schedule table (200 evaluations, issue 23) verifies against its checksum,
    the task's configuration and space, and registers its surrogate."""
    assert "mnist-schedule-surrogate" in TASKS.names()
    real = TASKS.get("mnist-schedule")("quick")
    table = rec.load_table(rec.TABLES_DIR / "mnist-schedule.quick.default.csv.gz")
    rec.check_table_for(table, task="mnist-schedule", profile="quick", version=rec.task_version(real),
                        variant="default", space=real.search_space())
    assert table.meta["complete"] and len(table.frame) == 200 and table.meta["plan"]["replicated"] == 8


@pytest.mark.parametrize("surrogate, options, suffix", [
    ("reward-mnist-surrogate", {}, ""),
    ("reward-mnist-bold-surrogate", {"objective": "bold"}, ".objective-bold"),
])
def test_the_shipped_reward_tables_match_their_task(surrogate, options, suffix):
    """The shipped reward-mnist tables of both objectives (lambda and w, 246 evaluations each,
    issue 23) verify against their checksums, the task's configuration and both spaces, and
    register the surrogate; its modelled alignment is deterministic in (lambda, seed)."""
    assert surrogate in TASKS.names()
    real = TASKS.get("reward-mnist")("quick", **options)
    for variant in ("default", "weighted-sum"):
        table = rec.load_table(rec.TABLES_DIR / f"reward-mnist.quick.{variant}{suffix}.csv.gz")
        rec.check_table_for(table, task="reward-mnist", profile="quick", version=rec.task_version(real),
                            variant=variant, space=real.search_space_for(variant))
        assert table.meta["complete"] and len(table.frame) == 246 and table.meta["plan"]["replicated"] == 41
    sur = TASKS.get(surrogate)("quick")
    a, b = sur.evaluate({"lam": 1.0}, 3), sur.evaluate({"lam": 1.0}, 3)
    assert a == b and a != sur.evaluate({"lam": 1.0}, 4)


def test_a_table_committed_part_way_registers_no_surrogate(tmp_path, monkeypatch):
    import gzip
    import json
    import shutil

    import diffhpo.tasks.surrogate as surrogate
    from diffhpo.tasks import GmmScheduleTask, MnistScheduleTask

    shipped = surrogate.TABLES_DIR / "gmm-schedule.quick.default.csv.gz"
    shutil.copy(shipped, tmp_path / shipped.name)
    with gzip.open(shipped, "rt") as f:
        meta = json.loads(f.readline()[2:])
    assert meta["complete"]
    partial = dict(meta, complete=False, rows=3)
    with gzip.open(tmp_path / "mnist-schedule.quick.default.csv.gz", "wt") as f:
        f.write("# " + json.dumps(partial) + "\nindex\n0\n")
    monkeypatch.setattr(surrogate, "TABLES_DIR", tmp_path)
    names = [c.name for c in surrogate.builtin_surrogates({"gmm-schedule": GmmScheduleTask,
                                                           "mnist-schedule": MnistScheduleTask})]
    assert names == ["gmm-schedule-surrogate"]
