"""Issue 16's premise diagnostic: the pre-flight warning (bank optimum at a bound), the
bank's prediction at the final lambda, and the premise plot and table of the report."""

import warnings

import numpy as np
import pandas as pd
import pytest

from diffhpo.bench.contracts.task import OracleContext
from diffhpo.tasks.gmm import GmmRewardTask
from diffhpo.tasks.reward.bank import Bank
from diffhpo.tasks.reward.common import PremiseWarning, _cell_seed

pytestmark = pytest.mark.usefixtures("session_cache")


def _bank(r1, r2):
    return Bank(("c",), np.asarray(r1, float)[None], np.asarray(r2, float)[None], len(r1), "k", False)


def _stub(task, r1, r2):
    task.bank = lambda seed: _bank(r1, r2)
    return task


def test_preflight_fires_when_r1_and_r2_agree_on_the_bank():
    """The hacking case of reward-mnist (r1, r2 two classifiers that agree on pre-trained
    samples): the bank estimate rises as lambda falls, its optimum is the lower bound, and the
    first oracle call warns (once, at iteration 0). A conflicting r1 (interior optimum of
    E[r1] in the tilt) gives no warning."""
    rng = np.random.default_rng(0)
    r2 = rng.normal(size=2000)
    agree = _stub(GmmRewardTask("smoke"), r2 + 0.1 * rng.normal(size=2000), r2)
    assert agree.preflight(0) is not None and "lower end" in agree.preflight(0)
    with pytest.warns(PremiseWarning):
        res = agree.oracle({"lam": 1.0}, 0, OracleContext(iteration=0, gamma=1.0))
    assert res.info["premise_warning"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", PremiseWarning)
        agree.oracle({"lam": 1.0}, 0, OracleContext(iteration=1, gamma=1.0))
    conflict = _stub(GmmRewardTask("smoke"), -(r2 - 1.0) ** 2, r2)  # E[r1] is best where the tilt centres r2 on 1
    assert conflict.preflight(0) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", PremiseWarning)
        assert conflict.oracle({"lam": 1.0}, 0, OracleContext(iteration=0, gamma=1.0)).info["premise_warning"] == 0.0


def test_gmm_reward_bank_has_an_interior_optimum_and_no_warning():
    task = GmmRewardTask("smoke", sampler="exact", bank_cache=False)
    assert task.preflight(0) is None


def test_cell_seed_of_final_seeds():
    from diffhpo.bench.contracts.seeds import final_seeds

    for s in (0, 3, 41):
        assert [_cell_seed(f) for f in final_seeds(s, 3)] == [s] * 3
    assert _cell_seed(5) == 5


def test_final_protocol_records_the_bank_prediction_and_the_report_writes_the_premise_plot(tmp_path):
    from diffhpo.bench.contracts.seeds import final_seeds

    task = GmmRewardTask("smoke", sampler="exact", bank_cache=False)
    lam = 0.3
    m = task.evaluate({"lam": lam}, final_seeds(0)[0], final=True)
    curve = task.bank_curve(0, [lam])
    assert m["bank_upper"] == pytest.approx(curve["bank_upper"][0])
    assert 1 <= m["bank_ess"] <= task.config.bank_size
    assert {"bank_upper", "bank_ess"} <= {x.name for x in task.metrics}
    assert "bank_upper" not in task.evaluate({"lam": lam}, 0)  # search-time runs do not build banks
    cells = pd.DataFrame([{"task": task.name, "profile": "smoke", "method": "bilevel", "seed": 0, "status": "done",
                           "param_lam": lam, "final_upper": m["upper"], "final_bank_upper": m["bank_upper"]}])
    trials = pd.DataFrame([{"task": task.name, "profile": "smoke", "method": "grid", "seed": 0, "state": "COMPLETE",
                            "param_lam": v, "value": -float(v)} for v in (0.01, 0.1, 1.0, 10.0, 100.0)])
    from diffhpo.tasks.reward.plots import premise

    paths = premise(type(task), cells, trials, tmp_path)
    csv, png = tmp_path / "gmm-reward_smoke_premise.csv", tmp_path / "gmm-reward_smoke_premise.png"
    assert csv in paths and png in paths and png.stat().st_size > 0
    table = pd.read_csv(csv)
    assert list(table.columns) == ["lam", "bank_upper", "bank_ess", "sampler_upper"]
    assert table.bank_upper.notna().sum() >= 41 and table.sampler_upper.notna().sum() == 5
    row = table[np.isclose(table.lam, 1.0)].iloc[0]
    assert row.sampler_upper == -1.0 and np.isfinite(row.bank_upper)


def test_bank_prediction_for_every_mode():
    task = GmmRewardTask("smoke", sampler="exact", bank_cache=False)
    bank = task.bank(0)
    none = task.premise_metrics({}, 0)
    assert none["bank_upper"] == pytest.approx(bank.r1.mean()) and none["bank_ess"] == bank.r1.shape[1]
    ws = task.premise_metrics({"w": 2.0}, 0)
    from diffhpo.tasks.reward import penalty as pen

    s = task.config.guidance * (bank.r2[0] + 2.0 * bank.r1[0])
    assert ws["bank_upper"] == pytest.approx(pen.tilted_mean(bank.r1[0], s, task.config.ws_lambda))


def test_real_reward_mnist_bank_warns_on_the_hacking_variant_and_not_on_the_bold_one():
    """The pre-flight check on real banks of the shipped MNIST DDPM (smoke profile: digits 3
    and 8, 4 DDIM steps). Default objective (r1, r2 two classifiers that agree on pre-trained
    digits): the bank estimate of E[r1] is largest at lambda = 0.01 and the first oracle call
    warns. ``objective=bold`` (proxy and gold disagree on real digits) with a bank of 64
    images: the maximum is interior (lambda 1.6 on seed 0, measured), no warning. With the
    smoke profile's 16 images the bold bank's maximum is at the lower end too (its ESS there
    is 1: one image carries the tilt), so the interior optimum needs a bank of some size
    (issue 16's note saw the same at 128 images on the quick profile)."""
    from diffhpo.tasks.reward.mnist_task import RewardMnistTask

    hack = RewardMnistTask("smoke")
    curve = hack.bank_curve(0)
    assert int(np.argmax(curve["bank_upper"])) == 0
    with pytest.warns(PremiseWarning, match="lower end"):
        res = hack.oracle({"lam": 1.0}, 0, OracleContext(iteration=0, gamma=1.0))
    assert res.info["premise_warning"] == 1.0
    bold = RewardMnistTask("smoke", objective="bold", bank_size=64)
    curve = bold.bank_curve(0)
    best = curve["lam"][int(np.argmax(curve["bank_upper"]))]
    assert 0.1 <= best <= 10  # a decade inside either end
    with warnings.catch_warnings():
        warnings.simplefilter("error", PremiseWarning)
        res = bold.oracle({"lam": 1.0}, 0, OracleContext(iteration=0, gamma=1.0))
    assert res.info["premise_warning"] == 0.0
    assert RewardMnistTask("smoke", objective="bold").preflight(0) is not None  # 16 images: lower end


def test_the_premise_plot_uses_the_bank_curve_of_the_cells_configuration(tmp_path):
    """The bank curves of every configuration run on the machine share one cache folder; the
    report of a storage draws the curve of its own cells' configuration (cells.csv's
    ``config_key``), even when another configuration wrote its curve later."""
    from diffhpo.bench.toolkit.cache import config_key
    from diffhpo.bench.contracts.seeds import final_seeds
    from diffhpo.tasks.reward.plots import premise

    mine = GmmRewardTask("smoke", sampler="exact", bank_cache=False)
    other = GmmRewardTask("smoke", sampler="exact", bank_cache=False, lam_high=10.0)
    mine.evaluate({"lam": 0.3}, final_seeds(0)[0], final=True)
    other.evaluate({"lam": 0.3}, final_seeds(0)[0], final=True)  # the newer file
    cells = pd.DataFrame([{"task": mine.name, "profile": "smoke", "method": "grid", "seed": 0, "status": "done",
                           "param_lam": 0.3, "config_key": config_key(mine.describe_config())}])
    trials = pd.DataFrame(columns=["task", "profile", "method", "seed", "state", "param_lam", "value"])
    premise(type(mine), cells, trials, tmp_path)
    table = pd.read_csv(tmp_path / "gmm-reward_smoke_premise.csv")
    assert table.lam.max() == pytest.approx(mine.config.lam_high) != other.config.lam_high


PREMISE_SCRIPT = """
import numpy as np
from diffhpo.cli import main
from diffhpo.bench.contracts.task import OracleContext
from diffhpo.tasks.gmm import GmmRewardTask
from diffhpo.tasks.reward.bank import Bank

main(["list"])  # the command line's setup, in this process
rng = np.random.default_rng(0)
r2 = rng.normal(size=2000)
r1 = r2 + 0.1 * rng.normal(size=2000)
task = GmmRewardTask("smoke")
task.bank = lambda seed: Bank(("c",), r1[None], r2[None], 2000, "k", False)
task.oracle({"lam": 1.0}, 0, OracleContext(iteration=0, gamma=1.0))
"""


def test_the_premise_warning_is_one_stderr_line():
    """Issue 24, 3h: it used to print three lines (Python's warning with file and line, the
    source line, then the message again)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", PREMISE_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("warning: PremiseWarning: diffhpo: task 'gmm-reward', seed 0: the bank estimate")
