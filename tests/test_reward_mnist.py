"""Task reward-mnist: shipped networks (checksums, quality bar), the builders, the search
spaces per method, guidance on the real model, and the bank-based oracle (the smoke matrix
of every method is in test_reward_matrix.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffhpo.bench.toolkit import assets
from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.tasks import TASKS
from diffhpo.bench.contracts.task import OracleContext
from diffhpo.tasks.reward import bank as bank_mod
from diffhpo.tasks.reward import mnist_models as mm
from diffhpo.tasks.reward import penalty as pen

pytestmark = pytest.mark.usefixtures("session_cache")


@pytest.fixture(scope="module")
def task():
    torch.set_num_threads(1)
    return TASKS.get("reward-mnist")("smoke")


# --- shipped networks ----------------------------------------------------------------------------


@pytest.mark.parametrize("filename", [mm.DDPM_FILE, mm.GUIDANCE_FILE])
def test_shipped_networks_match_checksums_and_records(filename):
    path = assets.verified_asset(filename)
    record = json.loads(assets.record_path(path).read_text())
    assert path.stat().st_size == record["size_bytes"] < 4_000_000  # a few MB at most
    for key in ("seed", "torch_version", "wall_time_s", "history", "command", "dataset"):
        assert key in record
    assert record["command"].startswith("diffhpo assets build") and record["dataset"] == "mnist5k"


def test_guidance_classifier_accuracy():
    from diffhpo.bench.toolkit.data import load_mnist

    images, labels = load_mnist("mnist5k", "heldout")
    net = mm.load_guidance_classifier()
    with torch.no_grad():
        acc = float((net(mm.to_unit_range(images)).argmax(1) == labels).double().mean())
    record = assets.read_record(assets.verified_asset(mm.GUIDANCE_FILE))
    assert acc >= 0.95 and acc == pytest.approx(record["heldout_accuracy"], abs=0.003)


@pytest.mark.slow
def test_shipped_ddpm_quality_bar():
    """At least 80% of 1,000 samples, drawn as the task draws them (the quick profile's steps
    and eta), are classified with probability >= 0.9 by the feature network, and every digit
    is generated."""
    from diffhpo.bench.toolkit.metrics.images import to_uint8
    from diffhpo.tasks.reward.guidance import sample_images

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = TASKS.get("reward-mnist").profiles["quick"]
    model = mm.load_mnist_ddpm()
    noise = torch.randn((1000,) + model.image_shape, generator=torch.Generator().manual_seed(2024))
    run = sample_images(model.eps, lambda: model.scheduler(cfg.steps), noise, batch_size=250, eta=cfg.eta, seed=2024)
    conf, pred = mm.confidence(to_uint8(run.samples))
    assert float((conf >= 0.9).double().mean()) >= 0.80
    counts = torch.bincount(pred, minlength=10)
    assert int(counts.min()) >= 30, counts.tolist()  # no mode collapse onto a few digits


def test_builders_are_seeded_and_write_verifiable_records(tmp_path):
    a = mm.build_guidance_classifier(tmp_path / "a", seed=1, epochs=1, train_images=256)
    b = mm.build_guidance_classifier(tmp_path / "b", seed=1, epochs=1, train_images=256)
    assert a["sha256"] == b["sha256"] and a["train_size"] == 256
    assert mm.load_guidance_classifier(assets.verified_asset(mm.GUIDANCE_FILE, tmp_path / "a"))
    d = mm.build_mnist_ddpm(tmp_path / "d", seed=1, steps=4, train_images=128, eval_every=2, eval_samples=4,
                            eval_steps=2)
    assert [h["step"] for h in d["history"]] == [2, 4]
    assert d["unet_config"] == mm.UNET_CONFIG and d["steps"] == 4
    assert assets.verified_asset(mm.DDPM_FILE, tmp_path / "d")
    assert d["command"].startswith("build_mnist_ddpm(") and d["resumed"] is False
    assert not torch.are_deterministic_algorithms_enabled()
    assert {"mnist-ddpm", "guidance-classifier"} <= set(assets.ASSETS)


def test_an_interrupted_ddpm_build_resumes_to_the_same_weights(tmp_path):
    """With a checkpoint folder, a build stopped after its first evaluation resumes there and
    ends with the weights of an uninterrupted build."""
    kw = dict(seed=2, steps=4, train_images=128, eval_every=2, eval_samples=4, eval_steps=2)
    whole = mm.build_mnist_ddpm(tmp_path / "whole", **kw)

    def stop(line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mm.build_mnist_ddpm(tmp_path / "cut", checkpoint_dir=tmp_path / "ckpt", log=stop, **kw)
    assert not (tmp_path / "cut" / mm.DDPM_FILE).exists() and len(list((tmp_path / "ckpt").iterdir())) == 1
    lines = []
    cut = mm.build_mnist_ddpm(tmp_path / "cut", checkpoint_dir=tmp_path / "ckpt", log=lines.append, **kw)
    assert lines[0].startswith("resumed from") and "at step 2/4" in lines[0] and cut["resumed"] is True
    assert cut["sha256"] == whole["sha256"]
    assert [h["step"] for h in cut["history"]] == [2, 4]
    assert [h["confident_fraction"] for h in cut["history"]] == [h["confident_fraction"] for h in whole["history"]]


# --- the task ------------------------------------------------------------------------------------


def test_search_spaces_per_method_and_bad_options(task):
    assert list(task.search_space()) == ["lam"]
    assert task.default_grid() == {"lam": [0.01, 0.1, 1.0, 10.0, 100.0]}
    assert task.search_space_for("default") == task.search_space()
    assert task.search_space_for("none") == {} and task.default_grid_for("none") == {}
    assert list(task.search_space_for("weighted-sum")) == ["w"]
    assert task.search_space_for("no-such-variant") is None
    assert task.default_params() == pytest.approx({"lam": 1.0})
    assert task.primary.name == "alignment" and task.primary.direction == "maximize"
    for bad in ({"digits": "3,11"}, {"digits": "3,3"}, {"grad_through": "nowhere"}, {"digits": "x"}):
        with pytest.raises(DiffhpoError):
            TASKS.get("reward-mnist")("smoke", **bad)
    assert TASKS.get("reward-mnist")("smoke", digits="1,7").conditions() == [1, 7]


def test_modes_and_common_random_numbers(task):
    a = task.generate({"lam": 1.0}, seed=0, n=3)
    b = task.generate({"lam": 1.0}, seed=0, n=3)
    c = task.generate({"w": 1.0}, seed=0, n=3)
    d = task.generate({}, seed=0, n=3)
    e = task.generate({}, seed=1, n=3)
    assert list(a) == [3, 8] and a[3].shape == (3, 1, 28, 28)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same parameters: same images
    assert not torch.equal(a[3], c[3]) and not torch.equal(a[3], d[3]) and not torch.equal(d[3], e[3])
    assert task._mode({"w": 2.0}) == ("weighted-sum", task.config.ws_lambda, 2.0)
    assert task._mode({})[0] == "none"


def test_eta_option_is_checked_seeded_and_keys_the_bank():
    ancestral = TASKS.get("reward-mnist")("smoke", digits="3")
    ddim = TASKS.get("reward-mnist")("smoke", digits="3", eta="0")
    assert ancestral.config.eta == 1.0 and ddim.config.eta == 0.0
    a = ancestral.generate({}, 5, 4)[3]
    assert torch.equal(a, ancestral.generate({}, 5, 4)[3])  # the step noise is seeded
    assert not torch.equal(a, ancestral.generate({}, 6, 4)[3])
    assert not torch.equal(a, ddim.generate({}, 5, 4)[3])
    assert ancestral.bank(0).key != ddim.bank(0).key  # a bank is drawn with the task's sampler
    for bad in ("1.5", "-0.1", "often"):
        with pytest.raises(DiffhpoError, match="eta"):
            TASKS.get("reward-mnist")("smoke", eta=bad)


def test_guidance_moves_samples_towards_the_digit():
    """On the shipped model, the task's default guidance: at lambda = 1 (target: the
    class-conditional model) more samples are the target digit than without guidance
    (about 1 in 10), with a higher r2, and a stronger tilt (lambda = 0.3) raises r2 further.
    (The Tweedie-point guidance only approximates the tilted model: lambda = 1 does not give
    all 3s.)"""
    t = TASKS.get("reward-mnist")("smoke", steps="10", digits="3")
    guided, strong, plain = t.generate({"lam": 1.0}, 5, 16), t.generate({"lam": 0.3}, 5, 16), t.generate({}, 5, 16)
    acc = {k: t.extra_metrics(v, [], [])["accuracy"] for k, v in (("guided", guided), ("strong", strong),
                                                                   ("plain", plain))}
    assert acc["strong"] >= acc["guided"] > acc["plain"], acc
    r2 = {k: t.score(v[3], 3)[1].mean() for k, v in (("guided", guided), ("strong", strong), ("plain", plain))}
    assert r2["strong"] > r2["guided"] > r2["plain"], r2


def test_oracle_is_the_bank_penalty_derivative_and_charges_the_bank_once(task):
    r0 = task.oracle({"lam": 0.5}, 0, OracleContext(iteration=0, gamma=10.0))
    bank = task.bank(0)
    assert bank.from_cache  # built by the first call, read back now
    assert bank.r1.shape == (2, task.config.bank_size) and bank.images == task.config.bank_size
    est = pen.estimate(bank.per_condition(task.config.guidance), 0.5, 10.0)
    assert r0.grad == {"lam": pytest.approx(-est.grad, rel=1e-12)}  # d(upper score)/dlambda
    assert r0.metrics["alignment"] == pytest.approx(est.upper)
    kappa = bank_mod.STEP_COST[task.config.grad_through]  # a guided step in unguided steps
    bank_cost = task.config.bank_size / (task.config.n_samples * 2 * kappa)
    assert r0.cost == pytest.approx(task.config.oracle_cost + bank_cost)
    r1 = task.oracle({"lam": 0.5}, 0, OracleContext(iteration=1, gamma=10.0))
    assert r1.cost == pytest.approx(task.config.oracle_cost) and r1.info["bank_cached"] == 1.0
    assert r1.grad == r0.grad
    # no tilt at a huge lambda: the estimate is the bank mean of r1
    far = task.oracle({"lam": 1e9}, 0, OracleContext(iteration=1, gamma=10.0))
    assert far.metrics["alignment"] == pytest.approx(bank.r1.mean(), rel=1e-6)
    assert task.bank(1).key != bank.key  # each seed its own bank
    assert math.isfinite(r0.info["ess"]) and 1 <= r0.info["ess"] <= task.config.bank_size


@pytest.mark.parametrize("name", ["reward-mnist", "reward-sd"])
def test_every_profile_leaves_the_bilevel_method_room_inside_the_budget(name):
    """Equal budget: the bank the bilevel oracle charges on its first iteration, plus at least
    ten outer iterations, fits in the budget every other method gets (quick used to charge a
    bank of 6.25 units against a budget of 5). smoke, for tests in seconds, needs two."""
    cls = TASKS.get(name)
    for profile, cfg in cls.profiles.items():
        k = len(cfg.digits) if name == "reward-mnist" else len(cfg.prompts)
        bank_images = cfg.bank_size * (1 if name == "reward-mnist" else k)  # MNIST: one unconditional bank
        bank = bank_mod.bank_cost(bank_images, cfg.n_samples * k, cfg.grad_through)
        iterations = 2 if profile == "smoke" else 10
        assert bank + iterations * cfg.oracle_cost <= cfg.budget, (profile, bank, cfg.budget)
