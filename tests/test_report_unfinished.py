"""Issue 24 item 3g: reports of unfinished storages say so. Unfinished cells are named in
summary.md and on the page (not only in summary.csv's n_done); a truncated journal given to
``report --merge`` is flagged; a report into a folder holding an older one removes that report's
files it does not rewrite (curves.csv, plots of tasks no longer in the storage) and says so."""

import optuna
from optuna.trial import TrialState, create_trial

from diffhpo.bench import storage as st
from diffhpo.bench.report import write_report
from diffhpo.cli import main
from diffhpo.tests.test_report_analysis import DIST, GOOD, add_cell, synth_storage


def _run(args):
    try:
        main(args)
    except SystemExit as exc:
        return exc.code
    return 0


def _unfinish(storage, method, seed, running=False):
    study = optuna.load_study(study_name=st.study_name("synth", method, "smoke", seed), storage=storage)
    study.set_user_attr("status", "searching")
    study.set_user_attr("final_metrics", {})
    if running:
        study.add_trial(create_trial(state=TrialState.RUNNING, params={"x": 1.0}, distributions=DIST))


def test_unfinished_cells_are_named_in_summary_md_and_on_the_page(tmp_path):
    s = synth_storage(f"sqlite:///{tmp_path}/s.db", range(3))
    _unfinish(s, "good", 1, running=True)
    _unfinish(s, "good", 2)
    written = write_report(s, tmp_path / "out", plots=False)
    md = written["summary_md"].read_text()
    assert "2 of 9 cells are not finished" in md
    assert "synth.good.smoke.seed1: searching (4 trials done, 1 running)" in md
    assert "synth.good.smoke.seed2: searching (4 trials done)" in md
    assert "| good     | 3 (1 done) |" in md or "3 (1 done)" in md.split("| good")[1].split("\n")[0]
    page = written["html"].read_text()
    head = page.split("<nav>")[0]  # the warning is above the table of contents, with the verdict
    assert 'class="warn"' in head and "2 of 9 cells are not finished" in head and "synth.good.smoke.seed1" in head


def test_a_finished_storage_has_no_warning(tmp_path):
    written = write_report(synth_storage(f"sqlite:///{tmp_path}/s.db", range(3)), tmp_path / "out", plots=False)
    assert "not finished" not in written["summary_md"].read_text() and 'class="warn"' not in written["html"].read_text()


def test_a_truncated_journal_given_to_merge_is_flagged(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    synth_storage(st.default_url(tmp_path / "a"), range(2))
    log = tmp_path / "b.log"
    synth_storage(f"journal:///{log}", range(2, 4))
    whole = tmp_path / "whole.log"
    whole.write_bytes(log.read_bytes())
    with open(log, "ab") as fh:  # a record cut while being written
        fh.write(b'{"op_code":5,"worker_id":"x","study_id":0,"datetime_sta')
    assert _run(["report", "--out", str(tmp_path / "m"), "--no-plots", "--merge", str(tmp_path / "a"), str(log)]) == 0
    err = capsys.readouterr().err
    assert f"warning: journal {str(log)!r} is truncated" in err
    assert "is truncated" in (tmp_path / "m" / "summary.md").read_text()
    assert "is truncated" in (tmp_path / "m" / "report.html").read_text().split("<nav>")[0]
    assert _run(["report", "--out", str(tmp_path / "w"), "--no-plots", "--merge", str(tmp_path / "a"), str(whole)]) == 0
    assert "is truncated" not in capsys.readouterr().err and "is truncated" not in (tmp_path / "w" / "summary.md").read_text()
    assert _run(["report", "--out", str(tmp_path / "j"), "--no-plots", "--storage", f"journal:///{log}"]) == 0
    assert "is truncated" in capsys.readouterr().err


def test_a_report_into_an_older_reports_folder_removes_its_stale_files_and_says_so(tmp_path):
    old = synth_storage(f"sqlite:///{tmp_path}/old.db", range(2), tasks=("synth", "other"))
    curve = create_trial(state=TrialState.PRUNED, params={"x": 2.0}, distributions=DIST,
                         intermediate_values={500: 0.3}, user_attrs={"cost": 0.5})
    add_cell(old, "extra", 0, GOOD, 0.2, task="other", extra_trials=[curve])
    out = tmp_path / "out"
    write_report(old, out)
    assert (out / "curves.csv").exists() and list((out / "plots").glob("other_*.png"))
    (out / "notes.txt").write_text("mine")  # not a report file: left alone
    written = write_report(synth_storage(f"sqlite:///{tmp_path}/new.db", range(2)), out)
    assert not (out / "curves.csv").exists() and not list((out / "plots").glob("other_*.png"))
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
        p.name for k, p in written.items() if p.parent.name == "plots")
    md = written["summary_md"].read_text()
    assert "This folder held an older report" in md and "curves.csv" in md
    assert "This folder held an older report" in written["html"].read_text().split("<nav>")[0]
