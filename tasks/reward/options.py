"""The options every reward task shares (``reward-mnist``, ``reward-sd``, ``gmm-reward``),
declared once: the guided sampler's weighting, particles, steps and eta, the run sizes, the
bank, the lambda and w ranges, the bilevel oracle's charge per iteration and the budget
(:mod:`diffhpo.bench.contracts.options`).

A task's config puts its own options in a dataclass of their own and inherits both, this one
*first*::

    @dataclass(frozen=True)
    class RewardMnistConfig(RewardOptions, RewardMnistOwn):
        ...

``dataclasses`` orders fields by the reversed method resolution order, so the task's own
options come first and these after them, the order ``diffhpo list --options`` shows (the
order the three configs had before they shared this class; reward-sd's ``steps``, ``eta``,
``fid_backend`` and ``inception_weights`` stand elsewhere now). Nothing is keyed on the
order: the bank's cache key and the stored config of a study are compared as mappings
(``json.dumps(..., sort_keys=True)``, dict equality).

The defaults are reward-mnist's ``quick`` values; the other tasks set theirs in their
profiles.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...bench.contracts.options import option
from .guidance import WEIGHTING


@dataclass(frozen=True)
class RewardOptions:
    weighting: str = option("constant", "time weight of the guidance term: constant (Algorithm 5) or calibrated "
                            "(1/(1 + kappa v_t / lambda), reward.guidance)", choices=WEIGHTING)
    particles: int = option(1, "particles per sample of the twisted SMC corrector (1: plain guided sampler; "
                            "a guided run then costs this many cost units)", ge=1, le=4096)
    steps: int = option(25, "DDIM steps of the guided sampler", ge=1, le=1000)
    # reward-mnist: ancestral steps. Measured on 1,000 samples of the shipped DDPM (25 steps,
    # benchmarks/mnist_ddpm_quality.py): eta = 1 gives FID 1.1 and 85.9% classified with
    # probability >= 0.9; eta = 0 FID 3.6 and 83.3%, with too many blobs read as 8 and too few
    # 1s. The gap is larger for a less trained model: at 8,000 of its 16,000 steps, 0.83 against
    # 0.74 (400 samples; 50 or 100 deterministic steps did not help: 0.73, 0.72).
    eta: float = option(1.0, "DDIM eta: 0 deterministic, 1 ancestral", ge=0, le=1)
    n_samples: int = option(32, "samples per condition (digit, prompt) in a search-time guided run (the cost unit)",
                            ge=1)
    n_final: int = option(100, "samples per condition in the final protocol", ge=1)
    # reward-mnist: charged bank_size / (n_samples x digits) units (bank.py): 384 / 96 = 4 of the
    # quick budget of 5, leaving 1 unit for outer iterations (20 at oracle_cost 0.05). 600
    # images cost 6.25 units, more than the budget, and the bilevel cell overspent it
    # (measured: one iteration, 6.35 units).
    bank_size: int = option(384, "un-guided samples in the bilevel oracle's bank (per condition for a "
                            "conditional model)", ge=1)
    bank_cache: bool = option(True, "keep the bank on disk between runs")
    batch_size: int = option(96, "samples per sampling batch", ge=1)
    lam_low: float = option(0.01, "lower end of lambda's range", gt=0)
    lam_high: float = option(100.0, "upper end of lambda's range", gt=0)
    ws_lambda: float = option(1.0, "the weighted-sum baseline's fixed lambda", gt=0)
    w_low: float = option(0.01, "lower end of the weighted-sum weight w", gt=0)
    w_high: float = option(100.0, "upper end of the weighted-sum weight w", gt=0)
    oracle_cost: float = option(0.05, "cost units charged per bilevel outer iteration", gt=0)
    budget: float = option(5.0, "guided sampling runs per cell (every method)", gt=0, le=1e6)

    def rules(self):
        """Constraints every reward task's config shares (a task's ``rules`` yields these too)."""
        yield self.lam_low < self.lam_high, "lam_low must be below lam_high"
        yield self.w_low < self.w_high, "w_low must be below w_high"
        yield self.lam_low <= self.ws_lambda <= self.lam_high, "ws_lambda must lie in [lam_low, lam_high]"
