"""The bank of pre-trained samples behind the bilevel oracle (method.md, Application 1):
un-guided samples of the pre-trained model with their upper score r1 and lower reward r2
under every condition (digit or prompt), generated once and cached on disk.

Every term of the penalty function (:mod:`.penalty`) is an expectation under the
*pre-trained* model, so one bank serves every lambda and every outer iteration; only the
final lambda needs a guided sampling run.

* An unconditional model (MNIST) is sampled once; each sample is scored under every target
  digit (``r1[c, i]``, ``r2[c, i]``).
* A conditional model (Stable Diffusion with classifier-free guidance) is sampled per
  prompt, ``bank_size`` images each, and each image is scored under its own prompt.

Cache: ``<cache>/reward-bank/<key>.npz`` (see :func:`diffhpo.bench.toolkit.cache.cache_dir`), the key
being a SHA-256 of everything the values depend on (model and weights, scheduler, steps,
size, CFG, conditions, bank size and seed, both rewards and their weights). Writes are
atomic, so concurrent workers never read half a file.

Cost model (in the reward tasks' cost unit, one guided sampling run at the search
settings): a bank of ``B`` images costs ``B / (G * kappa)`` units, where ``G`` is the number
of images of a guided run (``n_samples`` x conditions) and ``kappa`` the cost of a guided
denoising step relative to an unguided one. Measured on 2 CPU cores for the shipped MNIST
model (96 images, 25 DDIM steps: guided 32.4 s with the gradient through the UNet, 14.5 s
through the decoder only, un-guided 13.3 s), the ratios are 2.4 and 1.1; :data:`STEP_COST`
rounds them *down* (2 and 1), so the bank is, if anything, over-charged: the bilevel
method is never favoured by the accounting.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...bench.toolkit.cache import cache_dir, config_key, unreadable

STEP_COST = {"unet": 2.0, "decoder": 1.0}


@dataclass(frozen=True)
class Bank:
    """``r1[k]``, ``r2[k]``: the bank's upper scores and lower rewards under condition ``k``."""

    conditions: tuple
    r1: np.ndarray  # (K, N) float64
    r2: np.ndarray  # (K, N) float64
    images: int  # images generated (N for an unconditional model, K x N for a conditional one)
    key: str
    from_cache: bool

    def per_condition(self, guidance: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(r1_k, guidance * r2_k)]``: the banks the penalty takes (the tilt exponent of the
        guided sampler is ``guidance * r2 / lambda``)."""
        return [(self.r1[k], guidance * self.r2[k]) for k in range(len(self.conditions))]


def bank_cost(bank_images: int, guided_images: int, grad_through: str) -> float:
    """Cost of generating a bank, in guided sampling runs (module docstring)."""
    return float(bank_images) / (float(guided_images) * STEP_COST[grad_through])


cache_key = config_key  # the bank of a configuration is found by the configuration's key


def load_or_build(
    description: dict[str, Any],
    conditions: Sequence,
    build: Callable[[], tuple[np.ndarray, np.ndarray, int]],
    *,
    use_cache: bool = True,
) -> Bank:
    """The cached bank for ``description``, or ``build()`` -> ``(r1 (K, N), r2 (K, N), images)``
    stored under its key."""
    key = cache_key({**description, "conditions": list(conditions)})
    path = bank_path(key)
    if use_cache and path.exists():
        try:
            with np.load(path) as data:
                return Bank(tuple(conditions), data["r1"], data["r2"], int(data["images"]), key, True)
        except Exception as exc:  # truncated, empty or not an npz: named, removed, rebuilt below
            unreadable(path, exc)
    r1, r2, images = build()
    r1, r2 = np.asarray(r1, dtype=np.float64), np.asarray(r2, dtype=np.float64)
    if r1.shape != r2.shape or r1.shape[0] != len(conditions):
        raise ValueError(f"bank shapes {r1.shape}, {r2.shape} do not match {len(conditions)} conditions")
    if use_cache:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, r1=r1, r2=r2, images=images, description=json.dumps(description, default=str))
        os.replace(tmp, path)
    return Bank(tuple(conditions), r1, r2, int(images), key, False)


def bank_path(key: str) -> Path:
    return cache_dir("reward-bank") / f"{key}.npz"
