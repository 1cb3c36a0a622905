"""Pictures of ``mnist-schedule`` results (issue item 7).

:func:`write_task_plots` draws, from the report's ``cells`` table (one row per cell with
``param_<name>`` = the method's chosen hyperparameters):

* ``<task>_<profile>_alphabar.png``: ``alphabar_t`` of every method's chosen schedule on
  one figure (linear scale, and the log-SNR ``log(alphabar / (1 - alphabar))`` beside it,
  where schedules that look alike near 0 or 1 differ), the family's default dashed;
* ``<task>_<profile>_samples_<method>_seed<k>.png``: an 8 x 8 grid of the first 64 images
  of that cell's final-protocol evaluation (saved by :meth:`MnistScheduleTask.evaluate`
  with ``final=True`` under the diffhpo cache, keyed by task settings, parameters and
  seed; a cell whose samples are not in this machine's cache gets no grid).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from ...bench.toolkit import atomic
from . import schedules as S

if TYPE_CHECKING:
    import pandas as pd

def _config_of(row, saved: dict | None) -> dict:
    """Task settings of a cell: the ``config`` column when the table has one, else those
    saved with its final samples, else the profile's defaults."""
    import json

    raw = row.get("config") if hasattr(row, "get") else None
    if isinstance(raw, str) and raw.strip().startswith("{"):
        return json.loads(raw)
    if isinstance(raw, dict):
        return raw
    if saved is not None:
        return saved.get("config", {})
    return {}


def _family(task_cls: type, config: dict, profile: str) -> str:
    default = task_cls.profiles.get(profile)
    return str(config.get("schedule", default.schedule if default is not None else "cosine"))


def write_task_plots(cells: "pd.DataFrame", folder: Path, task_cls: type,
                     find_final_samples: Callable[[str, Mapping[str, Any], int], dict | None]) -> list[Path]:
    """Write, per profile, the alphabar figure and the sample grids; return the files written.

    ``task_cls`` (its ``name`` and ``profiles``) and ``find_final_samples`` (a final-protocol
    evaluation's saved record) come from the task's hook, so that this module does not import the
    task module that imports it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torchvision

    from ...bench.contracts.seeds import FINAL_SEED_OFFSET  # final-protocol seed = FINAL_SEED_OFFSET + cell seed

    cols = [f"param_{n}" for n in S.PARAM_NAMES]
    if cells is None or cells.empty or not all(c in cells for c in cols):
        return []
    rows = cells[cells[cols].notna().all(axis=1)]
    if "task" in rows:
        rows = rows[rows.task == task_cls.name]
    folder = Path(folder)
    written: list[Path] = []
    for profile, group in rows.groupby("profile", sort=True):
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{task_cls.name}_{profile}"
        records = {}
        for i, row in group.iterrows():
            params = {n: float(row[f"param_{n}"]) for n in S.PARAM_NAMES}
            records[i] = find_final_samples(str(profile), params, FINAL_SEED_OFFSET + int(row.seed))

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        t = torch.arange(1, S.T_DEFAULT + 1).numpy()
        families = sorted({_family(task_cls, _config_of(row, records[i]), str(profile)) for i, row in group.iterrows()})
        for family in families:
            default = S.schedule(family, S.DEFAULTS[family]).alphabar
            ax1.plot(t, default.numpy(), "k--", lw=1, label=f"default {family}: "
                     + ", ".join(f"{v:.3g}" for v in S.DEFAULTS[family]))
            ax2.plot(t, S.log_snr(default).numpy(), "k--", lw=1)
        for i, row in group.sort_values(["method", "seed"]).iterrows():
            family = _family(task_cls, _config_of(row, records[i]), str(profile))
            q = [float(row[f"param_{n}"]) for n in S.PARAM_NAMES]
            ab = S.schedule(family, q).alphabar
            label = f"{row.method} (seed {int(row.seed)}): " + ", ".join(f"{v:.3g}" for v in q)
            ax1.plot(t, ab.numpy(), lw=1.4, label=label)
            ax2.plot(t, S.log_snr(ab).numpy(), lw=1.4)
        ax1.set(xlabel="t", ylabel=r"$\bar\alpha_t$", title=r"chosen schedules: $\bar\alpha_t$")
        ax2.set(xlabel="t", ylabel=r"log SNR = log($\bar\alpha_t$ / (1 - $\bar\alpha_t$))", title="log-SNR")
        ax1.legend(fontsize=7, title="q_s, q_e, q_tau, q_eps", title_fontsize=7)
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = folder / f"{stem}_alphabar.png"
        atomic.save_figure(fig, path, dpi=120)
        written.append(path)

        for i, row in group.iterrows():
            record = records[i]
            if record is None:
                continue
            images = record["images"][:64]
            grid = torchvision.utils.make_grid(images.float() / 255.0, nrow=8, padding=2, pad_value=0.5)
            path = folder / f"{stem}_samples_{row.method}_seed{int(row.seed)}.png"
            atomic.write(path, lambda p, grid=grid: torchvision.utils.save_image(grid, p))
            written.append(path)
    return written
