"""Simulated asynchronous workers (issue 23 item 5): `run --simulate-workers N` on a task with
a time model. N = 1 is a plain run; with N = 4 no sampler sees a result that ends after its
ask; a killed and resumed cell equals an uninterrupted one; bad input is refused."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from diffhpo.bench import storage as st
from diffhpo.bench.contracts.fidelity import FIDELITY_STEPS
from diffhpo.bench.analysis.regret import search_path
from diffhpo.bench.contracts.registry import TASKS
from diffhpo.bench.report import collect
from diffhpo.bench.runner import RunSpec, run_matrix
from diffhpo.bench.simulate import SimulatedView, clock
from diffhpo.cli import main
from diffhpo.methods import METHODS
from diffhpo.bench.contracts.method import Method
from diffhpo.bench.toolkit.seeding import TrialSeeded
from toys import ToyTask, smoke

CHECKPOINTS = (0.25, 0.5, 0.75, 1.0)


class _Timed(ToyTask):
    """loss = (x - 0.3)^2 + (y + 0.2)^2; one evaluation is modelled to take 10 + 90 (x + 1)/2
    + 7 (y + 1) seconds, so trials end out of order on several workers. With ``report``
    (the fidelity variant) it reports four checkpoints."""

    name = "timed"
    description = "test task with a time model"
    profiles = smoke(16)
    interrupt_at = None

    def search_space(self):
        return {"x": FloatDistribution(-1, 1), "y": FloatDistribution(-1, 1)}

    def default_grid(self):
        return {"x": [-1.0, 0.0, 1.0], "y": [0.0]}

    def modelled_seconds(self, params, seed):
        return 10.0 + 45.0 * (params["x"] + 1) + 7.0 * (params["y"] + 1) + 0.5 * seed

    def evaluate(self, params, seed, *, final=False, report=None):
        type(self).calls += 1
        if type(self).calls == type(self).interrupt_at:
            raise KeyboardInterrupt
        loss = (params["x"] - 0.3) ** 2 + (params["y"] + 0.2) ** 2
        if report is not None:
            for f in CHECKPOINTS[:-1]:
                report(f, loss + (1 - f) / 4)
        return {"loss": loss}


class _TimedCurves(_Timed):
    name = "timed-curves"
    has_fidelity = True


SEEN: dict[tuple[int, int], list[int]] = {}  # (run id, trial number) -> finished trials its sampler saw


class _Peeking(TrialSeeded):
    """Random search that records which trials its sampler saw finished at each ask."""

    run_id = 0

    def before_trial(self, study, trial):
        SEEN[(type(self).run_id, trial.number)] = sorted(
            t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE)
        super().before_trial(study, trial)


@pytest.fixture
def timed():
    TASKS.register("timed", _Timed)
    TASKS.register("timed-curves", _TimedCurves)
    METHODS.register("peek", Method("random, recording what it saw",
                                    lambda ctx: _Peeking(optuna.samplers.RandomSampler(seed=ctx.seed), ctx.seed)))
    _Timed.calls, _Timed.interrupt_at = 0, None
    SEEN.clear()
    yield _Timed
    TASKS.unregister("timed")
    TASKS.unregister("timed-curves")
    METHODS.unregister("peek")


def _spec(out, methods=("random", "tpe"), **kw):
    base = dict(tasks=["timed"], methods=list(methods), seeds=[0], profile="smoke", out=out, progress=False)
    base.update(kw)
    return RunSpec(**base)


def _trials(out, method, task="timed"):
    return optuna.load_study(study_name=f"{task}.{method}.smoke.seed0", storage=st.default_url(out)).trials


def _sequence(trials):
    return [(t.params, t.value) for t in trials if t.state == TrialState.COMPLETE]


def test_one_simulated_worker_is_a_plain_run(timed, tmp_path):
    run_matrix(_spec(tmp_path / "plain"), log=lambda s: None)
    run_matrix(_spec(tmp_path / "sim", simulate_workers=1), log=lambda s: None)
    for method in ("random", "tpe"):
        plain, sim = _trials(tmp_path / "plain", method), _trials(tmp_path / "sim", method)
        assert len(_sequence(sim)) == 16 and _sequence(sim) == _sequence(plain), method
        for i, t in enumerate(sim):  # one worker: each trial starts when the previous ended, seeing all
            u = t.user_attrs
            assert u["sim_worker"] == 0 and u["sim_visible"] == i
            assert u["sim_end_s"] == pytest.approx(u["sim_start_s"] + timed().modelled_seconds(t.params, 0))
            if i:
                assert u["sim_ask_s"] == pytest.approx(sim[i - 1].user_attrs["sim_end_s"])
        assert "sim_end_s" not in plain[0].user_attrs
    # and with a pruner: the same trials pruned at the same rungs
    for out, sim in (("plain-sha", None), ("sim-sha", 1)):
        run_matrix(_spec(tmp_path / out, tasks=["timed-curves"], methods=["sha"], simulate_workers=sim),
                   log=lambda s: None)
    plain, sim = (_trials(tmp_path / out, "sha", "timed-curves") for out in ("plain-sha", "sim-sha"))
    assert any(t.state == TrialState.PRUNED for t in sim)
    assert [(t.params, t.state, t.intermediate_values) for t in sim] == [
        (t.params, t.state, t.intermediate_values) for t in plain]


def test_four_workers_sampler_sees_only_results_ended_by_its_ask(timed, tmp_path):
    run_matrix(_spec(tmp_path, methods=["peek"], simulate_workers=4), log=lambda s: None)
    trials = _trials(tmp_path, "peek")
    assert len(trials) == 16 and all(t.state == TrialState.COMPLETE for t in trials)
    end = {t.number: t.user_attrs["sim_end_s"] for t in trials}
    hidden_somewhere = False
    for t in trials:
        u = t.user_attrs
        seen = SEEN[(0, t.number)]
        assert all(end[n] <= u["sim_ask_s"] for n in seen), t.number  # nothing from its future
        assert seen == sorted(n for n in end if n != t.number and end[n] <= u["sim_ask_s"])  # all of its past
        assert u["sim_visible"] == len(seen)
        hidden_somewhere |= len(seen) < t.number
    assert hidden_somewhere  # with 4 workers some earlier trials were still running
    assert sorted(t.user_attrs["sim_worker"] for t in trials[:4]) == [0, 1, 2, 3]
    # the next trial goes to the worker that frees first
    for t in trials[4:]:
        earlier = [s for s in trials if s.number < t.number]
        free = {w: max([s.user_attrs["sim_end_s"] for s in earlier if s.user_attrs["sim_worker"] == w])
                for w in range(4)}
        assert t.user_attrs["sim_worker"] == min(free, key=lambda w: (free[w], w))
        assert t.user_attrs["sim_ask_s"] >= free[t.user_attrs["sim_worker"]]
    # four workers finish the same budget in less simulated time than one would need
    assert max(end.values()) < 0.5 * sum(t.user_attrs["sim_model_s"] for t in trials)
    # the report's time axis is the simulated end, and its curve is in that order
    rows, _ = collect(st.open_storage(st.default_url(tmp_path)))
    assert sorted(rows.elapsed_s) == sorted(end.values()) and rows.sim_worker.notna().all()
    assert list(rows.elapsed_s) != sorted(rows.elapsed_s)  # trials ended out of number order
    path = search_path(rows, maximise=False)
    assert path.elapsed_s.is_monotonic_increasing and path.best.is_monotonic_decreasing
    assert path.best.iloc[-1] == min(t.value for t in trials)


def test_killed_and_resumed_equals_uninterrupted(timed, tmp_path):
    run_matrix(_spec(tmp_path / "whole", simulate_workers=4), log=lambda s: None)
    for at in (3, 9, 21):
        timed.calls, timed.interrupt_at = 0, at
        with pytest.raises(KeyboardInterrupt):
            run_matrix(_spec(tmp_path / "cut", simulate_workers=4), log=lambda s: None)
    timed.interrupt_at = None
    run_matrix(_spec(tmp_path / "cut", simulate_workers=4), log=lambda s: None)
    n_cut = 0
    for method in ("random", "tpe"):
        whole, cut = _trials(tmp_path / "whole", method), _trials(tmp_path / "cut", method)
        n_cut += sum(t.state == TrialState.FAIL for t in cut)
        key = lambda ts: [(t.params, t.value, t.user_attrs["sim_worker"]) for t in ts if t.state == TrialState.COMPLETE]
        assert key(cut) == key(whole), method
        ends = lambda ts: [t.user_attrs["sim_end_s"] for t in ts if t.state == TrialState.COMPLETE]
        assert ends(cut) == pytest.approx(ends(whole), abs=1.0)  # up to the measured ask seconds
    assert n_cut == 3  # each interruption cut one trial, retried


class _Killed(BaseException):
    """Stands for SIGKILL: no handler runs, the trial is left RUNNING in the storage."""


def test_killed_anywhere_and_resumed_equals_uninterrupted(timed, tmp_path, monkeypatch):
    """Killed inside an evaluation, and between recording a trial's simulated end and its tell."""
    run_matrix(_spec(tmp_path / "whole", methods=["tpe"], simulate_workers=4), log=lambda s: None)
    real = optuna.storages.RDBStorage.set_trial_state_values
    calls = {"n": 0, "at": None}

    def killing(self, trial_id, state, values=None):
        calls["n"] += state == TrialState.COMPLETE
        if calls["n"] == calls["at"]:
            raise _Killed
        return real(self, trial_id, state, values)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", killing)
    for kind, at in (("evaluate", 4), ("tell", 3), ("evaluate", 3), ("tell", 2)):
        timed.calls, timed.interrupt_at, calls["n"], calls["at"] = 0, None, 0, None
        if kind == "evaluate":
            monkeypatch.setattr(_Timed, "evaluate", _killing_evaluate(at))
        else:
            calls["at"] = at
        with pytest.raises(_Killed):
            run_matrix(_spec(tmp_path / "cut", methods=["tpe"], simulate_workers=4), log=lambda s: None)
        monkeypatch.undo()
        monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", killing)
    monkeypatch.undo()
    run_matrix(_spec(tmp_path / "cut", methods=["tpe"], simulate_workers=4), log=lambda s: None)
    whole, cut = _trials(tmp_path / "whole", "tpe"), _trials(tmp_path / "cut", "tpe")
    assert sum(t.state == TrialState.FAIL for t in cut) == 4  # each kill left one trial, retried
    key = lambda ts: [(t.params, t.value, t.user_attrs["sim_worker"]) for t in ts if t.state == TrialState.COMPLETE]
    assert key(cut) == key(whole)
    tells = [t for t in cut if t.state == TrialState.FAIL and "sim_end_s" in t.user_attrs]
    assert tells  # a trial killed before its tell had its simulated end recorded, and is ignored:
    storage = st.open_storage(st.default_url(tmp_path / "cut"))
    view = SimulatedView(storage, lambda params: 0.0)  # at time 0 every counted trial is still running
    shown = {t.number: t.state for t in view.get_all_trials(storage.get_study_id_from_name("timed.tpe.smoke.seed0"))}
    assert all(shown[t.number] == TrialState.FAIL for t in tells)  # no phantom running trial
    assert all(shown[t.number] == TrialState.RUNNING for t in cut if t.state == TrialState.COMPLETE)


