"""Issue 24, 3c: problems outside a configuration are found before any cell, or stop the
cell without spending its budget and leave it to be retried; a cached file that fails to
load is named in one line and rebuilt."""

import os

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from diffhpo.bench import storage as st
from diffhpo.bench.toolkit.cache import CacheWarning
from diffhpo.bench.contracts.errors import DiffhpoError, environment_cause
from diffhpo.bench.runner import RunSpec, check_folders, run_matrix
from diffhpo.cli import main
from toys import ToyTask, registered

pytestmark = pytest.mark.usefixtures("session_cache")


class _Flaky(ToyTask):
    """The toy task, its evaluation raising ``error`` (a cause outside the configuration) while set."""

    name = "flaky"
    error = None

    def loss(self, params, seed, final):
        if type(self).error is not None:
            raise type(self).error
        return params["x"] ** 2


@pytest.fixture
def flaky():
    with registered(_Flaky, error=None) as cls:
        yield cls


def _spec(out, method="random"):
    return RunSpec(tasks=["flaky"], methods=[method], seeds=[0], profile="smoke", out=out, progress=False)


@pytest.mark.parametrize("error", [
    PermissionError(13, "Permission denied", "/somewhere/state.pt"),
    FileNotFoundError(2, "No such file or directory", "/cache/bank.npz"),
    OSError(28, "No space left on device"),
    EOFError("No data left in file"),
])
def test_a_cell_failing_for_its_environment_stops_and_is_retried(tmp_path, flaky, error):
    """The budget is not spent on trials that all fail the same way, and once the cause is
    repaired the same command finishes the cell (it used to stay `failed: no trial completed`)."""
    flaky.error = error
    lines = []
    [outcome] = run_matrix(_spec(tmp_path), log=lines.append)
    assert outcome.status.startswith("failed: environment: " + type(error).__name__), outcome.status
    assert flaky.calls == 1 and outcome.spent == 0
    study = optuna.load_study(study_name="flaky.random.smoke.seed0", storage=st.default_url(tmp_path))
    [failed] = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed.user_attrs["fail_reason"].startswith("environment: ")
    assert [t.params for t in study.trials if t.state == TrialState.WAITING] == [failed.params]  # retried next run

    flaky.error = None
    [outcome] = run_matrix(_spec(tmp_path), log=lines.append)
    assert outcome.status == "done"
    study = optuna.load_study(study_name="flaky.random.smoke.seed0", storage=st.default_url(tmp_path))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and complete[0].params == failed.params  # the cut-off configuration first


def test_a_failure_of_the_configuration_still_counts(tmp_path, flaky):
    flaky.error = ValueError("x out of range")
    [outcome] = run_matrix(_spec(tmp_path), log=lambda s: None)
    assert outcome.status == "failed: no trial completed" and flaky.calls == 6


def test_environment_causes_are_found_in_the_exception_chain():
    try:
        try:
            raise PermissionError(13, "Permission denied")
        except PermissionError as inner:
            raise RuntimeError("checkpoint could not be written") from inner
    except RuntimeError as exc:
        assert isinstance(environment_cause(exc), PermissionError)
    assert environment_cause(ValueError("nan")) is None


def _truncate(path, empty):
    if empty:
        path.write_bytes(b"")
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("empty", [True, False])
def test_an_unreadable_bank_is_named_and_rebuilt(tmp_path, monkeypatch, empty):
    from diffhpo.tasks.reward import bank

    monkeypatch.setenv("DIFFHPO_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    build = lambda: (rng.normal(size=(1, 50)), rng.normal(size=(1, 50)), 50)  # noqa: E731
    first = bank.load_or_build({"k": 1}, ["c"], build)
    path = bank.bank_path(first.key)
    _truncate(path, empty)
    with pytest.warns(CacheWarning, match=f"cached file {path} could not be read"):
        again = bank.load_or_build({"k": 1}, ["c"], build)
    assert not again.from_cache and again.r1.shape == (1, 50)
    assert bank.load_or_build({"k": 1}, ["c"], build).from_cache  # the rebuilt file loads


@pytest.mark.parametrize("empty", [True, False])
def test_an_unreadable_mnist5k_file_is_named_and_rebuilt(tmp_path, monkeypatch, empty):
    from diffhpo.bench.toolkit import data

    monkeypatch.setenv("DIFFHPO_CACHE", str(tmp_path))
    images, labels = data._load_mnist5k("train")
    path = data._mnist5k_paths("train")[0]
    _truncate(path, empty)
    with pytest.warns(CacheWarning, match=f"cached file {path} could not be read"):
        again = data._load_mnist5k("train")
    assert (again[0] == images).all() and (again[1] == labels).all()


def test_unreadable_reference_statistics_are_named_and_removed(tmp_path):
    import torch

    from diffhpo.bench.toolkit.metrics import fidelity

    good, bad = tmp_path / "reference-stat.pt", tmp_path / "reference-features.pt"
    torch.save({"mu": np.zeros(3)}, good)
    bad.write_bytes(b"")
    with pytest.warns(CacheWarning, match=f"cached file {bad} could not be read"):
        fidelity._drop_unreadable(tmp_path)
    assert good.exists() and not bad.exists()


def test_every_folder_a_run_writes_is_checked_before_any_cell(tmp_path, monkeypatch, capsys):
    """An unwritable DIFFHPO_CACHE, or one that is a file, or an --out beside a journal
    storage that cannot be written, used to be found only in the trials or after the search."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    journal = tmp_path / "j.log"
    for env, out in ((None, a_file / "out"), (str(a_file), tmp_path / "out"), (str(a_file / "c"), tmp_path / "out")):
        if env is not None:
            monkeypatch.setenv("DIFFHPO_CACHE", env)
        with pytest.raises(SystemExit) as exc:
            main(["run", "-t", "quadratic", "-m", "random", "-p", "smoke", "--no-progress",
                  "--storage", f"journal:///{journal}", "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "is not writable" in err[0], err
        assert str(a_file) in err[0] and "is a file, not a folder" in err[0]
        assert not journal.exists() and not (tmp_path / "out").exists()


def test_matplotlib_is_pointed_into_the_cache_when_home_cannot_hold_its_folder(tmp_path, monkeypatch):
    """Under an unwritable HOME, matplotlib warned on stderr and used a temporary folder."""
    a_file = tmp_path / "home"
    a_file.write_text("x")
    monkeypatch.setenv("HOME", str(a_file))
    monkeypatch.setenv("DIFFHPO_CACHE", str(tmp_path / "cache"))
    for var in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    check_folders({})
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "cache" / "matplotlib")
    monkeypatch.setenv("MPLCONFIGDIR", str(a_file / "mpl"))  # the user's own choice is checked, not replaced
    with pytest.raises(DiffhpoError, match="matplotlib's config folder"):
        check_folders({})
