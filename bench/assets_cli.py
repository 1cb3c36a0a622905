"""The ``diffhpo assets`` command group: build and verify the shipped networks."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .toolkit.assets import ASSETS_DIR, all_assets
from .toolkit.metrics import feature_net_asset  # noqa: F401  (registers the asset feature-net)
from .contracts.seeds import MAX_SEED


class AssetName(click.ParamType):
    """An asset name, checked against the registry when the command runs (tasks register
    their own networks, so the list is only known once they are loaded)."""

    name = "NAME"

    def convert(self, value, param, ctx):
        if value not in all_assets():
            self.fail(f"{value!r} is not an asset; valid: {', '.join(sorted(all_assets()))}", param, ctx)
        return value


@click.group(name="assets")
def assets_group():
    """Networks shipped in assets/ (seeded builders, checksums, training records)."""


@assets_group.command()
@click.argument("name", type=AssetName())
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Folder to write the weights and their .json record into (default: the shipped {ASSETS_DIR}).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED),
              help="Seed of initialisation, batches, augmentation.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="mnist-ddpm only: optimiser steps (default: those of the shipped weights, see their record).")
@click.option("--checkpoints", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="mnist-ddpm only: folder for the training state, written after every evaluation; a build "
                   "with the same settings resumes from it (an interrupted build loses little).")
def build(name, out, seed, steps, checkpoints):
    """Train asset NAME on the CPU and write NAME's weights and training record."""
    from .toolkit.assets import build_asset
    from .contracts.errors import DiffhpoError

    options = {k: v for k, v in (("steps", steps), ("checkpoint_dir", checkpoints)) if v is not None}
    if options and name != "mnist-ddpm":
        raise DiffhpoError(f"--steps and --checkpoints apply to mnist-ddpm only, not {name!r}")
    record = build_asset(name, out, seed=seed, log=lambda line: click.echo(line, err=True), **options)
    summary = {k: v for k, v in record.items() if k != "history"}
    click.echo(json.dumps(summary, indent=2))


@assets_group.command()
@click.argument("names", nargs=-1, type=AssetName())
def verify(names):
    """Check shipped assets (NAMES, default all) against the checksums in their training records."""
    from .toolkit.assets import verified_asset
    from .contracts.errors import DiffhpoError

    failed = []
    assets = all_assets()
    specs = [assets[name] for name in names or assets]
    width = max(len(spec.name) for spec in specs) + 2
    for spec in specs:
        try:
            path = verified_asset(spec.filename)
            click.echo(f"ok      {spec.name:<{width}}{path}")
        except DiffhpoError as exc:
            failed.append(spec.name)
            click.echo(f"FAILED  {spec.name:<{width}}{exc}")
    if failed:
        raise DiffhpoError(f"asset check failed: {', '.join(failed)}")