def _killing_evaluate(at):
    original = _Timed.evaluate

    def evaluate(self, params, seed, *, final=False, report=None):
        if type(self).calls + 1 == at:
            raise _Killed
        return original(self, params, seed, final=final, report=report)

    return evaluate


def test_time_budget_is_simulated_seconds_and_pruned_trials_end_early(timed, tmp_path):
    run_matrix(_spec(tmp_path, methods=["random"], simulate_workers=2, time_budget=200.0, budget=1000),
               log=lambda s: None)
    trials = _trials(tmp_path, "random")
    assert 4 < len(trials) < 40
    assert max(t.user_attrs["sim_ask_s"] for t in trials) < 200.0
    assert clock(trials, 2).next_ask()[1] >= 200.0  # the search stopped because the next ask was past it
    run_matrix(_spec(tmp_path / "sha", tasks=["timed-curves"], methods=["sha"], simulate_workers=4),
               log=lambda s: None)
    pruned = [t for t in _trials(tmp_path / "sha", "sha", "timed-curves") if t.state == TrialState.PRUNED]
    assert pruned
    for t in pruned:
        u = t.user_attrs
        assert u["sim_end_s"] == pytest.approx(u["sim_start_s"] + u["pruned_at"] * u["sim_model_s"])
        assert max(t.intermediate_values) < FIDELITY_STEPS


