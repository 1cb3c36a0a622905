"""The single loop's drift variants (issue 27) and the record of the method's resolved
settings with each cell: the proximal step against autograd, the drift rule's decisions on a
scripted drift, re-sync under a kill and resume, fewer y steps, a rerun under other resolved
settings refused."""

import math

import optuna
import pytest
import torch

from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.bench.runner import prepare_cell
from diffhpo.methods import METHODS
from diffhpo.methods.bilevel import BilevelOptions, BilevelSampler, drift_gammas
from diffhpo.tasks import single_loop as sl
from diffhpo.bench.contracts.task import OracleContext
from diffhpo.tasks.gmm import GmmScheduleTask
from diffhpo.tasks.quadratic import QuadraticTask


def test_every_variant_is_a_declared_option_off_by_default():
    d = BilevelOptions()
    assert (d.gamma_rule, d.prox_mu, d.resync_every, d.y_step_ratio) == ("geometric", 0.0, 0, 1.0)
    ctx = OracleContext(0, 1.0)
    assert {k: getattr(ctx, k) for k in sl.VARIANTS_OFF} == sl.VARIANTS_OFF


def test_proximal_step_is_the_implicit_gradient_step_of_the_term():
    """``y+ = y - lr grad (mu/2)|y+ - z|^2``, the gradient by autograd at y+ (z fixed)."""
    torch.manual_seed(0)
    y, z = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in y.parameters()]
    mu, lr = 7.0, 0.05
    sl.proximal_step(y, z, mu, lr)
    after = [p.detach().clone().requires_grad_(True) for p in y.parameters()]
    term = sum((mu / 2) * ((a - pz.detach()) ** 2).sum() for a, pz in zip(after, z.parameters()))
    grads = torch.autograd.grad(term, after)
    for b, a, g in zip(before, after, grads):
        torch.testing.assert_close(a.detach(), b - lr * g, rtol=1e-6, atol=1e-7)
    # and it shrinks every coordinate of y - z by 1 / (1 + lr mu)
    for b, a, pz in zip(before, after, z.parameters()):
        torch.testing.assert_close(a.detach() - pz.detach(), (b - pz.detach()) / (1 + lr * mu))


def test_drift_rule_grows_gamma_only_while_the_drift_shrinks():
    d = [0.5, 0.4, 0.45, 0.45, 0.3, None, 0.2, float("nan")]
    # k=0 nothing to compare: grow; 0.4<0.5 grow; 0.45>0.4 hold; equal: hold; 0.3<0.45 grow;
    # not measured: grow (capped at 100); previous not measured: grow; NaN: grow
    assert drift_gammas(10.0, 2.0, 100.0, d) == [10.0, 20.0, 40.0, 40.0, 40.0, 80.0, 100.0, 100.0, 100.0]
    assert drift_gammas(10.0, 2.0, 1e9, [1.0, 2.0, 3.0, 4.0]) == [10.0, 20.0, 20.0, 20.0, 20.0]


def _scripted_study(tmp_path, distances, name="s"):
    space = {"x": optuna.distributions.FloatDistribution(-5, 5)}
    url = f"sqlite:///{tmp_path / 'drift.db'}"
    study = optuna.create_study(storage=url, study_name=name, load_if_exists=True,
                                sampler=BilevelSampler(space, gamma_rule="drift", gamma0=10.0, gamma_growth=2.0))
    gammas = []

    def objective(trial):
        x = trial.suggest_float("x", -5, 5)
        ctx = study.sampler.oracle_context(study, trial)
        gammas.append(ctx.gamma)
        trial.set_user_attr("hypergrad", {"x": 2 * (x - 1)})
        trial.set_user_attr("yz_distance", distances[ctx.iteration])
        return (x - 1) ** 2

    return study, objective, gammas, url, space


