"""Seeds shared by the runner and the tasks.

A cell's search uses its seed ``s``; the final protocol re-evaluates the chosen
hyperparameters with ``FINAL_SEED_OFFSET + s``, the same for every method, and its r-th
repeat (a task's ``final_repeats`` > 1: independent lower-level seeds) with
``FINAL_SEED_OFFSET + s + r * REPEAT_STRIDE``. Seeds feed numpy's and torch's generators,
which take 32-bit values here, so every seed of a run, final-protocol seeds included, must
lie in ``[0, 2**31 - 1]``: cell seeds in ``[0, MAX_SEED]``.
"""

from __future__ import annotations

from typing import Sequence

from .errors import DiffhpoError

FINAL_SEED_OFFSET = 1000
REPEAT_STRIDE = 1_000_000
MAX_REPEATS = 20
MAX_SEED = 2**31 - 1 - FINAL_SEED_OFFSET - (MAX_REPEATS - 1) * REPEAT_STRIDE


def final_seeds(seed: int, repeats: int = 1) -> list[int]:
    """The final protocol's seeds of cell seed ``seed``: one per repeat."""
    return [FINAL_SEED_OFFSET + seed + r * REPEAT_STRIDE for r in range(repeats)]


def check_seeds(seeds: Sequence[int]) -> None:
    if not seeds:
        raise DiffhpoError("no seeds to run: --seeds must be at least 1")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise DiffhpoError(f"seed {bad[0]} is out of range: seeds must lie in 0..{MAX_SEED} "
                           f"(--seed-start S and --seeds N run S..S+N-1)")
