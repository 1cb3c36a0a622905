"""Tasks ``reward-mnist`` and ``reward-sd``: tuning the KL strength lambda of reward-guided
sampling (method.md, Application 1; paper Algorithm 5).

Modules: :mod:`.guidance` (the guided DDIM sampler), :mod:`.rewards` (reward registry),
:mod:`.penalty` (the bank-based penalty and its lambda-derivative), :mod:`.bank` (the cached
bank of pre-trained samples), :mod:`.common` (what both tasks share), :mod:`.mnist_task`,
:mod:`.mnist_models` (the shipped DDPM and guidance classifier), :mod:`.sd_task`,
:mod:`.plots`.
"""

from ...bench.toolkit.assets import AssetSpec, register_asset
from . import mnist_models
from .mnist_task import RewardMnistTask
from .sd_task import RewardSdTask

register_asset(AssetSpec("mnist-ddpm", "mnist_ddpm.pt", "unconditional MNIST DDPM (diffusers UNet2DModel), "
                         "the pre-trained model of reward-mnist", mnist_models.build_mnist_ddpm))
register_asset(AssetSpec("guidance-classifier", "mnist_guidance_classifier.pt", "MNIST classifier whose "
                         "log-probability is reward-mnist's lower-level reward r2", mnist_models.build_guidance_classifier))

__all__ = ["RewardMnistTask", "RewardSdTask"]
