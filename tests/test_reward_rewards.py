"""The reward registry: values with known answers, differentiability, weights handling,
plug-ins, and the MNIST rewards on real digits."""

from __future__ import annotations


import pytest
import torch

from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.tasks.reward import rewards as R
from diffhpo.tasks.reward.tiny import tiny_clip

pytestmark = pytest.mark.usefixtures("session_cache")


def test_registry_names_the_built_in_rewards():
    for name in ("colourfulness", "aesthetic", "clip-score", "classifier-logprob", "feature-net-logprob"):
        assert name in R.REWARDS
    with pytest.raises(DiffhpoError, match="unknown reward"):
        R.REWARDS.get("no-such-reward")


def test_colourfulness_known_values_and_gradient():
    r = R.make_reward("colourfulness", R.RewardContext())
    grey = torch.zeros(2, 3, 8, 8)
    red = torch.full((1, 3, 8, 8), -1.0)
    red[:, 0] = 1.0  # R = 1, G = B = 0 in [0, 1]: rg = 1, yb = 0.5, no spread
    x = torch.cat([grey, red]).requires_grad_(True)
    v = r(x)
    assert v[:2].abs().max() < 1e-5
    assert v[2].item() == pytest.approx(0.3 * (1 + 0.25) ** 0.5, rel=1e-5)
    v.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert float(r(torch.zeros(3, 1, 8, 8)).abs().max()) == 0.0  # grey images have no colour


def test_plugin_factory_and_shape_check():
    R.REWARDS.register("test-mean", lambda ctx: R.Reward("test-mean", lambda x, c: x.mean(dim=(1, 2, 3))))
    R.REWARDS.register("test-bad", lambda ctx: R.Reward("test-bad", lambda x, c: x.mean()))
    try:
        assert R.make_reward("test-mean", R.RewardContext())(torch.ones(4, 1, 2, 2)).tolist() == [1.0] * 4
        with pytest.raises(DiffhpoError, match="one value per image"):
            R.make_reward("test-bad", R.RewardContext())(torch.ones(4, 1, 2, 2))
    finally:
        R.REWARDS.unregister("test-mean")
        R.REWARDS.unregister("test-bad")


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


def test_aesthetic_random_head_is_labelled_seeded_and_differentiable(clip):
    ctx = R.RewardContext(options={"aesthetic_weights": "random:3"}, clip=lambda: clip)
    r = R.make_reward("aesthetic", ctx)
    assert "RANDOM" in r.description and "tests only" in r.description
    x = (torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_(True)
    v = r(x)
    v.sum().backward()
    assert v.shape == (3,) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    again = R.make_reward("aesthetic", R.RewardContext(options={"aesthetic_weights": "random:3"}, clip=lambda: clip))
    assert torch.allclose(again(x.detach()), v.detach())


def test_aesthetic_head_from_a_file_and_errors(clip, tmp_path):
    w = torch.linspace(-1, 1, 16).reshape(1, 16)
    torch.save({"weight": w, "bias": torch.tensor([0.5])}, tmp_path / "head.pth")
    r = R.make_reward("aesthetic", R.RewardContext(options={"aesthetic_weights": str(tmp_path / "head.pth")},
                                                   clip=lambda: clip))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    model, processor = clip
    e = R.clip_image_embeddings(model, processor, x)
    expected = (e / e.norm(dim=-1, keepdim=True)) @ w[0] + 0.5
    assert torch.allclose(r(x), expected, atol=1e-5)
    torch.save({"weight": torch.ones(1, 8), "bias": torch.zeros(1)}, tmp_path / "wrong.pth")
    for spec, match in [("", "needs --option aesthetic_weights"), (str(tmp_path / "missing.pth"), "no such file"),
                        (str(tmp_path / "wrong.pth"), "8 inputs")]:
        bad = R.make_reward("aesthetic", R.RewardContext(options={"aesthetic_weights": spec}, clip=lambda: clip))
        with pytest.raises(DiffhpoError, match=match):
            bad(x)
    with pytest.raises(DiffhpoError, match="needs a CLIP model"):
        R.make_reward("aesthetic", R.RewardContext(options={"aesthetic_weights": "random:0"}))(x)


def test_clip_score_reward_matches_the_metric(clip):
    """The differentiable CLIP score agrees with the metrics' ClipScorer (100 x cosine)."""
    from diffhpo.bench.toolkit.metrics.clip_score import ClipScorer
    from diffhpo.bench.toolkit.metrics.images import to_uint8

    model, processor = clip
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = to_uint8(x).float() / 127.5 - 1  # the same pixels for both
    r = R.make_reward("clip-score", R.RewardContext(clip=lambda: clip))
    ours = r(x, "a fox")
    ref = 100 * ClipScorer(model, processor, device="cpu").cosines(to_uint8(x), "a fox").float()
    assert torch.allclose(ours, ref, atol=0.5), (ours, ref)


def test_mnist_rewards_on_held_out_digits():
    from diffhpo.bench.toolkit.data import load_mnist
    from diffhpo.tasks.reward.mnist_models import to_unit_range

    images, labels = load_mnist("mnist5k", "heldout")
    x, y = to_unit_range(images[:200]), labels[:200]
    for name in ("classifier-logprob", "feature-net-logprob"):
        r = R.make_reward(name, R.RewardContext())
        right = r(x, y)
        wrong = r(x, (y + 1) % 10)
        assert float(right.mean()) > -0.3 and float(wrong.mean()) < -3, name
        assert len(r.weights_id) == 16  # checksum of the shipped weights (bank cache key)
        xg = x[:4].clone().requires_grad_(True)
        r(xg, 3).sum().backward()
        assert xg.grad.abs().sum() > 0
    assert R.make_reward("classifier-logprob", R.RewardContext())(x[:5], 7).shape == (5,)  # one digit for all
