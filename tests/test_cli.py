"""The command line: bad input gives one clear line and exit code 2; list; run; report."""

import subprocess
import sys

import pytest

from diffhpo.cli import main


def call(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def call_ok(args, capsys):
    try:
        main(args)
    except SystemExit as exc:  # click may exit 0 explicitly
        assert exc.code in (0, None), capsys.readouterr().err
    return capsys.readouterr()


# Bad input: the table of tests/test_bad_input.py.


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = call(["run", "--task", "quadratic", "--out", str(blocker / "sub")], capsys)
    assert code == 2 and "is not writable" in err and "Traceback" not in err


def test_unreachable_storage(capsys, tmp_path):
    url = "postgresql://nobody:nothing@127.0.0.1:9/none"
    code, _, err = call(["run", "--task", "quadratic", "--out", str(tmp_path), "--storage", url], capsys)
    shown = "postgresql://nobody:***@127.0.0.1:9/none"  # the password hidden
    assert code == 2 and f"cannot open storage {shown!r}" in err and "Traceback" not in err and "nothing" not in err


def test_report_without_results(capsys, tmp_path):
    code, _, err = call(["report", "--out", str(tmp_path)], capsys)
    assert code == 2 and "run `diffhpo run` first" in err


def test_list_names_every_task_method_and_profile(capsys):
    out = call_ok(["list"], capsys).out
    for name in ["quadratic", "grid", "random", "tpe", "botorch", "bilevel", "smoke", "quick", "paper"]:
        assert f"  {name} " in out


def test_run_all_methods_smoke_writes_tables_and_plots(capsys, tmp_path):
    res = call_ok(["run", "--task", "quadratic", "--method", "all", "--profile", "smoke",
                   "--seeds", "2", "--out", str(tmp_path), "--no-progress"], capsys)
    for f in ["summary.csv", "summary.md", "cells.csv", "trials.csv"]:
        assert (tmp_path / f).exists()
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == [  # 2 seeds: no CD diagram
        f"quadratic_smoke_{k}.png" for k in ("convergence", "cost", "pairs", "regret", "trials")]
    assert "| bilevel" in res.out and "| botorch" in res.out  # the rank table
    assert res.out.startswith("Verdict:\n- quadratic (smoke, 2 seeds): best ") and "too few seeds to test" in res.out
    assert "p_holm" not in res.out and "A wins / ties / losses" not in res.out  # the pairs stay in the files
    again = call_ok(["run", "--task", "quadratic", "--method", "all", "--profile", "smoke",
                     "--seeds", "2", "--out", str(tmp_path), "--no-progress"], capsys)
    cells = res.err.count(": done (")
    assert cells >= 10 and again.err.count("done (skipped)") == cells  # >= 5 stock methods x 2 seeds


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "diffhpo", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "--storage" in out.stdout and "resume" in out.stdout
