"""What produced a report: the command, package versions, platform and git commit."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ["diffhpo", "optuna", "torch", "torchvision", "torch-fidelity", "diffusers", "transformers", "botorch",
            "numpy", "scipy", "pandas", "scikit-posthocs", "statsmodels", "matplotlib", "pyarrow"]
ROOT = Path(__file__).resolve().parents[1]


_URL_START = re.compile(r"[A-Za-z][\w+.-]*://")


def redact_url(url: str) -> str:
    """``url`` as it may be printed or stored: its password replaced by ``***``.

    The one redaction of the project: every storage URL that is printed (log and ``error:``
    lines) or written (tables, the export, report.html) goes through it. It parses the URL
    with SQLAlchemy's own URL object, the parser that opens it, so every form SQLAlchemy
    accepts is redacted as SQLAlchemy reads it (an empty user name, ``/``, ``@`` written
    ``%40``, ``?`` or ``#`` in the password, IPv6 hosts, query strings):
    ``make_url(url).render_as_string(hide_password=True)``. Choices:

    * a URL without a password (SQLite and journal files, ``postgresql://user@host/db``) is
      returned unchanged, character for character (rendering it would rewrite its path,
      e.g. ``@`` as ``%40``); text without ``://`` (a folder or file) too;
    * a URL SQLAlchemy cannot parse (so it cannot be opened either) keeps its scheme, user
      name and host, and everything between the user name and the last ``@`` becomes
      ``***``: the password cannot be told apart there, so the most that might be one is
      hidden (``postgresql://me:p@ss:w0rd@db/x`` -> ``postgresql://me:***@db/x``).
    """
    match = _URL_START.search(url)
    if match is None:
        return url
    head, url = url[:match.start()], url[match.start():]  # ``--storage=URL`` keeps its prefix
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # ArgumentError, or ValueError for a port that is not a number
        scheme, _, rest = url.partition("://")
        userinfo, at, host = rest.rpartition("@")
        if not at:
            return head + url
        return f"{head}{scheme}://{userinfo.partition(':')[0]}:***@{host}"
    if parsed.password is None:
        return head + url
    return head + parsed.render_as_string(hide_password=True)


def redact(command: str) -> str:
    """A command line (``shlex`` quoting) with the password of every URL in it hidden by
    :func:`redact_url`, one shell word at a time (a quoted password may hold spaces)."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: not a command line; treat it as one word
        return redact_url(command)
    urls = [w for w in words if "://" in w]
    if not all(w in command for w in urls):  # quoting split a URL: quote the words anew
        return shlex.join(redact_url(w) for w in words)
    for word in urls:  # in place, so that the rest of the text stays as it was typed
        command = command.replace(word, redact_url(word))
    return command


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``diffhpo ...`` when run through the console script or
    ``python -m diffhpo``."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name in ("diffhpo", "__main__.py")):
        argv[0] = "diffhpo"
    return shlex.join(redact_url(a) for a in argv)


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(root: Path = ROOT) -> str:
    """HEAD of the checkout the package runs from, with ``+dirty`` for uncommitted
    changes; ``unknown`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(command: str | None = None) -> dict[str, str]:
    """Flat description of this environment (one value per key)."""
    return {
        "command": redact(command or command_line()),
        "written_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "host": platform.node(),
        "cpus": str(os.cpu_count()),
        **{f"version_{k}": v for k, v in versions().items()},
    }
