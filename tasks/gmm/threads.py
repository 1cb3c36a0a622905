"""Torch on one thread while a mixture task works.

The 2-D tasks' tensors are small (thousands of points, an MLP of width 128): a second
OpenMP thread gains little on an idle machine, and on a shared one two threads that lose
their core wait for each other. Measured on the shared 2-core machine (load 4.4): one
``gmm-reward`` evaluation took 2.3 s with torch's default two threads and 0.2 s on one
(``benchmarks/gmm_speed.py``); ``mnist-schedule``'s docstring reports the same effect.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
