"""Task ``mnist-schedule`` (method.md, Application 2): noise-schedule optimisation while
training an MNIST diffusion model. See :mod:`.task` for the task, :mod:`.schedules` for
the schedule families, :mod:`.training` and :mod:`.sampling` for the lower level,
:mod:`.bilevel` for the single-loop bilevel oracle and :mod:`.plots` for the pictures."""

from .task import MnistScheduleConfig, MnistScheduleTask

__all__ = ["MnistScheduleConfig", "MnistScheduleTask"]
