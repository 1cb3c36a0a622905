"""Four-parameter noise schedules, differentiable in their parameters (method.md, Application 2).

A schedule family maps ``q = (q_s, q_e, q_tau, q_eps)`` to the ``T = 1000`` betas of a
discrete diffusion process and to ``alphabar_t = prod_{i <= t} (1 - beta_i)``. With the
normalised time ``tau_t = t / T`` (``t = 0 .. T``) and the *schedule position*

    s_t = tau_t * (q_e - q_s) + q_s                     (runs from q_s to q_e)

the two families of method.md are

* cosine:  ``f_t = clamp(cos(((s_t + q_eps) / (1 + q_eps)) * pi/2), 0, 1) ** (2 q_tau)``
* sigmoid: ``f_t = sigmoid((1 - s_t) / q_tau + q_eps)``

and ``beta_t = clip(1 - f_t / f_{t-1}, 0, 0.999)`` for ``t = 1 .. T``,
``alphabar_t = prod_{i <= t} (1 - beta_i)`` (so ``alphabar_t = f_t / f_0`` wherever the
clip is inactive).

**Which t.** method.md writes ``s_t = t (q_e - q_s) + q_s`` and uses ``s_t / T`` inside the
cosine. Counting t in steps (0 .. T) as the reference code does makes ``q_s`` enter as
``q_s / T``: a shift of at most 0.4 of one step out of 1000, i.e. the reference BO's
``q_s`` in [0, 0.4] had no effect. We therefore read t as *normalised* time, which is
the same thing for ``q_s = 0`` (all checks of method.md hold: the default cosine
``(0, 1, 1, 0.008)`` gives ``alphabar_T ~ 2.4e-9`` and ``q_e = 0.9`` gives ``~0.024``) and
makes ``q_s`` a real parameter: the schedule starts at position ``q_s`` of the cosine, so
larger ``q_s`` spends fewer steps at low noise. ``q_e < 1`` stops before full noise
(``alphabar_T > 0``), ``q_tau > 1`` is a faster decay, ``q_eps`` the usual offset of the
cosine schedule (Nichol & Dhariwal 2021).

**Sigmoid family.** ``(1 - s_t) / q_tau + q_eps`` is close to the log signal-to-noise
ratio ``log(alphabar / (1 - alphabar))`` wherever ``f_0 ~ 1``: the family is a schedule
whose log-SNR falls (about) linearly in t from ``(1 - q_s)/q_tau + q_eps`` to
``(1 - q_e)/q_tau + q_eps``. In method.md's ratio form ``alphabar_T = f_T / f_0`` it only
reaches small values when ``q_e`` is well above 1, so its parameter ranges are not the
cosine's; see :data:`SIGMOID_RANGES` (our choice: log-SNR from about +10 to -10 at the
default ``(-1, 3, 0.2, 0)``, the range the default cosine schedule covers between its
first and its last-but-one step).

Everything is computed in float64 with torch operations, so ``alphabar`` is
differentiable in ``q`` by autograd (the clamp and the clip have zero gradient where
they are active).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

T_DEFAULT = 1000
PARAM_NAMES = ("q_s", "q_e", "q_tau", "q_eps")
FAMILIES = ("cosine", "sigmoid")
BETA_MAX = 0.999

#: The default schedule of each family (cosine: the standard cosine schedule of DDIM / diffusers).
DEFAULTS: dict[str, tuple[float, float, float, float]] = {
    "cosine": (0.0, 1.0, 1.0, 0.008),
    "sigmoid": (-1.0, 3.0, 0.2, 0.0),
}
#: Search ranges. cosine: the reference BO's ranges (method.md). sigmoid: ours, chosen so that the
#: family spans schedules from "too little terminal noise" (log-SNR ending at -2.75,
#: alphabar_T ~ 0.06) to log-SNR ranges wider than the default cosine's (+19 to -21).
COSINE_RANGES: dict[str, tuple[float, float]] = {
    "q_s": (0.0, 0.4), "q_e": (0.8, 1.0), "q_tau": (1.0, 4.0), "q_eps": (0.005, 0.04),
}
SIGMOID_RANGES: dict[str, tuple[float, float]] = {
    "q_s": (-2.0, 0.0), "q_e": (2.5, 4.0), "q_tau": (0.15, 0.4), "q_eps": (-1.0, 1.0),
}
RANGES = {"cosine": COSINE_RANGES, "sigmoid": SIGMOID_RANGES}


def as_q(q, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``q`` as a float tensor of shape (4,): from a tensor, a sequence or a dict keyed by :data:`PARAM_NAMES`."""
    if isinstance(q, dict):
        q = [q[n] for n in PARAM_NAMES]
    if torch.is_tensor(q):
        return q.to(dtype)
    return torch.tensor([float(v) for v in q], dtype=dtype)


