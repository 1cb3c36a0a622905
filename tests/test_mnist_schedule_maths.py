"""mnist-schedule: schedule maths, the score-matching gradient in q, the zeroth-order
estimator, DDIM from our betas, seeding (method.md, Application 2)."""

import math

import numpy as np
import pytest
import torch

from diffhpo.tasks.mnist_schedule import MnistScheduleTask
from diffhpo.tasks.mnist_schedule import schedules as S
from diffhpo.tasks.mnist_schedule import training as tr
from diffhpo.tasks.mnist_schedule.bilevel import zo_gradient
from diffhpo.tasks.mnist_schedule.sampling import (
    ddim_chain, ddim_scheduler, initial_noise, reference_cosine_scheduler, sample,
)

pytestmark = pytest.mark.usefixtures("session_cache")  # saved final samples stay off ~/.cache

COSINE_DEFAULT = (0.0, 1.0, 1.0, 0.008)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the task's CPU profiles use (two threads on a busy 2-core
    machine are many times slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_default_cosine_terminal_alphabar():
    sched = S.schedule("cosine", COSINE_DEFAULT)
    assert len(sched.betas) == len(sched.alphabar) == 1000
    assert sched.alphabar_T == pytest.approx(2.4e-9, rel=0.03)
    assert S.validity_problems(sched) == []
    assert float(sched.betas.max()) <= 0.999 and float(sched.betas.min()) >= 0
    assert (sched.alphabar[1:] < sched.alphabar[:-1]).all()
    assert 0 < float(sched.alphabar[-1]) and float(sched.alphabar[0]) <= 1


def test_q_e_point_nine_terminal_alphabar():
    assert S.schedule("cosine", (0.0, 0.9, 1.0, 0.008)).alphabar_T == pytest.approx(0.024, rel=0.02)


