"""The paper's lower reward: a seeded random linear head on ResNet-18 features (issue 16),
offline with a random backbone; weights by path."""

import pytest
import torch
from torchvision.models import resnet18

from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.tasks.reward.rewards import RewardContext, make_reward


def _reward(**opts):
    return make_reward("resnet18-head", RewardContext(options=opts))


def test_seeded_differentiable_and_by_path(tmp_path):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = _reward(resnet_weights="random:0", resnet_head_seed=1)
    b = _reward(resnet_weights="random:0", resnet_head_seed=1)
    c = _reward(resnet_weights="random:0", resnet_head_seed=2)
    va, vb, vc = a(x), b(x), c(x)
    assert va.shape == (2,) and torch.equal(va, vb) and not torch.allclose(va, vc)
    assert a.weights_id != c.weights_id and "RANDOM" in a.description
    xr = x.clone().requires_grad_(True)
    g = torch.autograd.grad(a(xr).sum(), xr)[0]
    assert g.abs().sum() > 0
    # the same backbone by path gives the same values
    torch.manual_seed(0)
    net = resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save(net.state_dict(), path)
    d = _reward(resnet_weights=str(path), resnet_head_seed=1)
    assert torch.allclose(d(x), va, atol=1e-5) and str(path) in d.weights_id
    one_channel = a(x[:, :1])  # MNIST-like images are replicated to 3 channels
    assert one_channel.shape == (2,)


def test_missing_weights_are_named():
    with pytest.raises(DiffhpoError, match="resnet_weights"):
        _reward()
    with pytest.raises(DiffhpoError, match="no such file"):
        _reward(resnet_weights="/nonexistent/r18.pt")
