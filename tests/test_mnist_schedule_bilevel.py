"""mnist-schedule: the single-loop bilevel oracle (checkpoints, resume, determinism, cost)
and the whole smoke matrix through the runner."""

import pytest
import torch

from diffhpo.bench import storage as st
from diffhpo.bench.report import collect, summarise
from diffhpo.bench.runner import RunSpec, run_matrix
from diffhpo.bench.contracts.task import OracleContext
from diffhpo.tasks.mnist_schedule import MnistScheduleTask
from diffhpo.tasks.mnist_schedule.schedules import PARAM_NAMES

pytestmark = pytest.mark.usefixtures("session_cache")  # saved final samples stay off ~/.cache


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _ctx(k, workdir):
    return OracleContext(iteration=k, gamma=10.0 * 1.5**k, workdir=workdir)


def test_oracle_resumes_from_checkpoints_and_reruns_identically(tmp_path):
    task = MnistScheduleTask("smoke")
    q0 = task.default_params()
    r0 = task.oracle(q0, 0, _ctx(0, tmp_path))
    q1 = {**q0, "q_e": 0.97, "q_tau": 1.2}
    r1 = task.oracle(q1, 0, _ctx(1, tmp_path))
    assert (tmp_path / "singleloop-00000.pt").is_file() and (tmp_path / "singleloop-00001.pt").is_file()
    # a new process (new task instance) reruns iteration 1 from the checkpoint of iteration 0
    again = MnistScheduleTask("smoke").oracle(q1, 0, _ctx(1, tmp_path))
    assert again.grad == r1.grad and again.metrics == r1.metrics and again.cost == r1.cost
    # ... and continues with iteration 2; the checkpoint of iteration 0 is then dropped
    r2 = MnistScheduleTask("smoke").oracle(q1, 0, _ctx(2, tmp_path))
    assert not (tmp_path / "singleloop-00000.pt").exists()
    state = torch.load(tmp_path / "singleloop-00002.pt", weights_only=False)
    assert state["iteration"] == 2 and state["q"] == pytest.approx([q1[n] for n in PARAM_NAMES])
    for r in (r0, r1, r2):
        assert set(r.grad) == set(PARAM_NAMES) and all(v == v for v in r.grad.values())
        assert r.metrics["fid"] > 0 and {"kid_mean", "is_mean", "alphabar_T"} <= set(r.metrics)
        assert {"f_surrogate", "yz_distance", "zo_q_e", "penalty_q_e", "cost_zo"} <= set(r.info)
        for n in PARAM_NAMES:
            assert r.grad[n] == pytest.approx(r.info[f"zo_{n}"] + r.info[f"penalty_{n}"])
    # iteration 0 also warms z up; every iteration costs a fraction of units as accounted
    assert r0.cost > r1.cost > 0
    assert r1.cost == pytest.approx(sum(v for k, v in r1.info.items() if k.startswith("cost_")))
    # y moved away from z under the upper-level term
    assert r2.info["yz_distance"] > 0


def test_oracle_refuses_to_resume_without_the_previous_checkpoint(tmp_path):
    task = MnistScheduleTask("smoke")
    with pytest.raises(RuntimeError, match="checkpoint of iteration 2"):
        task.oracle(task.default_params(), 0, _ctx(3, tmp_path))


def test_quick_profile_costs_a_fraction_of_a_training():
    from diffhpo.tasks.mnist_schedule.bilevel import SingleLoop

    loop = SingleLoop(MnistScheduleTask("quick"))
    later = sum(loop.iteration_work(first=False).values()) / loop.unit_work()
    first = sum(loop.iteration_work(first=True).values()) / loop.unit_work()
    assert loop.warmup_steps() == round(0.5 * loop.task.train_steps)
    assert 0.1 < later < 0.5 and first == pytest.approx(later + 3 * (loop.warmup_steps() * 32 + 256) / loop.unit_work())


def test_smoke_matrix_every_method(tmp_path):
    """Acceptance: default, grid, random, botorch and bilevel on the smoke profile; the
    summary has FID, KID, IS, wall time, cost ratio and peak memory per method; pictures."""
    methods = ["default", "grid", "random", "botorch", "bilevel"]
    spec = RunSpec(tasks=["mnist-schedule"], methods=methods, seeds=[0], profile="smoke", out=tmp_path,
                   progress=False)
    run_matrix(spec, log=lambda s: None)
    trials, cells = collect(st.open_storage(st.default_url(tmp_path)))
    assert set(cells.method) == set(methods) and (cells.status == "done").all()
    assert len(trials[trials.method == "default"]) == 1
    bil = trials[trials.method == "bilevel"]
    assert bil.oracle.all() and len(bil) >= 2 and (bil.cost < 2).all()
    summary = summarise(cells)
    for col in ["fid_median", "kid_mean_median", "is_mean_median", "search_wall_s_total", "cost_ratio_median",
                "peak_rss_mib"]:
        assert summary[col].notna().all(), col
    assert (cells.final_fid > 0).all()
    default = cells[cells.method == "default"].iloc[0]
    assert default.param_q_e == 1.0 and default.param_q_tau == 1.0
    written = MnistScheduleTask.write_plots(cells, trials, tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert "mnist-schedule_smoke_alphabar.png" in names
    assert {f"mnist-schedule_smoke_samples_{m}_seed0.png" for m in methods} <= set(names)
    assert all(p.stat().st_size > 1000 for p in written)
    # checkpoints of the bilevel cell live in its workdir
    assert list((tmp_path / "work" / "mnist-schedule.bilevel.smoke.seed0").glob("singleloop-*.pt"))