def f_curve(family: str, q, T: int = T_DEFAULT) -> torch.Tensor:
    """``f_t`` for ``t = 0 .. T`` (``T + 1`` values), see the module docstring."""
    q = as_q(q)
    q_s, q_e, q_tau, q_eps = q[0], q[1], q[2], q[3]
    tau = torch.linspace(0.0, 1.0, T + 1, dtype=q.dtype)
    s = tau * (q_e - q_s) + q_s
    if family == "cosine":
        c = torch.cos((s + q_eps) / (1.0 + q_eps) * (math.pi / 2)).clamp(0.0, 1.0)
        return c ** (2.0 * q_tau)
    if family == "sigmoid":
        return torch.sigmoid((1.0 - s) / q_tau + q_eps)
    raise ValueError(f"unknown schedule family {family!r}; valid: {', '.join(FAMILIES)}")


@dataclass(frozen=True)
class Schedule:
    """``betas`` and ``alphabar`` (each of length T, index ``t - 1`` for step ``t``, as in diffusers)."""

    family: str
    betas: torch.Tensor
    alphabar: torch.Tensor

    @property
    def alphabar_T(self) -> float:
        return float(self.alphabar[-1])


def schedule(family: str, q, T: int = T_DEFAULT) -> Schedule:
    """The schedule of ``q``: ``beta_t = clip(1 - f_t / f_{t-1}, 0, 0.999)``, ``alphabar = cumprod(1 - beta)``.

    Differentiable in ``q`` when ``q`` is a tensor that requires grad.
    """
    f = f_curve(family, q, T)
    prev = f[:-1]
    positive = prev > 0
    # where f_{t-1} = 0 (the cosine clamped at 0: q_e beyond 1, e.g. in a zeroth-order
    # perturbation) the ratio is taken as 0, i.e. beta = 0.999, the clip's value; the
    # double where keeps the gradient finite
    ratio = torch.where(positive, f[1:] / torch.where(positive, prev, torch.ones_like(prev)), torch.zeros_like(prev))
    betas = torch.clip(1.0 - ratio, 0.0, BETA_MAX)
    alphabar = torch.cumprod(1.0 - betas, dim=0)
    return Schedule(family, betas, alphabar)


def validity_problems(sched: Schedule) -> list[str]:
    """Reasons why a schedule is unusable (empty when it is valid): NaN, alphabar not
    decreasing, alphabar outside (0, 1], a beta above 0.999 or below 0."""
    b, a = sched.betas.detach(), sched.alphabar.detach()
    out = []
    if not (torch.isfinite(b).all() and torch.isfinite(a).all()):
        out.append("betas or alphabar are not finite")
        return out
    if (b < 0).any() or (b > BETA_MAX).any():
        out.append(f"beta outside [0, {BETA_MAX}]")
    if (a <= 0).any() or (a > 1).any():
        out.append("alphabar outside (0, 1]")
    if (a[1:] > a[:-1]).any():
        out.append("alphabar not decreasing")
    if not a[-1] < a[0]:
        out.append("alphabar constant")
    return out


def check_valid(sched: Schedule) -> Schedule:
    problems = validity_problems(sched)
    if problems:
        raise ValueError(f"invalid {sched.family} schedule: {'; '.join(problems)}")
    return sched


def log_snr(alphabar: torch.Tensor) -> torch.Tensor:
    """``log(alphabar / (1 - alphabar))``."""
    return torch.log(alphabar) - torch.log1p(-alphabar)
