"""A test-only pause point, so an interruption test can kill a run at an exact moment.

Off unless ``DIFFHPO_TEST_PAUSE`` names a window; then the process stops at that window's
``DIFFHPO_TEST_PAUSE_NTH``-th occurrence (default 1) in a cell whose study name contains
``DIFFHPO_TEST_PAUSE_CELL`` (default: any), writes one line (window, cell, detail) to
``DIFFHPO_TEST_PAUSE_FILE`` and sleeps until a signal ends it. ``tests/test_interrupt.py``
waits for that file and then sends SIGKILL, SIGINT or SIGTERM.

Windows: ``suggest`` (inside ``study.ask``, when 0 to n-1 of a trial's n parameters are
stored: before the first suggest or between two), ``evaluate`` (asked and admitted, before
the evaluation), ``tell`` (just after ``study.tell``), ``final`` (inside
the final protocol, before a repeat) and ``report`` (while the report is written).

With ``DIFFHPO_TEST_PAUSE_ONCE=1`` only the first process to reach the window pauses (it
creates the file exclusively, and adds ``pid PID`` to its line); the others go on. That is for
tests whose worker processes share one environment (a Slurm job array), so the test can
kill one worker mid-trial while the rest finish the matrix.

The environment is read at each call (a few dictionary look-ups), so the pause costs
nothing when it is off and needs no set-up in the process under test.
"""

from __future__ import annotations

import os
import time

ENV = "DIFFHPO_TEST_PAUSE"
_seen: dict[str, int] = {}


def pause(window: str, cell: str = "", detail: str = "") -> None:
    """Stop here if the test asked for this window (see the module docstring)."""
    if os.environ.get(ENV) != window or os.environ.get(f"{ENV}_CELL", "") not in cell:
        return
    _seen[window] = _seen.get(window, 0) + 1
    if _seen[window] != int(os.environ.get(f"{ENV}_NTH", "1")):
        return
    if os.environ.get(f"{ENV}_ONCE") == "1":
        try:
            fd = os.open(os.environ[f"{ENV}_FILE"], os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:  # another process paused first
            return
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{window} {cell} {detail} pid {os.getpid()}\n")
    else:
        with open(os.environ[f"{ENV}_FILE"], "w") as fh:
            fh.write(f"{window} {cell} {detail}\n")
    while True:  # until the test's signal ends the process (SIGINT/SIGTERM raise here)
        time.sleep(0.05)
