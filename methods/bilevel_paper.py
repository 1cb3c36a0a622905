"""``--method-option bilevel.preset=paper``: the reference code's schedule-tuning update rule
and iteration structure inside diffhpo's budget accounting.

Sources: method.md, "What the reference code actually does" (schedule tuning), and the
reference code itself (github.com/afmsaif/bilevel_diffusion, read 2026-11-30 for these
facts only: ``noise_schedule/train_mnist_bilevel_ZO.py`` and the command of its
``noise_schedule/README.md``, ``--inner_loop 10 --inner_loop_z 1 --gamma 1 --gamma_end 1
--lr_beta 0.05 0.05 1 0.05 --initial_epoch 2 --epochs 3``).

What the preset sets, number by number (sampler side, here; oracle side in
:data:`diffhpo.tasks.single_loop.PAPER_LOOP`):

* **Step rule AdamW** (``optimizer="adamw"``): the reference steps q with
  ``torch.optim.AdamW`` (betas 0.9/0.999, eps 1e-8, **weight decay 0.01**: torch's
  defaults, the reference sets none of them). Weight decay shrinks ``q`` towards 0 by
  ``lr * 0.01 * q`` per step, on the parameters with a natural-unit learning rate only.
* **Per-parameter learning rates 0.05, 0.05, 1, 0.05 for q_s, q_e, q_tau, q_eps in natural
  units** (method.md; the README's ``--lr_beta``; the argparse default is 0.01, 0.01, 0.1,
  0.001, which the README's command overrides). The task declares them
  (``reference_learning_rates``, :class:`diffhpo.tasks.schedule_space.ScheduleSpace`). The
  sampler steps in normalised coordinates ``u = (q - lo) / (hi - lo)``; AdamW's moments
  and step are computed in natural units (``dF/dq = dF/du * du/dq``, step ``dq`` mapped
  back by ``du = dq * du/dq``), so a step is the reference's step. For a log-scale
  parameter ``du/dq = 1 / (q (log hi - log lo))`` is taken at the current iterate (no
  schedule parameter is log-scale). Parameters without a natural rate (other tasks)
  take Adam steps of ``lr`` in normalised coordinates, without weight decay.
* **One-cycle policy** (``lr_schedule="one-cycle"``): ``OneCycleLR(max_lr=lr_beta,
  pct_start=0.25, anneal_strategy="cos")``, torch's other defaults (div_factor 25,
  final_div_factor 1e4, b1 cycled between 0.95 and 0.85), replayed from the iteration
  count (:func:`.step_rules.one_cycle`). The reference's cycle spans its q-updates,
  ``(epochs - initial_epoch) * len(loader)`` = 469 (one MNIST epoch at batch 128). Ours
  spans the outer iterations the cell's budget allows (:func:`cycle_length`): after
  iteration 0 the sampler knows its cost ``c0`` and the cost of every later iteration
  ``c1`` (the oracle's ``next_iteration_cost``; else ``c0``), and the runner starts trials while
  the spent cost is below the budget ``B``, so the cell makes ``N = 1 + ceil((B - c0)/c1)``
  outer iterations and ``N`` steps (the output iterate includes the last one's). Without a
  budget (the sampler outside the runner) and without ``cycle_length``, the reference's
  469 is the assumption.
* **gamma held at 1** (``gamma0=1``, ``gamma_growth=1``): ``--gamma 1 --gamma_end 1``.
* **Projection**: onto the search box. The reference clamps ``q_s >= 0, q_e <= 1,
  q_tau >= 1`` (and q_eps to [0, 1]), the faces of our box that the default cosine touches.

Explicit settings win: ``--method-option bilevel.preset=paper --method-option
bilevel.gamma0=10`` runs the preset with gamma0 10 (and ``--option bl_inner_steps=30``
the oracle with 30 inner steps).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from optuna.trial import FrozenTrial

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"optimizer": "adamw", "gamma0": 1.0, "gamma_growth": 1.0, "lr_schedule": "one-cycle",
              "weight_decay": 0.01},
}
#: Settings a preset may change, with the sampler's own defaults.
PRESET_DEFAULTS: dict[str, Any] = {"optimizer": "rprop", "gamma0": 10.0, "gamma_growth": 1.5,
                                   "lr_schedule": "constant", "weight_decay": 0.01}
REFERENCE_Q_UPDATES = 469  # (3 - 2) epochs x ceil(60000 / 128) minibatches


def resolved(preset: str, name: str, given: Any) -> Any:
    """A setting: the value given explicitly, else the preset's, else the default."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}")
    if given is not None:
        return given
    return PRESETS[preset].get(name, PRESET_DEFAULTS[name])


def cycle_length(trials: Sequence[FrozenTrial], budget: float | None, fixed: int = 0) -> int | None:
    """Steps of the one-cycle policy: ``fixed`` if positive; else from the budget and the
    first iteration's costs (module doc); else :data:`REFERENCE_Q_UPDATES`. None while the
    budget is known but iteration 0 has not completed (no step is taken then)."""
    if fixed > 0:
        return int(fixed)
    if budget is None:
        return REFERENCE_Q_UPDATES
    if not trials:
        return None
    attrs = trials[0].user_attrs
    c0 = float(attrs.get("cost", 1.0))
    c1 = float(attrs.get("next_iteration_cost", c0))
    if c0 >= budget or c1 <= 0:
        return 1
    return 1 + math.ceil((budget - c0) / c1 - 1e-9)
