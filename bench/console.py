"""What the command line shows of Python's warnings and the libraries' logs; shared by
``cli.py`` and the workers that :mod:`.launch` starts (which must not import the CLI)."""

from __future__ import annotations

import logging
import sys
import warnings


def quiet_libraries() -> None:
    """Optuna at WARNING, its ExperimentalWarning and FutureWarnings ignored, BoTorch's log at
    ERROR: what every command (and every launched worker) shows of the libraries."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("botorch").setLevel(logging.ERROR)


def one_line_warnings() -> None:
    """Show every Python warning as one stderr line, ``warning: Category: message`` (newlines
    of the message joined), instead of Python's file, line number and source line: the
    command line's own warnings (e.g. ``PremiseWarning``) are meant for the user, not a
    traceback. Python's filters still decide which warnings are shown, and how often."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        try:
            (file or sys.stderr).write(f"warning: {category.__name__}: {text}\n")
        except OSError:  # stderr gone: nothing to show it on
            pass

    warnings.showwarning = show