def test_sampler_replays_the_drift_rule_from_the_stored_trials(tmp_path):
    distances = [0.3, 0.2, 0.25, 0.1, 0.1, 0.05]
    study, objective, gammas, url, space = _scripted_study(tmp_path, distances)
    study.optimize(objective, n_trials=6)
    assert gammas == drift_gammas(10.0, 2.0, 1e4, distances[:5])
    assert gammas == [10.0, 20.0, 40.0, 40.0, 80.0, 80.0]
    # a new process (new sampler) on the same storage: the same gamma for the next iteration
    again = optuna.load_study(study_name="s", storage=url,
                              sampler=BilevelSampler(space, gamma_rule="drift", gamma0=10.0, gamma_growth=2.0))
    trial = again.ask()
    trial.suggest_float("x", -5, 5)
    assert again.sampler.oracle_context(again, trial).gamma == drift_gammas(10.0, 2.0, 1e4, distances)[6] == 160.0


def test_drift_rule_with_gamma_held_is_refused():
    with pytest.raises(DiffhpoError, match="gamma_rule='drift' has no effect with gamma_growth 1"):
        from diffhpo.bench.runner import checked_method_options

        checked_method_options("bilevel", METHODS.get("bilevel"), {"preset": "paper", "gamma_rule": "drift"})


def _ctx(k, workdir, **kw):
    return OracleContext(iteration=k, gamma=10.0 * 1.5**k, workdir=workdir, **kw)


def test_resync_keeps_the_checkpoints_resumable(tmp_path, monkeypatch):
    """A run killed after iteration 2's checkpoint (its trial unrecorded) and resumed in a
    new process reruns iteration 2 and goes on: equal to the uninterrupted run. y is
    re-synced at iterations 0 (its start) and 2 only."""
    clones = []
    real = sl.SingleLoop._clone
    monkeypatch.setattr(sl.SingleLoop, "_clone", staticmethod(lambda *a: clones.append(1) or real(*a)))
    qs = [{**GmmScheduleTask("smoke").default_params(), "q_e": v} for v in (1.0, 0.97, 0.94, 0.91)]
    task = GmmScheduleTask("smoke")
    straight = [task.oracle(qs[k], 0, _ctx(k, tmp_path / "a", resync_every=2)) for k in range(4)]
    assert len(clones) == 2
    assert [r.info["resynced"] for r in straight] == [0.0, 0.0, 1.0, 0.0]
    first = GmmScheduleTask("smoke")
    for k in range(3):
        first.oracle(qs[k], 0, _ctx(k, tmp_path / "b", resync_every=2))
    resumed = GmmScheduleTask("smoke")  # the new process
    again = [resumed.oracle(qs[k], 0, _ctx(k, tmp_path / "b", resync_every=2)) for k in (2, 3)]
    for a, b in zip(again, straight[2:]):
        assert a.grad == b.grad and a.metrics == b.metrics and a.info == b.info
    # the re-sync reset the drift that iteration 1 had built up (without it, it keeps growing)
    plain = GmmScheduleTask("smoke")
    no_sync = [plain.oracle(qs[k], 0, _ctx(k, tmp_path / "c")) for k in range(3)]
    assert straight[1].info["yz_distance"] == no_sync[1].info["yz_distance"]
    assert straight[2].info["yz_distance"] < no_sync[2].info["yz_distance"]
    # checkpoints written under one variant do not resume another
    with pytest.raises(RuntimeError, match="other task settings"):
        GmmScheduleTask("smoke").oracle(qs[3], 0, _ctx(3, tmp_path / "b"))


def test_y_step_indices_spread_the_steps():
    assert sl.y_step_indices(10, 1.0) == list(range(10))
    assert sl.y_step_indices(10, 0.3) == [0, 3, 6]
    assert sl.y_step_indices(3, 0.01) == [0]
    assert sl.y_step_indices(4, 0.5) == [0, 2]


def test_fewer_y_steps_does_what_it_says(tmp_path, monkeypatch):
    calls = []
    real = sl.shared_adam_step
    monkeypatch.setattr(sl, "shared_adam_step", lambda *a: calls.append(a[-1]) or real(*a))
    task = GmmScheduleTask("smoke", bl_inner_steps=6)
    q = task.default_params()
    r = task.oracle(q, 0, _ctx(0, tmp_path / "half", y_step_ratio=0.5))
    warm = task._oracle.warmup_steps()
    assert calls == [warm + i for i in (0, 2, 4)]  # y's steps: the 1st, 3rd and 5th of z's 6
    assert r.info["y_steps"] == 3 and r.info["train_step"] == warm + 6  # z took all six
    full = GmmScheduleTask("smoke", bl_inner_steps=6).oracle(q, 0, _ctx(0, tmp_path / "full"))
    b = task.config.batch_size
    assert full.info["cost_inner"] - r.info["cost_inner"] == pytest.approx(3.0 * 3 * b / task._oracle.unit_work())


