"""The verdict lines (``bench/analysis/verdict.py``) on synthetic storages with a known answer:
``good`` dominates ``bad`` on every seed, ``twin`` is ``good`` plus differences of both signs
(indistinguishable), and a task with 3 seeds is too small to test."""

from diffhpo.bench import storage as st
from diffhpo.bench.comparison import compare
from diffhpo.bench.report import collect, write_report

from diffhpo.tests.test_report_analysis import BAD, GOOD, add_cell

TWIN = [-0.003, 0.002, -0.002, 0.003, 0.001, -0.001, 0.004, -0.004]  # signs cancel: no significant difference


def storage(url, seeds, task="synth"):
    s = st.open_storage(url)
    for seed in seeds:
        add_cell(s, "good", seed, GOOD, 0.1 + 0.01 * seed, task=task)
        add_cell(s, "twin", seed, GOOD, 0.1 + 0.01 * seed + TWIN[seed], task=task)
        add_cell(s, "bad", seed, BAD, 0.6 + 0.02 * seed, task=task)
    return s


def test_verdict_names_the_dominating_method_the_indistinguishable_one_and_the_seeds(tmp_path):
    trials, cells = collect(storage(f"sqlite:///{tmp_path}/s.db", range(8)))
    (line,) = compare(trials, cells).verdict
    assert line.startswith("synth (smoke, 8 seeds): best good (median final loss 0.135, lower is better)"), line
    assert "significantly better than bad" in line and "cannot be told apart from twin" in line
    assert "too few" not in line and "worse" not in line and "whatever the data" not in line  # 8 seeds can reject


def test_verdict_says_when_the_seeds_cannot_reach_significance_whatever_the_data(tmp_path):
    trials, cells = collect(storage(f"sqlite:///{tmp_path}/s.db", range(6)))
    (line,) = compare(trials, cells).verdict
    # 6 seeds: exact signed-rank p >= 2/2^6; Holm over 3 pairs: >= 0.094 even for good against bad
    assert "cannot be told apart from bad, twin" in line and "significantly" not in line, line
    assert line.endswith("(whatever the data, 6 seeds cannot reach Holm p < 0.05 over 3 pairs: the smallest possible "
                         "is 0.094; it takes 7 seeds).")


def test_verdict_says_too_few_seeds_with_the_number_the_test_needs(tmp_path):
    trials, cells = collect(storage(f"sqlite:///{tmp_path}/s.db", range(3)))
    (line,) = compare(trials, cells).verdict
    assert line.startswith("synth (smoke, 3 seeds): best good"), line
    assert ("too few seeds to test against every other method (at most 3 seed(s) with a non-zero difference; "
            "the test needs 6)") in line
    assert "significantly" not in line and "told apart" not in line


def test_verdict_across_tasks_and_first_in_comparison_md(tmp_path):
    s = storage(f"sqlite:///{tmp_path}/s.db", range(8))
    for seed in range(8):
        for m, v in [("good", 0.2), ("twin", 0.2 + TWIN[seed]), ("bad", 0.9)]:
            add_cell(s, m, seed, GOOD, v + 0.01 * seed, task="other")
    written = write_report(s, tmp_path / "out", plots=False, html=False)
    text = written["comparison_md"].read_text()
    head = text.split("## All tasks")[0]
    lines = [x[2:] for x in head.splitlines() if x.startswith("- ")]
    assert len(lines) == 3 and lines[0].startswith("All tasks (smoke, 16 (task, seed) blocks): best good"), lines
    assert "significantly better than bad" in lines[0] and "cannot be told apart from twin" in lines[0]
    assert [x.split(" ")[0] for x in lines[1:]] == ["other", "synth"]
