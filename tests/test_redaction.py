"""Storage passwords are never printed nor written (issue 24, 3b): every URL goes through one
helper, :func:`diffhpo.bench.provenance.redact_url`, which reads the URL with SQLAlchemy's own
parser. No database server is needed: the forms are parsed and printed, and the run and the
reports meet a PostgreSQL URL whose storage is, underneath, a SQLite file."""

import optuna
import pytest
from sqlalchemy.engine import make_url

from diffhpo.bench import storage as st
from diffhpo.bench.provenance import redact, redact_url
from diffhpo.cli import main

pytestmark = pytest.mark.usefixtures("session_cache")

SECRET = "S3cretPW"

# (url, redacted): every form SQLAlchemy accepts, and the file URLs, which have no password
FORMS = [
    ("postgresql://alice:S3cretPW@127.0.0.1:5432/dh", "postgresql://alice:***@127.0.0.1:5432/dh"),
    ("postgresql://:S3cretPW@host:5432/dh", "postgresql://:***@host:5432/dh"),  # empty user name
    ("postgresql://bob:Sec/S3cretPW@host:5432/dh", "postgresql://bob:***@host:5432/dh"),  # '/' in the password
    ("postgresql://bob:S3cretPW@host/dh", "postgresql://bob:***@host/dh"),  # no port
    ("postgresql+psycopg://bob:S3cretPW@host:5432/dh", "postgresql+psycopg://bob:***@host:5432/dh"),  # a driver
    ("postgresql://bob:S3cretPW@[::1]:5432/dh?sslmode=require", "postgresql://bob:***@[::1]:5432/dh?sslmode=require"),
    ("postgresql://bob:S3cret%40PW@host/dh", "postgresql://bob:***@host/dh"),  # '@' written %40
    ("postgresql://bob:S3c ret?#PW@host/dh", "postgresql://bob:***@host/dh"),  # space, '?', '#'
    ("postgresql://bob:S3cret:PW@host/dh", "postgresql://bob:***@host/dh"),  # ':' in the password
    ("postgresql://bob:@host/dh", "postgresql://bob:***@host/dh"),  # an empty password
    ("mysql://alice:S3cretPW@127.0.0.1:3306/dh", "mysql://alice:***@127.0.0.1:3306/dh"),
    ("mysql+pymysql://alice:S3cretPW@db/dh?charset=utf8mb4", "mysql+pymysql://alice:***@db/dh?charset=utf8mb4"),
    # without a password: unchanged, character for character
    ("postgresql://bob@host:5432/dh", "postgresql://bob@host:5432/dh"),
    ("postgresql://host/dh", "postgresql://host/dh"),
    ("mysql://db/dh", "mysql://db/dh"),
    ("sqlite:////data/a@b:c.db", "sqlite:////data/a@b:c.db"),
    ("sqlite:///relative/x.sqlite3", "sqlite:///relative/x.sqlite3"),
    ("journal:////data/runs/j.log", "journal:////data/runs/j.log"),
    ("journal:///data/a b@c:d.log", "journal:///data/a b@c:d.log"),
    ("results/diffhpo.sqlite3", "results/diffhpo.sqlite3"),  # a path, not a URL
    # SQLAlchemy cannot parse it: everything up to the last '@' that may be a password is hidden
    ("postgresql://me:p@ss:S3cretPW@db:5432/x", "postgresql://me:***@db:5432/x"),
    ("nosuch://alice:S3cretPW@h/x", "nosuch://alice:***@h/x"),
]


@pytest.mark.parametrize("url, redacted", FORMS, ids=[u for u, _ in FORMS])
def test_every_url_form_is_redacted_as_sqlalchemy_reads_it(url, redacted):
    assert redact_url(url) == redacted
    assert SECRET not in redact_url(url) and "S3c" not in redact_url(url)
    assert redact_url(redacted) == redacted  # redacting twice changes nothing
    try:
        parsed = make_url(url)
    except Exception:
        return
    if parsed.password is not None:  # the same URL, but for the password
        assert make_url(redacted).set(password=parsed.password) == parsed


