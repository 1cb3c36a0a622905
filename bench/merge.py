"""``diffhpo report --merge A B ...``: one report from the cells of several storages.

Each source is a storage URL (``sqlite:///FILE``, ``journal:///FILE``, ``postgresql://...``),
a results folder holding ``diffhpo.sqlite3``, a SQLite file, or a journal file
(``*.log``). Nothing is written into the sources: their cells are read, each labelled
with its source, and concatenated. A cell (task, profile, method, seed) found in two
sources is an error (merge results of different seeds or tasks, not copies); so is a
source that is missing, unreadable, or holds no diffhpo cell.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import storage as st
from .contracts.errors import DiffhpoError

KEYS = ["task", "profile", "method", "seed"]


def resolve(source: str) -> str:
    """The storage URL of a source (a URL is checked when it is opened)."""
    if "://" in source:
        return source
    path = Path(source)
    if path.is_dir():
        db = path / st.DEFAULT_DB
        if not db.is_file():
            raise DiffhpoError(f"merge input {source!r}: a folder without {st.DEFAULT_DB}")
        return st.default_url(path)
    if not path.is_file():
        raise DiffhpoError(f"merge input {source!r}: no such file or folder")
    if path.suffix in (".log", ".journal", ".jsonl"):
        return f"journal:///{path.resolve()}"
    with open(path, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise DiffhpoError(f"merge input {source!r}: neither a SQLite database nor a journal file (*.log)")
    return f"sqlite:///{path.resolve()}"


def collect_sources(sources: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, cells) of every cell of every source, with a ``source`` column. A source
    that is no storage of its kind (a SQLite database without Optuna's tables, a file that
    is not a journal) is refused by :func:`diffhpo.bench.storage.check_file` before it is
    opened, so nothing is written into it. Sources are named without their passwords."""
    from .report import collect

    trials, cells = [], []
    for source in sources:
        url = resolve(source)
        try:
            with st.opened(url, existing=True) as storage:
                t, c = collect(storage)
        except DiffhpoError as exc:
            raise DiffhpoError(f"merge input {st.shown(source)!r}: {exc}") from None
        except Exception as exc:  # corrupt files: sqlalchemy, sqlite3 or journal errors
            raise DiffhpoError(f"merge input {st.shown(source)!r} is unreadable: {st._first_line(exc, url)}") from None
        if c.empty:
            raise DiffhpoError(f"merge input {st.shown(source)!r} holds no diffhpo cell")
        trials.append(t.assign(source=source))
        cells.append(c.assign(source=source))
    merged = pd.concat(cells, ignore_index=True)
    dup = merged[merged.duplicated(KEYS, keep=False)]
    if len(dup):
        first = dup.iloc[0]
        where = " and ".join(repr(st.shown(s)) for s in dup[(dup[KEYS] == first[KEYS]).all(axis=1)].source)
        raise DiffhpoError(f"cell {st.study_name(first.task, first.method, first.profile, first.seed)} is in both "
                           f"{where}: merge storages of different cells (e.g. other seeds), not copies")
    trials = pd.concat([t for t in trials if not t.empty], ignore_index=True) if any(len(t) for t in trials) else trials[0]
    return trials, merged.sort_values(KEYS).reset_index(drop=True)


def journal_warning(label: str, url: str) -> str:
    """One line when the journal file of ``url`` ends in a partial record: it was cut while
    being written (a copy of a running journal, a full disk). Optuna's reader skips such a last
    line without a word, so the report would look like the complete journal. Empty otherwise
    (and for every other storage)."""
    if not url.startswith("journal:///"):
        return ""
    path = Path(url[len("journal://"):])
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(size - 1, 0))
            last = fh.read(1)
    except OSError:
        return ""
    if size and last != b"\n":
        return (f"journal {label!r} is truncated: its last record is incomplete (cut while being written?), "
                "so operations after it are missing and this report may be older than the run")
    return ""


def journal_warnings(sources: list[str]) -> list[str]:
    """:func:`journal_warning` of each source (folders, files or URLs, as ``--merge`` takes them)."""
    out = []
    for s in sources:
        try:
            url = resolve(s)
        except DiffhpoError:
            continue
        w = journal_warning(s, url)
        if w:
            out.append(w)
    return out
