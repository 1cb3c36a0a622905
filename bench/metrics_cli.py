"""The ``diffhpo metrics`` command group."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .contracts.seeds import MAX_SEED

DATASETS = ("mnist5k", "mnist")  # as diffhpo.bench.toolkit.data.DATASETS; not imported: torch is slow to import


@click.group(name="metrics")
def metrics_group():
    """Image-quality metrics (FID, KID, IS through torch-fidelity; CLIP score)."""


@metrics_group.command()
@click.option("--dataset", default="mnist5k", show_default=True, type=click.Choice(DATASETS),
              help="Data set whose held-out split is used (mnist needs the files, see --data-root).")
@click.option("--backend", default="mnist-net", show_default=True, type=click.Choice(["mnist-net", "inception"]),
              help="Feature network: the shipped MNIST CNN (offline) or torch-fidelity's InceptionV3.")
@click.option("--inception-weights", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Local InceptionV3 weights (weights-inception-2015-12-05-6726825d.pth) for --backend inception; "
                   "default: $DIFFHPO_INCEPTION_WEIGHTS, torch hub's cache, or a download.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding MNIST/raw/ for --dataset mnist (default: the diffhpo cache).")
@click.option("--images-per-set", "-n", type=int, default=None,
              help="Images per compared set (default: half of the held-out split).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED),
              help="Seed of the halves, distortions and KID subsets.")
@click.option("--check", is_flag=True, help="Exit with code 1 when a check fails.")
def sanity(dataset, backend, inception_weights, data_root, images_per_set, seed, check):
    """Print FID/KID/IS of real vs real, blurred, shuffled-pixel and noise images, as JSON.

    Two disjoint halves of the held-out split serve as reference and as real images; the
    JSON also holds the IS of the whole held-out split, the feature network's held-out
    accuracy, and the checks (FID ordering with 5x gaps, held-out IS above 7).
    """
    from .contracts.errors import DiffhpoError
    from .toolkit.metrics.sanity import run_sanity

    from .toolkit.data import dataset_size, require

    half = dataset_size(dataset, "heldout") // 2
    if images_per_set is not None and not 10 <= images_per_set <= half:
        raise DiffhpoError(f"--images-per-set must lie in 10..{half} (half of {dataset}'s held-out split), "
                           f"got {images_per_set}")
    require(dataset, data_root)
    report = run_sanity(dataset, backend=backend, data_root=data_root, inception_weights=inception_weights,
                        images_per_set=images_per_set, seed=seed)
    click.echo(json.dumps(report, indent=2))
    if check and not report["checks"]["passed"]:
        click.echo("sanity checks failed", err=True)
        sys.exit(1)
