"""The final protocol repeated on independent lower-level seeds: means, spreads, seeds, and
an interrupted final protocol that resumes without recomputing a finished repeat."""


import optuna
import pytest

from diffhpo.bench import storage as st
from diffhpo.bench.runner import RunSpec, run_matrix
from diffhpo.bench.contracts.seeds import FINAL_SEED_OFFSET, REPEAT_STRIDE
from toys import ToyTask, registered, smoke


class _Noisy(ToyTask):
    """loss = x^2 + (seed mod 7): a final value that depends on the lower-level seed."""

    name = "noisy"
    profiles = smoke(3, final_repeats=3)
    grid = (0.0,)
    final_calls: list = []
    stop_at = None

    def loss(self, params, seed, final):
        if final:
            type(self).final_calls.append(seed)
            if len(type(self).final_calls) == type(self).stop_at:
                raise KeyboardInterrupt
        return params["x"] ** 2 + seed % 7


@pytest.fixture
def noisy():
    with registered(_Noisy, final_calls=[], stop_at=None) as cls:
        yield cls


def test_repeats_report_mean_and_spread_and_resume(noisy, tmp_path):
    spec = RunSpec(tasks=["noisy"], methods=["random"], seeds=[4], profile="smoke", out=tmp_path, progress=False)
    noisy.stop_at = 3  # interrupted during the third repeat
    with pytest.raises(KeyboardInterrupt):
        run_matrix(spec, log=lambda s: None)
    noisy.stop_at = None
    run_matrix(spec, log=lambda s: None)
    seeds = [FINAL_SEED_OFFSET + 4 + r * REPEAT_STRIDE for r in range(3)]
    assert noisy.final_calls == seeds + [seeds[2]]  # the two finished repeats were not recomputed
    study = optuna.load_study(study_name="noisy.random.smoke.seed4", storage=st.default_url(tmp_path))
    a = study.user_attrs
    x2 = a["final_params"]["x"] ** 2
    values = [x2 + s % 7 for s in seeds]
    assert a["final_seeds"] == seeds and a["final_seed"] == seeds[0]
    assert a["final_metrics"]["loss"] == pytest.approx(sum(values) / 3)
    mean = sum(values) / 3
    assert a["final_metrics_std"]["loss"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 2) ** 0.5)
    assert len(set(values)) > 1  # the repeats really differ


def test_one_repeat_is_the_plain_final_protocol(tmp_path):
    run_matrix(RunSpec(tasks=["quadratic"], methods=["random"], seeds=[0], profile="smoke", out=tmp_path,
                       progress=False), log=lambda s: None)
    a = optuna.load_study(study_name="quadratic.random.smoke.seed0", storage=st.default_url(tmp_path)).user_attrs
    assert a["final_seeds"] == [FINAL_SEED_OFFSET] and "final_metrics_std" not in a
