"""The recorded tables' format (floor 2): what ``diffhpo record`` (:mod:`diffhpo.bench.record`)
writes and the surrogate tasks read. The format is stated in :mod:`diffhpo.bench.record`'s
docstring; this module holds the pieces both sides need (file names, metadata, checksum,
reading and checking a table), so that a task never imports the recording machinery.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from optuna.distributions import BaseDistribution, distribution_to_json

from ..contracts.errors import DiffhpoError
from . import atomic
from .cache import config_key

FORMAT = 1
REPLICATE_SEED = 100_000  # replicate seeds: far from the design's seeds 0..configs-1 and the final protocol's
TABLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "recordings"
MAX_FILE_BYTES = 8 * 2**20  # the repository's limit per file


def space_json(space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    return {n: json.loads(distribution_to_json(d)) for n, d in space.items()}


def checkpoints_of(task: Any) -> list[float]:
    if not getattr(task, "has_fidelity", False):
        return []
    return [float(f) for f in getattr(task.config, "checkpoints", ())]


def task_version(task: Any) -> str:
    """The key of the task's configuration (:func:`diffhpo.bench.toolkit.cache.config_key`): a table
    recorded under other settings, or by a task whose settings changed, has another."""
    return config_key(task.describe_config())


def recording_name(task: Any, variant: str) -> str:
    """``record.<task>.<profile>.<variant>.<config key[:8]>``: the study of a recording."""
    return f"record.{task.name}.{task.profile}.{variant}.{task_version(task)[:8]}"


def table_stem(task: Any, variant: str) -> str:
    """File stem of a table: ``<task>.<profile>.<variant>``, plus the options given
    (``objective-bold``) so that two recordings of one task do not share a file."""
    extra = "".join(f".{k}-{getattr(task.config, k)}" for k in sorted(task.given_options))
    return f"{task.name}.{task.profile}.{variant}{extra}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_table(path: Path, frame: pd.DataFrame, meta: dict) -> str:
    """Write the table atomically (temporary file, then rename) with its ``.sha256``; returns the digest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# " + json.dumps(meta, sort_keys=True) + "\n" + frame.to_csv(index=False, float_format="%.10g")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(text.encode())
    data = buf.getvalue()
    if len(data) > MAX_FILE_BYTES:
        raise DiffhpoError(f"table {str(path)!r} would be {len(data) / 2**20:.1f} MiB, over the repository's "
                           f"{MAX_FILE_BYTES / 2**20:.0f} MiB per file; record fewer configurations")
    atomic.write(path, lambda tmp: Path(tmp).write_bytes(data))
    digest = hashlib.sha256(data).hexdigest()
    atomic.write_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
    return digest


def table_meta(path: Path | str) -> dict | None:
    """A table's metadata line alone (no checksum check, no rows read), or None where the file is
    missing or unreadable: cheap enough for deciding at import time whether a table is complete."""
    try:
        with gzip.open(path, "rt") as f:
            first = f.readline()
        return json.loads(first[2:]) if first.startswith("# ") else None
    except (OSError, EOFError, ValueError):
        return None


@dataclass
class Table:
    path: Path
    meta: dict
    frame: pd.DataFrame
    sha256: str


def load_table(path: Path | str, *, verify: bool = True) -> Table:
    """Read a table and check it against its ``.sha256``; one :class:`DiffhpoError` line for a
    missing, corrupt or checksum-mismatched file."""
    path = Path(path)
    if not path.is_file():
        raise DiffhpoError(f"recorded table {str(path)!r} does not exist; rebuild it with `diffhpo record` "
                           "(README, \"Recorded benchmarks and surrogates\")")
    side = path.with_name(path.name + ".sha256")
    digest = sha256_file(path)
    if verify:
        if not side.is_file():
            raise DiffhpoError(f"recorded table {str(path)!r} has no checksum file {side.name!r}; rebuild it with "
                               "`diffhpo record`")
        want = side.read_text().split()[:1]
        if want != [digest]:
            raise DiffhpoError(f"recorded table {str(path)!r} does not match its checksum ({side.name}: "
                               f"{(want or ['empty'])[0][:12]}..., file: {digest[:12]}...); it is corrupt or was "
                               "edited, rebuild it with `diffhpo record`")
    try:
        with gzip.open(path, "rt") as f:
            first = f.readline()
            if not first.startswith("# "):
                raise ValueError("no metadata line")
            meta = json.loads(first[2:])
            frame = pd.read_csv(f, keep_default_na=True)
    except (OSError, EOFError, ValueError, json.JSONDecodeError, pd.errors.ParserError) as exc:
        raise DiffhpoError(f"recorded table {str(path)!r} is corrupt ({type(exc).__name__}: "
                           f"{str(exc).strip()[:120]}); rebuild it with `diffhpo record`") from None
    if meta.get("format") != FORMAT or "space" not in meta or "metrics" not in meta:
        raise DiffhpoError(f"recorded table {str(path)!r} is not a diffhpo table of format {FORMAT}")
    if "error" in frame:
        frame["error"] = frame["error"].astype(object).where(frame["error"].notna(), "")
    return Table(path, meta, frame, digest)


def check_table_for(table: Table, *, task: str, profile: str, version: str, variant: str,
                    space: Mapping[str, BaseDistribution]) -> None:
    """Refuse a table recorded for another task, profile, task version or space."""
    m, where = table.meta, f"recorded table {str(table.path)!r}"
    for what, have, want in (("task", m.get("task"), task), ("profile", m.get("profile"), profile),
                             ("space variant", m.get("space_variant"), variant),
                             ("task version (configuration key)", m.get("task_version"), version)):
        if have != want:
            raise DiffhpoError(f"{where} was recorded for {what} {have!r}, not {want!r}; rebuild it with "
                               f"`diffhpo record` for this {what.split(' (')[0]}")
    if m.get("space") != space_json(space):
        raise DiffhpoError(f"{where} was recorded for another search space ({', '.join(m.get('space', {}))}) "
                           f"than the task's ({', '.join(space)}); rebuild it with `diffhpo record`")
    if not m.get("complete", False):
        raise DiffhpoError(f"{where} is incomplete ({m.get('rows')} of {m['plan']['evaluations']} evaluations); "
                           "finish the recording first (rerun the same `diffhpo record` command)")


def default_table_path(task: Any, variant: str) -> Path:
    return TABLES_DIR / f"{table_stem(task, variant)}.csv.gz"
