"""A method from an external package, registered through the ``diffhpo.methods`` group."""

import os
import subprocess
import sys
import textwrap

import pandas as pd

PLUGIN = '''
import optuna
from diffhpo.methods.base import Method, best_params


def make_sampler(ctx):
    return optuna.samplers.QMCSampler(qmc_type="sobol", seed=ctx.seed)


METHOD = Method("quasi-random search (Sobol), from an external package", make_sampler, choose=best_params)
'''


def make_plugin(root):
    """An installed distribution on sys.path: a module plus its dist-info with entry points."""
    (root / "diffhpo_sobol_plugin.py").write_text(PLUGIN)
    info = root / "diffhpo_sobol_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: diffhpo-sobol-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""
        [diffhpo.methods]
        sobol = diffhpo_sobol_plugin:METHOD
        """)
    )


def test_external_method_is_listed_and_runs(tmp_path):
    make_plugin(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    listed = subprocess.run([sys.executable, "-m", "diffhpo", "list"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "sobol" in listed.stdout and "from an external package" in listed.stdout
    out = tmp_path / "out"
    ran = subprocess.run(
        [sys.executable, "-m", "diffhpo", "run", "--task", "quadratic", "--method", "sobol,random", "--seeds", "1",
         "--profile", "smoke", "--out", str(out), "--no-progress"],
        env=env, capture_output=True, text=True,
    )
    assert ran.returncode == 0, ran.stderr
    cells = pd.read_csv(out / "cells.csv")
    sobol = cells[cells.method == "sobol"]
    assert len(sobol) == 1 and sobol.status.iloc[0] == "done" and sobol.n_trials.iloc[0] == 12


def test_in_process_registration(tmp_path, monkeypatch):
    from diffhpo.methods import METHODS

    make_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        METHODS.load_entry_points(force=True)
        assert "sobol" in METHODS.names()
        assert METHODS.get("sobol").description.startswith("quasi-random")
    finally:
        METHODS.unregister("sobol")
