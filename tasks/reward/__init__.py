"""Tasks ``reward-mnist`` and ``reward-sd``: tuning the KL strength lambda of reward-guided
sampling (method.md, Application 1; paper Algorithm 5).

Modules: :mod:`.guidance` (the guided DDIM sampler), :mod:`.rewards` (reward registry),
:mod:`.penalty` (the bank-based penalty and its lambda-derivative), :mod:`.bank` (the cached
bank of pre-trained samples), :mod:`.common` (what both tasks share), :mod:`.mnist_task`,
:mod:`.mnist_models` (the shipped DDPM and guidance classifier), :mod:`.sd_task`,
:mod:`.plots`.
"""

from .mnist_task import RewardMnistTask
from .sd_task import RewardSdTask

__all__ = ["RewardMnistTask", "RewardSdTask"]
