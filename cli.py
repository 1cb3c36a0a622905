"""The ``diffhpo`` command (Click group)."""

import click


@click.group()
def cli():
    """diffhpo."""


# --- subcommand groups from other modules (metrics, assets, ...) ---


def main():
    cli()
