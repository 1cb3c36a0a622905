"""User-facing errors."""


class DiffhpoError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (SIGINT): the running trial is marked interrupted."""

    signal_name = "SIGTERM"