@pytest.mark.parametrize("extra,needle", [
    (["-t", "quadratic", "--simulate-workers", "4"],
     "--simulate-workers needs a task with a time model (modelled_seconds); task 'quadratic' has none; "
     "tasks with one: "),
    (["-t", "timed", "--simulate-workers", "0"], "--simulate-workers must be at least 1, got 0"),
    (["-t", "timed", "--simulate-workers", "2", "--workers", "2"], "it excludes --workers"),
])
def test_bad_simulate_workers_is_refused_before_any_work(timed, tmp_path, capsys, extra, needle):
    with pytest.raises(SystemExit) as exc:
        main(["run", "-p", "smoke", "-m", "random", "--no-progress", "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    if "quadratic" in extra:
        assert "timed" in err[0]
    assert not list(tmp_path.iterdir())


def test_rerun_with_another_worker_count_is_refused(timed, tmp_path, capsys):
    run_matrix(_spec(tmp_path, methods=["random"], simulate_workers=4), log=lambda s: None)
    for extra in (["--simulate-workers", "2"], []):
        with pytest.raises(SystemExit) as exc:
            main(["run", "-p", "smoke", "-t", "timed", "-m", "random", "--seeds", "1", "--no-progress",
                  "--no-report", "--out", str(tmp_path), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and err[-1].startswith("error: ") and "was run with --simulate-workers 4" in err[-1]


def test_a_sampler_that_is_not_ready_makes_the_free_worker_wait(timed, tmp_path):
    """The bilevel sampler (zeroth-order here: the task has no oracle) evaluates an iteration's
    points before the next; a free worker waits for the running trial to end."""
    run_matrix(_spec(tmp_path, methods=["bilevel"], simulate_workers=4), log=lambda s: None)
    trials = _trials(tmp_path, "bilevel")
    assert len(trials) == 16 and all(t.state == TrialState.COMPLETE for t in trials)
    end = {t.number: t.user_attrs["sim_end_s"] for t in trials}
    # trial 0 is the first iterate alone: trial 1 waits for its result although 3 workers are free
    assert trials[1].user_attrs["sim_ask_s"] == pytest.approx(end[0])
    for t in trials:
        assert t.user_attrs["sim_visible"] == sum(1 for n in end if n != t.number and end[n] <= t.user_attrs["sim_ask_s"])
