"""The bank-based penalty function in the KL strength lambda and its derivative
(method.md, Application 1, "Penalty function in lambda"; the paper's Proposition 1).

Problem (naming as in method.md: r1 is the upper-level score, r2 the lower-level reward)::

    lower:  p*_lambda = argmax_p E_p[r2] - lambda KL(p || p_pre),   p*_lambda ~ p_pre exp(r2 / lambda)
    upper:  max_lambda E_{p*_lambda}[r1]   (as a loss: min_lambda -E_{p*_lambda}[r1])

The fully first-order penalty of the loss (Kwon et al. 2023; method.md, "Bilevel
hyperparameter optimisation") with ``f = -E_p[r1]`` and ``g = -E_p[r2] + lambda KL`` has a
closed form, because ``min_p E_p[-s] + lambda KL(p || p_pre) = -lambda log E_pre[exp(s / lambda)]``::

    L_gamma(lambda) = -gamma lambda log E_pre[exp((r1/gamma + r2) / lambda)]
                      + gamma lambda log E_pre[exp(r2 / lambda)]                      (P)

    dL_gamma/dlambda = gamma [ KL(p_{gamma,lambda} || p_pre) - KL(p*_lambda || p_pre) ]  (D)

with ``p_{gamma,lambda} ~ p_pre exp((r1/gamma + r2)/lambda)``. ``L_gamma -> -E_{p*_lambda}[r1]``
as gamma grows (its error is O(1/gamma)), so (D) estimates ``-dE_{p*_lambda}[r1]/dlambda``.

Estimation from ONE bank of pre-trained samples ``x_1..x_N ~ p_pre`` with their ``r1_i,
r2_i``: ``log E_pre[exp(s/lambda)]`` becomes the log-mean-exp ``LME(s/lambda) =
logsumexp(s/lambda) - log N`` (numerically stable: the maximum is subtracted), and
expectations under a tilted model ``p_s ~ p_pre exp(s/lambda)`` become self-normalised
importance-weighted means with weights ``w = softmax(s/lambda)``. The KL of a tilted model
is ``KL(p_s || p_pre) = E_{p_s}[s/lambda] - log E_pre[exp(s/lambda)]``, estimated by
``sum_i w_i s_i/lambda - LME(s/lambda)``.

Property used by the tests: with these estimators, (D) is *exactly* the derivative of the
estimated (P) (``d/dlambda [-lambda LME(s/lambda)] = -LME(s/lambda) + sum_i w_i s_i / lambda``),
so finite differences of :func:`penalty` must match :func:`penalty_grad` to rounding. The log
of a Monte-Carlo mean is biased (downwards, by Jensen) for the true (P); the bank size
controls that bias. Everything is float64 numpy; no backward pass through any sampler.

Several prompts (digits) share one lambda: the objective is the mean over prompts, so
the penalty and its derivative are the means of the per-prompt ones (:func:`estimate`
takes a list of per-prompt banks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def _arr(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("empty bank")
    if not np.all(np.isfinite(a)):
        raise ValueError("bank values must be finite")
    return a


def log_mean_exp(a) -> float:
    """``log(mean(exp(a)))``, stable for any magnitude of ``a``."""
    a = _arr(a)
    m = float(a.max())
    return m + float(np.log(np.mean(np.exp(a - m))))


def tilt_weights(s, lam: float) -> np.ndarray:
    """Self-normalised importance weights of ``p ~ p_pre exp(s / lam)`` on the bank: ``softmax(s / lam)``."""
    z = _arr(s) / float(lam)
    w = np.exp(z - z.max())
    return w / w.sum()


def tilted_mean(values, s, lam: float) -> float:
    """Self-normalised estimate of ``E_p[values]`` for ``p ~ p_pre exp(s / lam)``."""
    return float(np.dot(tilt_weights(s, lam), _arr(values)))


def kl_tilted(s, lam: float) -> float:
    """Estimate of ``KL(p || p_pre)`` for ``p ~ p_pre exp(s / lam)``: ``sum_i w_i s_i/lam - LME(s/lam)``
    (non-negative up to rounding: the weighted mean of ``z`` is at least its log-mean-exp)."""
    z = _arr(s) / float(lam)
    return max(float(np.dot(tilt_weights(s, lam), z)) - log_mean_exp(z), 0.0)


def effective_sample_size(s, lam: float) -> float:
    """Kish's effective sample size ``1 / sum_i w_i^2`` of the tilt (1 .. N): how many bank
    samples the estimates at this lambda really rest on."""
    w = tilt_weights(s, lam)
    return float(1.0 / np.dot(w, w))


def _log_weights(s: np.ndarray, lam: float) -> np.ndarray:
    z = s / lam
    m = z.max()
    return z - (m + np.log(np.sum(np.exp(z - m))))


def _cgf(r1: np.ndarray, log_w: np.ndarray, t: float) -> float:
    """``C = log sum_i w_i exp(t r1_i)`` (the cumulant-generating function of r1 under the
    weights ``w``), accurate both for small ``t`` (``log1p`` of a weighted ``expm1``, no
    cancellation when ``C ~ t E[r1]`` is tiny) and for large ``t`` (log-sum-exp)."""
    if t * float(np.max(np.abs(r1))) < 1.0:
        return float(np.log1p(np.dot(np.exp(log_w), np.expm1(t * r1))))
    a = log_w + t * r1
    m = float(a.max())
    return m + float(np.log(np.sum(np.exp(a - m))))


def penalty(r1, r2, lam: float, gamma: float) -> float:
    """Estimated ``L_gamma(lambda)`` of (P) on one bank.

    Evaluated in the equivalent, better-conditioned form
    ``L = -gamma lambda [LME((r1/gamma + r2)/lambda) - LME(r2/lambda)] = -C / t`` with
    ``t = 1/(gamma lambda)`` and ``C = log sum_i w_i exp(t r1_i)``, ``w = softmax(r2/lambda)``
    (the two log-mean-exps share the factor ``exp(r2/lambda)``; subtracting them directly
    loses the O(1/gamma) difference to rounding)."""
    r1, r2 = _arr(r1), _arr(r2)
    lam, gamma = float(lam), float(gamma)
    t = 1.0 / (gamma * lam)
    return -_cgf(r1, _log_weights(r2, lam), t) / t


def penalty_grad(r1, r2, lam: float, gamma: float) -> float:
    """Estimated ``dL_gamma/dlambda`` of (D) on one bank: ``gamma [KL(p_{gamma,lambda}) - KL(p*_lambda)]``.

    With ``q = softmax((r1/gamma + r2)/lambda)`` (the weights of ``p_{gamma,lambda}``),
    ``w = softmax(r2/lambda)`` and ``q_i = w_i (1 + d_i)``, ``d_i = expm1(t r1_i - C)``, the
    difference of the two KL estimates is

        gamma [KL_q - KL_w] = L/lambda + (1/lambda) sum_i q_i r1_i + (gamma/lambda) sum_i w_i d_i r2_i,

    the exact derivative of :func:`penalty`, written without the cancellation of two
    nearly equal KLs (``sum_i w_i d_i r2_i`` is O(1/gamma) and computed as such)."""
    r1, r2 = _arr(r1), _arr(r2)
    lam, gamma = float(lam), float(gamma)
    t = 1.0 / (gamma * lam)
    log_w = _log_weights(r2, lam)
    c = _cgf(r1, log_w, t)
    w = np.exp(log_w)
    d = np.expm1(t * r1 - c)
    q = w * (1.0 + d)
    return (-c / t) / lam + float(np.dot(q, r1)) / lam + gamma / lam * float(np.dot(w * d, r2))


@dataclass(frozen=True)
class PenaltyEstimate:
    """Bank-based estimates at one lambda, averaged over prompts.

    ``upper``/``lower``: self-normalised estimates of ``E_{p*_lambda}[r1]`` and
    ``E_{p*_lambda}[r2]``; ``value``/``grad``: (P) and (D); ``kl``: ``KL(p*_lambda || p_pre)``;
    ``ess``: the smallest effective sample size over prompts.
    """

    value: float
    grad: float
    upper: float
    lower: float
    kl: float
    ess: float
    n: int


def estimate(banks: Sequence[tuple[Sequence[float], Sequence[float]]], lam: float, gamma: float) -> PenaltyEstimate:
    """:class:`PenaltyEstimate` from per-prompt banks ``[(r1, r2), ...]`` (mean over prompts)."""
    if not banks:
        raise ValueError("no bank")
    vals, grads, ups, lows, kls, esss = [], [], [], [], [], []
    for r1, r2 in banks:
        r1, r2 = _arr(r1), _arr(r2)
        if r1.shape != r2.shape:
            raise ValueError(f"r1 and r2 must have the same length, got {r1.size} and {r2.size}")
        vals.append(penalty(r1, r2, lam, gamma))
        grads.append(penalty_grad(r1, r2, lam, gamma))
        ups.append(tilted_mean(r1, r2, lam))
        lows.append(tilted_mean(r2, r2, lam))
        kls.append(kl_tilted(r2, lam))
        esss.append(effective_sample_size(r2, lam))
    return PenaltyEstimate(
        value=float(np.mean(vals)), grad=float(np.mean(grads)), upper=float(np.mean(ups)),
        lower=float(np.mean(lows)), kl=float(np.mean(kls)), ess=float(np.min(esss)),
        n=int(min(len(_arr(r1)) for r1, _ in banks)),
    )
