"""reward-mnist ``objective=bold`` (issue 16): r2 = guidance classifier + ink proxy, r1 =
held-out classifier + gold stroke-area preference. Cheap checks on real held-out digits (no
sampling); the bank and sampler curves are measured by ``diffhpo run ... --option
objective=bold`` (see the task's docstring)."""

import numpy as np
import pytest
import torch

from diffhpo.bench.contracts.options import undeclared
from diffhpo.tasks.reward.mnist_task import RewardMnistTask
from diffhpo.tasks.reward.rewards import ink, stroke_area

pytestmark = pytest.mark.usefixtures("session_cache")


def _digits(d):
    from diffhpo.bench.toolkit.data import load_mnist
    from diffhpo.tasks.reward.mnist_models import to_unit_range

    images, labels = load_mnist("mnist5k", "heldout")
    return to_unit_range(images[labels == d])


def test_options_declared_and_default_unchanged():
    assert undeclared(RewardMnistTask.profiles.values()) == []
    t = RewardMnistTask("smoke")
    assert t.config.objective == "classifier"
    assert t.lower_reward().name == "classifier-logprob" and "gold" not in t.upper_reward_id()[0]
    assert "gold" not in {m.name for m in t.metrics}


def test_bold_rewards_on_real_digits():
    """r2 adds ink_weight x ink; the gold term is 0 at the target quantile and negative on both
    sides; on the boldest real 3s the proxy keeps rising while the gold term falls: r1 and r2
    disagree on real digits (the premise the bank needs)."""
    t = RewardMnistTask("smoke", objective="bold")
    base = RewardMnistTask("smoke")
    x = _digits(3)
    with torch.no_grad():
        r2, r2_base = t.lower_reward()(x, 3), base.lower_reward()(x, 3)
        gold = t._gold(x, 3)
        r1, r1_base = t.upper_reward_diff()(x, 3), base.upper_reward_diff()(x, 3)
    assert torch.allclose(r2 - r2_base, 100.0 * ink(x), atol=1e-4)
    assert torch.allclose(r1 - r1_base, gold, atol=1e-4)
    assert float(gold.max()) <= 0 and float(gold.max()) > -0.05
    area = stroke_area(x)
    q = float(torch.quantile(area, 0.9))
    bold = area > q
    rho = np.corrcoef(ink(x)[bold].numpy(), gold[bold].numpy())[0, 1]
    assert rho < -0.5, rho
    assert t.lower_reward().weights_id != base.lower_reward().weights_id  # distinct bank cache keys