def test_command_lines_are_redacted_word_by_word():
    assert redact("run --storage postgresql://me:p@ss:w0rd@db:5432/x") == "run --storage postgresql://me:***@db:5432/x"
    assert redact("diffhpo run --storage 'postgresql://u:S3c ret@h/d' --out x") == \
        "diffhpo run --storage 'postgresql://u:***@h/d' --out x"
    assert redact("diffhpo run --storage=postgresql://:S3cretPW@h/d") == "diffhpo run --storage=postgresql://:***@h/d"
    assert redact("diffhpo report --merge a postgresql://bob:Sec/S3cretPW@h/d b") == \
        "diffhpo report --merge a postgresql://bob:***@h/d b"
    assert redact("sqlite:////data/a@b.db") == "sqlite:////data/a@b.db"


URLS = ["postgresql://alice:S3cretPW@127.0.0.1:5432/dh", "postgresql://:S3cretPW@127.0.0.1:5432/dh",
        "postgresql://bob:Sec/S3cretPW@127.0.0.1:5432/dh"]


@pytest.mark.parametrize("url", URLS, ids=["user", "empty-user", "slash"])
def test_no_password_in_the_log_the_tables_the_export_nor_the_page(url, tmp_path, monkeypatch, capsys):
    """run (its first line, its report) and report --merge on a server URL, the server being a
    SQLite file underneath: the password is in no line and no file."""
    db = f"sqlite:///{tmp_path / 'server.db'}"
    real_open = st.open_storage
    monkeypatch.setattr(st, "open_storage", lambda u, heartbeat=None: real_open(db if u == url else u))
    monkeypatch.setattr(st, "open_existing", lambda u, heartbeat=None: real_open(db if u == url else u))
    out, merged = tmp_path / "out", tmp_path / "merged"
    main(["run", "-t", "quadratic", "-m", "random", "-p", "smoke", "--seeds", "1", "--storage", url,
          "--out", str(out), "--no-progress"])
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("diffhpo run: 1 cell(s)") and first.endswith(f"storage {redact_url(url)}"), first
    main(["report", "--merge", url, "--out", str(merged), "--no-plots"])
    err = capsys.readouterr().err
    assert SECRET not in err
    with pytest.raises(SystemExit):
        main(["worker", "--storage", url, "--study", "nope"])
    err = capsys.readouterr().err
    assert err.startswith(f"error: no study 'nope' in {redact_url(url)!r}") and SECRET not in err, err
    written = [p for p in (*out.rglob("*"), *merged.rglob("*")) if p.is_file()]
    assert {"cells.csv", "trials.csv", "results_long.csv", "report.html"} <= {p.name for p in written}
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    assert redact_url(url).encode() in (merged / "cells.csv").read_bytes()  # the source, named without it
    assert optuna.get_all_study_names(db) == ["quadratic.random.smoke.seed0"]


@pytest.mark.postgres
def test_no_password_from_a_live_server_run(tmp_path):
    """The same on a real server: the test server's URL given a password (a server that
    trusts loopback connections never asks for it)."""
    import os
    import subprocess
    import sys

    admin = os.environ.get("DIFFHPO_TEST_POSTGRES_URL")
    if not admin:
        pytest.skip("no PostgreSQL server: set DIFFHPO_TEST_POSTGRES_URL (.ci/postgres.sh starts one)")
    url = make_url(admin).set(password=SECRET).render_as_string(hide_password=False)
    ran = subprocess.run([sys.executable, "-m", "diffhpo", "run", "-t", "quadratic", "-m", "random", "-p", "smoke",
                          "--seeds", "1", "--seed-start", "7", "--storage", url, "--out", str(tmp_path), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    assert f"storage {redact_url(url)}" in ran.stderr and SECRET not in ran.stderr + ran.stdout
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert SECRET.encode() not in path.read_bytes(), path
