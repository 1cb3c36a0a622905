"""Diffusion tasks with a known answer on 2-D Gaussian mixtures: ``gmm-reward`` (method.md,
Application 1, exact tilt and exact lambda*; :mod:`.reward_task`) and ``gmm-schedule``
(Application 2, a small MLP trained under the schedule; :mod:`.schedule_task`). The
closed-form maths is :mod:`.mixture`, the sample distance :mod:`.distance`, the pictures
:mod:`.plots`."""

from .reward_task import GmmRewardTask
from .schedule_task import GmmScheduleTask

__all__ = ["GmmRewardTask", "GmmScheduleTask"]
