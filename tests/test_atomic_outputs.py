"""A full output disk never leaves half a file, never truncates a complete one, and the one
error line names the file, not the storage (issue 24, 3d). The full disk is a file-size limit
(RLIMIT_FSIZE) on the report process: its storage is only read, its outputs are written."""

import os
import resource
import signal
import subprocess
import sys

import pandas as pd
import pytest

from diffhpo.bench.toolkit import atomic
from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.bench.runner import RunSpec, run_matrix
from diffhpo.cli import main

pytestmark = pytest.mark.usefixtures("session_cache")


def _report(url, out, limit):
    def small_disk():  # every file this process writes may hold at most `limit` bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "diffhpo", "report", "--storage", url, "--out", str(out)],
                          capture_output=True, text=True, preexec_fn=small_disk, timeout=600)


def _complete(folder):
    """Every table of the folder, read back (a truncated one fails to parse or loses rows)."""
    tables = {p.name: len(pd.read_csv(p)) for p in folder.glob("*.csv") if p.stat().st_size > 1}
    for p in folder.glob("*.parquet"):
        tables[p.name] = len(pd.read_parquet(p))
    return tables


def test_a_full_output_disk_names_the_file_and_leaves_every_output_whole(tmp_path):
    url = f"journal:///{tmp_path / 'j.log'}"
    run_matrix(RunSpec(tasks=["quadratic"], methods=["random"], seeds=[0], profile="smoke", out=tmp_path / "w",
                       storage=url, progress=False), log=lambda s: None)
    full = tmp_path / "full"
    main(["report", "--storage", url, "--out", str(full)])  # the complete report
    rows = _complete(full)
    assert rows["trials.csv"] == 12 and rows["results_long.parquet"] == rows["results_long.csv"]
    old = {p.name: p.read_bytes() for p in full.iterdir() if p.is_file()}
    sizes = {name: len(data) for name, data in old.items()}

    # 1. re-reporting into the folder of the complete report: trials.csv (the first file) fails
    again = _report(url, full, sizes["trials.csv"] - 1)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1 and "Traceback" not in again.stderr, again.stderr
    assert lines[0].startswith(f"error: cannot write {str(full / 'trials.csv')!r}: File too large"), lines[0]
    assert {p.name: p.read_bytes() for p in full.iterdir() if p.is_file()} == old  # nothing cut, nothing left

    # 2. into a new folder, with room for the smaller files only: whichever file is the first
    # too large is named, and is absent; the files before it are whole
    new = tmp_path / "new"
    limit = sizes["results_long.parquet"] - 1
    fresh = _report(url, new, limit)
    lines = fresh.stderr.strip().splitlines()
    assert fresh.returncode == 2 and len(lines) == 1 and "Traceback" not in fresh.stderr, fresh.stderr
    assert lines[0].startswith(f"error: cannot write {str(new)!r}"[:-1]) and "storage" not in lines[0], lines[0]
    failed = lines[0].split("'")[1]
    assert not os.path.exists(failed) and os.path.getsize(failed.replace(str(new), str(full))) > limit
    assert all(p.stat().st_size <= limit for p in new.rglob("*") if p.is_file())
    assert not [p for p in new.rglob(".*") if p.is_file()]  # no temporary file left behind
    written = _complete(new)
    assert written and all(written[name] == rows[name] for name in written)


def test_the_writer_replaces_the_file_only_once_it_is_whole(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("old\n")

    def half_then_full(path):
        path.write_text("new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(DiffhpoError, match=rf"cannot write '{target}': No space left on device"):
        atomic.write(target, half_then_full)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]
    with pytest.raises(ZeroDivisionError):  # any other failure: the same, and the error itself
        atomic.write(target, lambda path: 1 / 0)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]
    mask = os.umask(0o022)
    try:
        atomic.write_csv(pd.DataFrame({"a": [1, 2]}), target)
    finally:
        os.umask(mask)
    assert target.read_text() == "a\n1\n2\n" and (target.stat().st_mode & 0o777) == 0o644  # as open() makes it
