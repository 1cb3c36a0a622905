"""What ``reward-mnist`` and ``reward-sd`` share: the bilevel problem of method.md,
Application 1, its search spaces, the guided-sampling evaluation, the bank-based oracle,
and the report's pictures.

Problem: lower level ``max_p E_p[r2] - lambda KL(p || p_pre)``, solved by guided sampling
(:mod:`.guidance`, paper Algorithm 5); upper level ``max_lambda E_{p*_lambda}[r1]``.
Hyperparameter ``lam`` in [0.01, 100], log scale; default grid {0.01, 0.1, 1, 10, 100};
default (the bilevel start point) the geometric centre, lambda = 1.

Search spaces by method (:meth:`RewardTask.search_space_for`):

* ``default`` (grid, random, TPE, BoTorch, bilevel, ...): ``{"lam"}``; a trial is one guided
  sampling run with ``r2`` at ``lam``.
* ``weighted-sum``: ``{"w"}`` in [0.01, 100] (log), at the fixed ``lam = ws_lambda``; a trial is
  one guided run with the reward ``r2 + w * r1`` (the paper's weighted-sum baseline).
* ``none``: ``{}``; the pre-trained model without guidance.

So the task reads the mode from the parameters it gets: ``lam`` -> guided by r2; ``w`` ->
weighted sum at ``ws_lambda``; nothing -> un-guided.

Cost unit: one guided sampling run at the search settings (``n_samples`` images per
condition, ``steps`` DDIM steps) with one particle per image. A trial's cost
(:meth:`RewardTask.evaluation_cost`) is that run's network work in this unit,
:func:`.guidance.relative_work`: a guided run with ``particles = K`` (the twisted SMC
corrector) steps K particles per image and costs K units; an un-guided run (``none``)
costs 1. The bilevel oracle (:meth:`RewardTask.oracle`) charges the
bank (:mod:`.bank`) once, on its first outer iteration (iteration 0), whether or not the
bank came from the disk cache, so the accounting does not depend on the cache; every
outer iteration also costs ``oracle_cost`` units, a deliberate over-charge of what it
computes (a few log-sum-exps over the bank, microseconds), so that the search ends. The
oracle does no guided sampling (the bank is un-guided), so ``particles`` does not change its
charge; every method's budget is in the same unit.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from optuna.distributions import BaseDistribution, FloatDistribution

from ...bench.contracts.errors import DiffhpoError
from ...bench.toolkit.seeding import derive_seed
from ...bench.contracts.task import Metric, OracleContext, OracleResult, Task
from . import bank as bank_mod
from . import penalty as pen
from .final_files import _params_key, final_grid_dir  # noqa: F401  (gmm's reward task imports them from here)

LAM_GRID = [0.01, 0.1, 1.0, 10.0, 100.0]
PREMISE_POINTS = 41  # bank-curve lambdas, log-spaced over [lam_low, lam_high] (0.1 decade on [0.01, 100])
#: final-protocol metrics of premise (2) of issue 16: the bank's prediction at the chosen lambda
PREMISE_METRICS = [
    Metric("bank_upper", "maximize", "bank estimate of E_{p*_lambda}[r1] at the final lambda (what bilevel's "
           "oracle predicts; compare with the realised upper score)"),
    Metric("bank_ess", "maximize", "effective sample size of the bank's weights at the final lambda"),
]
# purpose tags for derive_seed
EVAL_NOISE, BANK_NOISE = 501, 502
SAMPLE_GRID_PER_CONDITION = 8


class RewardTask(Task):
    """Base of the reward tasks. Subclasses provide the model, the conditions, the rewards
    and the quality metrics; see :class:`~diffhpo.tasks.reward.mnist_task.RewardMnistTask`."""

    cost_unit = "guided sampling runs"
    upper_metric: str = "upper"

    # -- subclass hooks ------------------------------------------------------------------------
    def conditions(self) -> list:
        raise NotImplementedError

    def model(self):
        """The sampling model: ``eps(x, t, cond)``, ``scheduler()``, ``decode``, ``noise_shape``,
        ``conditional``, ``id`` (see :class:`~.mnist_task.MnistModel`)."""
        raise NotImplementedError

    def lower_reward(self):
        """r2 (a :class:`~.rewards.Reward`), differentiable."""
        raise NotImplementedError

    def upper_reward_diff(self):
        """A differentiable form of r1 (for the weighted-sum guidance)."""
        raise NotImplementedError

    def score(self, images: torch.Tensor, cond: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(r1, r2)`` per image, as reported (numpy float64)."""
        raise NotImplementedError

    def quality_metrics(self, samples: dict, seed: int, final: bool) -> dict[str, float]:
        """FID, KID, IS (and task extras) of ``{cond: images in [-1, 1]}``."""
        raise NotImplementedError

    def describe_model(self) -> dict:
        """What the bank depends on besides the rewards (for its cache key)."""
        raise NotImplementedError

    # -- declarations ----------------------------------------------------------------------------
    def search_space(self) -> dict[str, BaseDistribution]:
        return {"lam": FloatDistribution(self.config.lam_low, self.config.lam_high, log=True)}

    def default_grid(self) -> dict[str, list]:
        return {"lam": [v for v in LAM_GRID if self.config.lam_low <= v <= self.config.lam_high]}

    def search_space_for(self, variant: str) -> dict[str, BaseDistribution] | None:
        """The space a method searches: ``default`` {lam}, ``weighted-sum`` {w}, ``none`` {}."""
        if variant == "weighted-sum":
            return {"w": FloatDistribution(self.config.w_low, self.config.w_high, log=True)}
        if variant == "none":
            return {}
        return super().search_space_for(variant)

    def default_grid_for(self, variant: str) -> dict[str, list] | None:
        if variant == "weighted-sum":
            return {"w": [v for v in LAM_GRID if self.config.w_low <= v <= self.config.w_high]}
        if variant == "none":
            return {}
        return super().default_grid_for(variant)

    def evaluation_cost(self, params: Mapping[str, Any]) -> float:
        """Cost of one search-time run under ``params`` (module docstring): ``particles`` units
        for a guided run, 1 for an un-guided one."""
        from .guidance import relative_work

        guided = self._mode(params)[0] != "none" and self.config.guidance != 0  # as generate's scale
        return float(relative_work(self.config.particles, guided))

    # -- the guided run --------------------------------------------------------------------------
    def _mode(self, params: Mapping[str, Any]) -> tuple[str, float, float]:
        """``(mode, lam, w)`` from the parameters (module docstring)."""
        if "lam" in params:
            return "lam", float(params["lam"]), 0.0
        if "w" in params:
            return "weighted-sum", float(self.config.ws_lambda), float(params["w"])
        if not params:
            return "none", math.inf, 0.0
        raise DiffhpoError(f"task {self.name!r}: unexpected parameters {sorted(params)}")

    def _guidance_reward(self, w: float):
        r2 = self.lower_reward()
        if w == 0.0:
            return r2
        r1 = self.upper_reward_diff()
        return lambda images, cond: r2(images, cond) + w * r1(images, cond)

    def _noise(self, seed: int, k: int, n: int, tag: int):
        import torch

        g = torch.Generator().manual_seed(derive_seed(seed, tag, k))
        return torch.randn((n,) + tuple(self.model().noise_shape), generator=g)

    def _sample(self, model, noise, conds, seed: int, **guidance):
        """:func:`.guidance.sample_images` with the task's sampler settings (steps, eta,
        batch size, decoder, the model's ``value_range``, default [-1, 1]); ``seed`` seeds the step noise when ``eta > 0``."""
        from .guidance import sample_images

        cfg = self.config
        return sample_images(model.eps, lambda: model.scheduler(cfg.steps), noise, conds, decode=model.decode,
                             batch_size=cfg.batch_size, eta=float(cfg.eta), seed=seed,
                             value_range=getattr(model, "value_range", (-1.0, 1.0)), **guidance)

    def generate(self, params: Mapping[str, Any], seed: int, n: int, conds: Sequence | None = None) -> dict:
        """``{cond: images in [-1, 1]}``: ``n`` samples per condition under ``params`` (one guided
        sampling run when ``n = n_samples``). The noise of condition ``k`` depends only on
        ``(seed, k)``, the initial noise and, with ``eta > 0``, the step noise: every lambda sees
        the same noise (common random numbers)."""
        mode, lam, w = self._mode(params)
        model = self.model()
        cfg = self.config
        reward = None if mode == "none" else self._guidance_reward(w)
        scale = 0.0 if mode == "none" else cfg.guidance / lam
        out = {}
        conds = list(conds) if conds is not None else self.conditions()
        for cond in conds:
            idx = self.conditions().index(cond)
            noise = self._noise(seed, idx, n, EVAL_NOISE).to(model.device, model.dtype)
            run = self._sample(model, noise, [cond] * n, derive_seed(seed, EVAL_NOISE, idx), reward=reward,
                               scale=scale, grad_through=cfg.grad_through,
                               weighting=getattr(cfg, "weighting", "constant"), particles=getattr(cfg, "particles", 1))
            out[cond] = run.samples
        return out

    def evaluate(self, params: Mapping[str, Any], seed: int, *, final: bool = False) -> dict[str, float]:
        """One guided sampling run under ``params`` (``n_samples`` per condition; ``n_final`` in
        the final protocol), then the upper score (mean r1), mean r2 and the quality metrics."""
        n = self.config.n_final if final else self.config.n_samples
        samples = self.generate(params, seed, n)
        r1s, r2s = [], []
        for cond, images in samples.items():
            r1, r2 = self.score(images, cond)
            r1s.append(r1)
            r2s.append(r2)
        out = {self.upper_metric: float(np.mean([r.mean() for r in r1s])),
               "lower": float(np.mean([r.mean() for r in r2s]))}
        out.update(self.extra_metrics(samples, r1s, r2s, params))
        out.update(self.quality_metrics(samples, seed, final))
        if final:
            self._save_final_grid(params, seed, samples)
            out.update(self.premise_metrics(params, seed))
        return out

    # -- premise (2) of the bilevel method: what the bank sees (issue 16) --------------------------
    def bank_curve(self, seed: int, lams=None) -> dict[str, np.ndarray]:
        """The bank's view of the lambda problem (method.md, "Penalty function in lambda"):
        ``{"lam", "bank_upper", "bank_ess"}`` with the self-normalised estimate of
        ``E_{p*_lambda}[r1]`` (mean over conditions) and the smallest effective sample size of
        the weights ``exp(guidance r2 / lambda)`` over conditions, at ``PREMISE_POINTS``
        log-spaced lambdas (or ``lams``), on the bank of the cell seeded ``seed``."""
        cfg = self.config
        lams = np.geomspace(cfg.lam_low, cfg.lam_high, PREMISE_POINTS) if lams is None else np.asarray(lams, float)
        per = self.bank(seed).per_condition(cfg.guidance)
        upper = np.array([np.mean([pen.tilted_mean(r1, r2, v) for r1, r2 in per]) for v in lams])
        ess = np.array([min(pen.effective_sample_size(r2, v) for _, r2 in per) for v in lams])
        return {"lam": lams, "bank_upper": upper, "bank_ess": ess}

    def premise_metrics(self, params: Mapping[str, Any], seed: int) -> dict[str, float]:
        """``bank_upper`` and ``bank_ess``: the bank's estimate of the upper score of what the
        parameters ask for, on the bank of the cell whose final protocol runs with ``seed``
        (:mod:`...bench.seeds`): the tilt ``exp(guidance r2 / lambda)`` (lambda trials),
        ``exp(guidance (r2 + w r1) / ws_lambda)`` (weighted sum), the bank's plain mean (no
        guidance). Also writes that bank's curve (:meth:`bank_curve`) as
        ``premise_seed<cell seed>_<config>.csv`` next to the final sample grids, for
        :meth:`write_plots`."""
        mode, lam, w = self._mode(params)
        cell_seed = _cell_seed(seed)
        curve = self.bank_curve(cell_seed)
        path = final_grid_dir(self.name, self.profile) / (
            f"premise_seed{cell_seed}_{bank_mod.cache_key(self.describe_config())[:8]}.csv")
        tmp = path.with_name(f".{path.name}.{time.time_ns()}.tmp")
        import pandas as pd

        pd.DataFrame(curve).to_csv(tmp, index=False)
        tmp.replace(path)
        g = self.config.guidance
        per = self.bank(cell_seed).per_condition(g)
        if mode == "none":
            return {"bank_upper": float(np.mean([r1.mean() for r1, _ in per])), "bank_ess": float(len(per[0][0]))}
        tilts = [(r1, s + g * w * r1) for r1, s in per]
        return {"bank_upper": float(np.mean([pen.tilted_mean(r1, s, lam) for r1, s in tilts])),
                "bank_ess": float(min(pen.effective_sample_size(s, lam) for _, s in tilts))}

    def preflight(self, seed: int) -> str | None:
        """The pre-flight line of a bilevel cell (issue 16): a warning when the bank curve's
        maximum lies at an end of the lambda range, i.e. the bank predicts that the best
        lambda is a bound (premise (2) fails or the range is too narrow); else None."""
        curve = self.bank_curve(seed)
        i = int(np.argmax(curve["bank_upper"]))
        if 0 < i < len(curve["lam"]) - 1:
            return None
        end = "lower" if i == 0 else "upper"
        return (f"diffhpo: task {self.name!r}, seed {seed}: the bank estimate of E[r1] is largest at the {end} end of "
                f"the lambda range (lambda = {curve['lam'][i]:.3g}, ESS {curve['bank_ess'][i]:.1f} of "
                f"{self.config.bank_size}); the bilevel oracle will walk to that bound. The bank sees only "
                f"pre-trained samples: if r1 and r2 agree on them, it cannot see reward hacking (issue 16).")

    def extra_metrics(self, samples: dict, r1s: list, r2s: list, params: Mapping[str, Any]) -> dict[str, float]:
        """Task-specific metrics of a run under ``params`` (default: none)."""
        return {}

    # -- the bilevel oracle ----------------------------------------------------------------------
    def bank(self, seed: int) -> bank_mod.Bank:
        """The cached bank of the cell seeded ``seed`` (built on first use)."""
        cfg = self.config
        r1_id, r2 = self.upper_reward_id(), self.lower_reward()
        description = {
            "task": self.name, "model": self.describe_model(), "steps": cfg.steps, "eta": float(cfg.eta),
            "bank_size": cfg.bank_size,
            "seed": derive_seed(seed, BANK_NOISE), "r1": r1_id, "r2": [r2.name, r2.weights_id],
        }
        conds = self.conditions()
        return bank_mod.load_or_build(description, conds, lambda: self._build_bank(seed), use_cache=cfg.bank_cache)

    def upper_reward_id(self) -> list:
        raise NotImplementedError

    def _build_bank(self, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
        cfg = self.config
        model = self.model()
        conds = self.conditions()
        n = cfg.bank_size
        r1 = np.zeros((len(conds), n))
        r2 = np.zeros((len(conds), n))
        if model.conditional:
            for k, cond in enumerate(conds):
                noise = self._noise(derive_seed(seed, BANK_NOISE), k, n, BANK_NOISE).to(model.device, model.dtype)
                run = self._sample(model, noise, [cond] * n, derive_seed(seed, BANK_NOISE, k))
                r1[k], r2[k] = self.score(run.samples, cond)
            return r1, r2, n * len(conds)
        noise = self._noise(derive_seed(seed, BANK_NOISE), 0, n, BANK_NOISE).to(model.device, model.dtype)
        run = self._sample(model, noise, None, derive_seed(seed, BANK_NOISE, 0))
        for k, cond in enumerate(conds):
            r1[k], r2[k] = self.score(run.samples, cond)
        return r1, r2, n

    def bank_cost(self, bank: bank_mod.Bank) -> float:
        guided = self.config.n_samples * len(self.conditions())
        return bank_mod.bank_cost(bank.images, guided, self.config.grad_through)

    def oracle(self, params: Mapping[str, Any], seed: int, context: OracleContext) -> OracleResult:
        """Bank-based first-order oracle at ``lam`` (method.md, "Penalty function in lambda").

        ``grad["lam"] = -dL_gamma/dlambda`` estimated on the bank (:func:`.penalty.estimate`):
        the derivative of the *upper score* (maximised) in lambda's natural scale, as the
        Task interface asks (``L_gamma`` is a penalty of the loss ``-E[r1]``).

        The metrics are honest estimates *from the bank*, not from a guided run: the upper
        score is the self-normalised estimate ``sum_i softmax(guidance r2/lambda)_i r1_i`` of
        ``E_{p*_lambda}[r1]`` and ``lower`` that of ``E_{p*_lambda}[r2]``; FID/KID/IS need
        samples and are not reported here. ``info`` adds the penalty value, the KL of
        ``p*_lambda`` to ``p_pre``, the smallest effective sample size of the weights over the
        conditions, and the bank size.
        """
        lam = float(params["lam"])
        bank = self.bank(seed)
        g = self.config.guidance
        warning = self.preflight(seed) if context.iteration == 0 else None
        if warning is not None:  # the command line shows it as one stderr line (cli.one_line_warnings)
            import warnings

            warnings.warn(warning, PremiseWarning, stacklevel=2)
        est = pen.estimate(bank.per_condition(g), lam, context.gamma)
        cost = self.config.oracle_cost + (self.bank_cost(bank) if context.iteration == 0 else 0.0)
        lower = float(np.mean([pen.tilted_mean(bank.r2[k], g * bank.r2[k], lam) for k in range(len(bank.conditions))]))
        return OracleResult(
            metrics={self.upper_metric: est.upper, "lower": lower},
            grad={"lam": -est.grad},
            cost=cost,
            info={"penalty": est.value, "kl": est.kl, "ess": est.ess, "bank_size": float(est.n),
                  "bank_cached": float(bank.from_cache),
                  **({"premise_warning": 1.0 if warning else 0.0} if context.iteration == 0 else {})},
        )

    # -- pictures --------------------------------------------------------------------------------
    def _save_final_grid(self, params: Mapping[str, Any], seed: int, samples: dict) -> Path:
        """A PNG of the first images per condition of a final-protocol run, named by the
        parameters and seed, for :meth:`write_plots`."""
        import torch
        from torchvision.utils import save_image

        rows = [imgs[:SAMPLE_GRID_PER_CONDITION] for imgs in samples.values()]
        grid = torch.cat(rows)
        name = f"{_params_key(params)}_seed{seed}_{bank_mod.cache_key(self.describe_config())[:8]}.png"
        path = final_grid_dir(self.name, self.profile) / name
        tmp = path.with_name(f".{path.name}.{time.time_ns()}.png")
        save_image((grid.float() + 1) / 2, tmp, nrow=SAMPLE_GRID_PER_CONDITION, padding=1, pad_value=0.5)
        tmp.replace(path)
        return path

    @classmethod
    def write_plots(cls, cells, trials, folder: Path) -> list[Path]:
        """``<task>_<profile>_upper_vs_lambda.png``: the grid method's upper score against lambda
        (mean over seeds) with each method's chosen lambda and final score marked; and
        ``<task>_<profile>_samples.png``: each method's final samples at its chosen
        hyperparameters (the first seed's final-protocol run). The premise picture is a
        diagnostic (:meth:`diagnostics`)."""
        from .plots import sample_grids, upper_vs_lambda

        paths = []
        folder = Path(folder)
        if cells is None or len(cells) == 0:
            return paths
        for profile, c in cells.groupby("profile"):
            t = trials[trials.profile == profile] if len(trials) else trials
            p = upper_vs_lambda(cls, c, t, folder / f"{cls.name}_{profile}_upper_vs_lambda.png")
            if p is not None:
                paths.append(p)
            p = sample_grids(cls, c, folder / f"{cls.name}_{profile}_samples.png")
            if p is not None:
                paths.append(p)
        return paths

    @classmethod
    def diagnostics(cls, cells, trials, folder: Path) -> list:
        """Issue 16's premise, per profile, for the report's diagnostics: the bank's estimate
        against the guided sampler over lambda with the bank's ESS (``<task>_<profile>_premise.png``
        and ``.csv``, :func:`.plots.premise`), and per cell of a method that chose lambda the
        bank's prediction of the upper score at the chosen lambda against the realised final
        value, with the ESS there (final metrics ``bank_upper``, ``bank_ess``). Filed under
        ``bilevel`` (the method that optimises the bank estimate); the table lists every method."""
        import pandas as pd

        from ...bench.contracts.diagnostic import Diagnostic
        from .plots import premise

        out = []
        if cells is None or len(cells) == 0:
            return out
        paths = premise(cls, cells, trials, Path(folder))
        primary = cls.upper_metric
        for profile, c in cells.groupby("profile", sort=True):
            c = c[c.status == "done"] if "status" in c else c
            if "param_lam" not in c or "final_bank_upper" not in c:
                continue
            c = c[c.param_lam.notna()]
            table = pd.DataFrame({"method": c.method, "seed": c.seed, "chosen lambda": c.param_lam.map("{:.4g}".format),
                                  "bank prediction": c.final_bank_upper.map("{:.4g}".format),
                                  f"realised {primary}": c[f"final_{primary}"].map("{:.4g}".format),
                                  "prediction - realised": (c.final_bank_upper - c[f"final_{primary}"]).map("{:.3g}".format),
                                  "bank ESS there": c.get("final_bank_ess", pd.Series(np.nan, index=c.index)).map("{:.1f}".format)})
            gap = (c.final_bank_upper - c[f"final_{primary}"])
            bil = gap[c.method == "bilevel"]
            text = (f"The bilevel method optimises the bank's estimate of `{primary}`; at its chosen lambda the "
                    f"estimate exceeds the realised value by {bil.median():.3g} (median over {len(bil)} seeds). "
                    if len(bil) else "")
            out.append(Diagnostic("bilevel", f"{cls.name} ({profile}): the bank against the sampler", paragraphs=[
                text + "A small ESS at the chosen lambda means the estimate rests on few bank samples (optimistic)."],
                tables=[("Prediction against the realised final value at each cell's chosen lambda:",
                         table.sort_values(["method", "seed"]))],
                images=[p for p in paths if p.suffix == ".png" and f"_{profile}_" in p.name]))
        return out


class PremiseWarning(UserWarning):
    """The bank predicts that the best lambda is a bound of the range (:meth:`RewardTask.preflight`)."""


def _cell_seed(final_seed: int) -> int:
    """The cell seed of a final-protocol seed (:func:`...bench.seeds.final_seeds`); a seed
    below the offset is taken as a cell seed."""
    from ...bench.contracts.seeds import FINAL_SEED_OFFSET, REPEAT_STRIDE

    if final_seed < FINAL_SEED_OFFSET:
        return int(final_seed)
    return int((final_seed - FINAL_SEED_OFFSET) % REPEAT_STRIDE)