def test_default_cosine_is_diffusers_squaredcos():
    from diffusers import DDIMScheduler

    ours = S.schedule("cosine", COSINE_DEFAULT)
    ref = DDIMScheduler(beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(ours.betas.float(), ref.betas, rtol=1e-5, atol=1e-7)
    assert torch.allclose(ours.alphabar.float(), ref.alphas_cumprod, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("family", S.FAMILIES)
def test_every_corner_of_the_search_box_is_a_valid_schedule(family):
    ranges = S.RANGES[family]
    for corner in range(16):
        q = [ranges[n][(corner >> i) & 1] for i, n in enumerate(S.PARAM_NAMES)]
        sched = S.schedule(family, q)
        assert S.validity_problems(sched) == [], (family, q)
        assert sched.alphabar_T < 0.2
    default = S.schedule(family, S.DEFAULTS[family])
    assert default.alphabar_T < 1e-4
    for n, v in zip(S.PARAM_NAMES, S.DEFAULTS[family]):
        lo, hi = ranges[n]
        assert lo <= v <= hi


def test_every_parameter_moves_the_schedule():
    """Unlike the reference code (t counted in steps), q_s shifts the schedule for real."""
    base = S.schedule("cosine", COSINE_DEFAULT).alphabar
    for i, n in enumerate(S.PARAM_NAMES):
        q = list(COSINE_DEFAULT)
        q[i] += 0.05
        moved = S.schedule("cosine", q).alphabar
        assert float((moved - base).abs().max()) > 1e-3, n


def test_invalid_schedules_are_reported():
    bad = S.Schedule("cosine", torch.full((10,), 0.5), torch.linspace(1.0, 0.1, 10).flip(0))
    assert "alphabar not decreasing" in S.validity_problems(bad)
    with pytest.raises(ValueError):
        S.check_valid(bad)


def _tiny_unet():
    return tr.build_unet(tr.UNetSpec(channels=(8, 8), attention=(False, False), norm_num_groups=4), seed=3).double()


@pytest.mark.parametrize("family", S.FAMILIES)
def test_score_matching_gradient_in_q_matches_finite_differences(family):
    model = _tiny_unet()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((6, 1, 28, 28), generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 150, 420, 700, 930, 999])
    eps = torch.randn((6, 1, 28, 28), generator=g, dtype=torch.float64)
    q0 = torch.tensor([0.1, 0.93, 1.7, 0.02] if family == "cosine" else [-0.8, 3.1, 0.25, 0.3], dtype=torch.float64)

    def loss(q):
        return tr.denoising_loss(model, x0, t, eps, S.schedule(family, q).alphabar)

    q = q0.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(loss(q), q)
    h = 1e-6
    fd = torch.stack([(loss(q0 + h * e) - loss(q0 - h * e)) / (2 * h) for e in torch.eye(4, dtype=torch.float64)])
    assert torch.allclose(auto, fd.detach(), rtol=1e-5, atol=1e-9), (auto, fd)
    assert (auto.abs() > 1e-6).all()


def test_zeroth_order_estimator_is_unbiased_on_a_quadratic():
    rng = np.random.default_rng(0)
    lo, hi = np.array([0.0, 0.8, 1.0, 0.005]), np.array([0.4, 1.0, 4.0, 0.04])
    M = rng.standard_normal((4, 4))
    A, b = M @ M.T + np.eye(4), rng.standard_normal(4)
    scale = 1 / (hi - lo)  # a quadratic of comparable curvature in every normalised coordinate
    A, b = A * np.outer(scale, scale), b * scale

    def F(q):
        return 0.5 * q @ A @ q + b @ q

    q = (lo + hi) / 2
    truth = A @ q + b
    n = 40000
    dirs = rng.standard_normal((n, 4))
    g, fp, fm = zo_gradient(F, q, lo, hi, 0.05, dirs)  # interior: no projection active
    per_dir = np.array([(a - c) / 0.1 * u for a, c, u in zip(fp, fm, dirs)]) / (hi - lo)
    se = per_dir.std(axis=0) / math.sqrt(n)
    assert np.all(np.abs(g - truth) < 4 * se + 1e-12), (g, truth, se)
    # one direction is noisy, but unbiased: the mean of many single-direction estimates agrees
    singles = np.array([zo_gradient(F, q, lo, hi, 0.05, d[None])[0] for d in dirs[:2000]])
    assert np.allclose(singles.mean(axis=0), truth, atol=5 * singles.std(axis=0).max() / math.sqrt(2000))


def test_ddim_with_our_betas_reproduces_diffusers_cosine():
    model = tr.build_unet(tr.UNetSpec(channels=(8, 8), attention=(False, False), norm_num_groups=4), seed=1).eval()
    ours = ddim_scheduler(S.schedule("cosine", COSINE_DEFAULT).betas, 8)
    ref = reference_cosine_scheduler(8)
    assert torch.equal(ours.timesteps, ref.timesteps) and len(ours.timesteps) == 8
    assert int(ours.timesteps[0]) == 999  # trailing spacing starts at t = T
    noise = initial_noise(4, seed=5)
    with torch.no_grad():
        a, b = ddim_chain(model, ours, noise.clone()), ddim_chain(model, ref, noise.clone())
    assert torch.allclose(a, b, atol=1e-4)


def test_sampling_uses_exactly_the_configured_steps():
    model = _tiny_unet().float().eval()
    calls = []
    original = model.forward
    model.forward = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    betas = S.schedule("cosine", COSINE_DEFAULT).betas
    images = sample(model, betas, 6, 5, seed=0, batch_size=3)
    assert images.shape == (6, 1, 28, 28) and len(calls) == 2 * 5  # two batches x 5 steps, no 1000-step fallback
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    with pytest.raises(ValueError):
        ddim_scheduler(betas, 0)


def test_same_seed_same_training_and_metrics():
    task = MnistScheduleTask("smoke")
    params = task.default_params()
    a, b = task.evaluate(params, seed=4), task.evaluate(params, seed=4)
    assert a == b
    assert set(a) == {m.name for m in task.metrics} and task.metrics[0].name == "fid"
    assert a["alphabar_T"] == pytest.approx(2.4e-9, rel=0.03)
    sched = task.schedule_of(params)
    n1, _ = task.train_full(sched, seed=4)
    n2, _ = task.train_full(sched, seed=4)
    n3, _ = task.train_full(sched, seed=5)
    s1, s2, s3 = n1.state_dict(), n2.state_dict(), n3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_a_smaller_image_size_trains_small_and_measures_at_28():
    """``image_size=16``: the network trains on area-downsampled images and samples at 16 x 16;
    the metrics see bilinear-upsampled 28 x 28 images, like their reference."""
    from diffhpo.bench.contracts.errors import DiffhpoError

    task = MnistScheduleTask("smoke", image_size=16)
    data = task.train_data()
    assert data.shape[1:] == (1, 16, 16) and float(data.min()) >= -1 and float(data.max()) <= 1
    full = MnistScheduleTask("smoke").train_data()
    assert abs(float(data.mean()) - float(full.mean())) < 0.01  # area (box) downsampling: about the same mean ink
    sched = task.schedule_of(task.default_params())
    net, _ = task.train_full(sched, seed=0)
    assert net.config.sample_size == 16
    images = task.generate(net, sched, 5, noise_seed=1)
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.uint8
    assert math.isfinite(task.evaluate(task.default_params(), seed=0)["fid"])
    for bad in (30, 18, 2):  # above 28, not a multiple of 4 (3-level UNet), too small
        with pytest.raises(DiffhpoError, match="image_size"):
            MnistScheduleTask("smoke", image_size=bad, unet_channels=(8, 16, 16), unet_attention=(False,) * 3)


def test_task_declarations():
    task = MnistScheduleTask("quick")
    space = task.search_space()
    assert {n: (d.low, d.high) for n, d in space.items()} == {
        "q_s": (0.0, 0.4), "q_e": (0.8, 1.0), "q_tau": (1.0, 4.0), "q_eps": (0.005, 0.04)}
    assert task.default_params() == dict(zip(S.PARAM_NAMES, COSINE_DEFAULT))
    grid = task.default_grid()
    assert math.prod(len(v) for v in grid.values()) == 9
    assert grid["q_e"] == [0.8, 0.9, 1.0] and grid["q_tau"] == [1.0, 2.5, 4.0]
    sig = MnistScheduleTask("smoke", schedule="sigmoid")
    assert sig.default_params() == dict(zip(S.PARAM_NAMES, S.DEFAULTS["sigmoid"]))
    assert {n: (d.low, d.high) for n, d in sig.search_space().items()} == S.SIGMOID_RANGES
    m = sig.evaluate(sig.default_params(), seed=0)
    assert math.isfinite(m["fid"]) and m["alphabar_T"] == pytest.approx(4.54e-5, rel=0.01)
    from diffhpo.bench.contracts.errors import DiffhpoError

    with pytest.raises(DiffhpoError):
        MnistScheduleTask("smoke", schedule="linear")
