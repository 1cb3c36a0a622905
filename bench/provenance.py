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


def redact(text: str) -> str:
    """Hide passwords of URLs (``postgresql://user:secret@host`` -> ``user:***@host``)."""
    return re.sub(r"(\w[\w+.-]*://[^/\s:@]+):[^\s/]*@", r"\1:***@", text)


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``diffhpo ...`` when run through the console script or
    ``python -m diffhpo``."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name in ("diffhpo", "__main__.py")):
        argv[0] = "diffhpo"
    return redact(shlex.join(argv))


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
