import os
import signal
import socket
import sys
from pathlib import Path

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A suite started in the background of a non-interactive shell (`bash .ci/run &`) inherits SIGINT
# ignored, and so would every run it starts (an ignored signal stays ignored across exec): the
# interrupt tests' Ctrl-C would never arrive, tests/test_interrupt.py failed and then waited for
# ever. Python's own handler puts it back; children then start with the default disposition.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# the test-support modules (toys.py: the shared toy tasks) import as top-level modules
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


# --- metrics and data tests (issue 3) -------------------------------------------------------


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """Point DIFFHPO_CACHE at a session-private folder, so tests never touch ~/.cache/diffhpo.

    Session-wide so that mnist5k's CSV is parsed once per test run; modules that need it
    say ``pytestmark = pytest.mark.usefixtures("session_cache")``.
    """
    root = tmp_path_factory.mktemp("diffhpo-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFHPO_CACHE", str(root))
        yield root


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch, session_cache):
    """An empty diffhpo cache for this test, sharing only the parsed data sets (data/)."""
    root = tmp_path / "cache"
    root.mkdir()
    (session_cache / "data").mkdir(exist_ok=True)
    os.symlink(session_cache / "data", root / "data")
    monkeypatch.setenv("DIFFHPO_CACHE", str(root))
    return root


class NetworkBlocked(OSError):
    """What a connection attempt raises under ``offline``: an OSError, as on a machine without network."""


@pytest.fixture
def offline(monkeypatch):
    """Every attempt to open a network connection fails with an OSError, as on an offline machine.

    Unlike ``no_network`` (which fails the test on any attempt), this lets code meet the
    failure it would meet offline and report it; the fixture returns the list of attempts,
    so a test can also assert that none was made.
    """
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise NetworkBlocked("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(OSError):  # the block is in force
        socket.create_connection(("example.com", 80), timeout=1)
    attempts.clear()
    return attempts