def test_proximal_variant_pulls_y_towards_z(tmp_path):
    q = GmmScheduleTask("smoke").default_params()
    dist = {mu: [GmmScheduleTask("smoke").oracle(q, 0, _ctx(0, tmp_path / str(mu), prox_mu=mu)).info["yz_distance"]]
            for mu in (0.0, 100.0)}
    assert dist[100.0][0] < dist[0.0][0]


# -- the cell records the resolved settings (issue 27, 3) ---------------------------------------------


def _cell(storage, **options):
    return prepare_cell(storage, QuadraticTask("smoke"), "bilevel", METHODS.get("bilevel"), 0,
                        method_options=options)


def test_a_cell_records_its_resolved_method_settings(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'r.db'}")
    cell = _cell(storage, preset="paper")
    s = cell.study.user_attrs["method_settings"]
    assert (s["optimizer"], s["gamma0"], s["gamma_growth"], s["gamma_rule"], s["prox_mu"]) == \
        ("adamw", 1.0, 1.0, "geometric", 0.0)
    assert cell.study.user_attrs["method_options"] == {"preset": "paper"}


def test_a_rerun_under_another_resolved_rule_is_refused_naming_both(tmp_path):
    """A cell created when the default step rule was another (simulated by its stored
    record) is refused, not continued under today's rule; giving the stored rule resumes it."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'r.db'}")
    study = _cell(storage).study
    study.set_user_attr("method_settings", {**study.user_attrs["method_settings"], "optimizer": "irprop"})
    with pytest.raises(DiffhpoError, match=r"resolved to optimizer=irprop; now optimizer=rprop; "
                                           r"rerun with --method-option bilevel.optimizer=irprop"):
        _cell(storage)
    cell = _cell(storage, optimizer="irprop")  # the stored rule, given explicitly
    assert cell.sampler.optimizer == "irprop"
    assert cell.study.user_attrs["method_settings"]["optimizer"] == "irprop"


def test_a_cell_stored_before_the_record_is_not_given_one(tmp_path, monkeypatch):
    """An older cell (no record) resumes as before, compared on the options given, and is
    not stamped with today's settings, which it may not have run under."""
    from diffhpo.bench import runner

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'r.db'}")
    with monkeypatch.context() as m:  # as an older version wrote the cell
        m.setattr(runner, "resolved_method_settings", lambda *a: None)
        _cell(storage)
    again = _cell(storage)
    assert "method_settings" not in again.study.user_attrs
    with pytest.raises(DiffhpoError, match="was run with --method-option \\(none\\), not step=0.1"):
        _cell(storage, step=0.1)


def test_a_diverged_y_restarts_from_z(tmp_path):
    """A checkpoint whose y has non-finite weights (the oracle diverged) resumes with y <- z:
    the next estimate is finite and says so (``y_reset``); without a divergence nothing changes."""
    task = GmmScheduleTask("smoke")
    q = task.default_params()
    for k in range(2):
        clean = task.oracle(q, 0, _ctx(k, tmp_path / "clean"))
    assert "y_reset" not in clean.info
    task.oracle(q, 0, _ctx(0, tmp_path / "nan"))
    path = sl.SingleLoop._path(tmp_path / "nan", 0)
    state = torch.load(path, weights_only=False)
    state["y"] = {n: torch.full_like(v, float("nan")) if v.is_floating_point() else v for n, v in state["y"].items()}
    torch.save(state, path)
    again = GmmScheduleTask("smoke").oracle(q, 0, _ctx(1, tmp_path / "nan"))
    assert again.info["y_reset"] == 1.0
    assert all(math.isfinite(g) for g in again.grad.values())
    assert again.info["yz_distance"] < clean.info["yz_distance"] + 1.0
