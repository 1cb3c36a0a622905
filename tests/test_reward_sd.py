"""Task reward-sd on tiny random Stable Diffusion and CLIP models built from configs: loaded
from saved folders (the path real models take), no download, no network (the smoke matrix
of every method is in test_reward_matrix.py)."""

from __future__ import annotations

import numpy as np
import pytest

from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.tasks import TASKS
from diffhpo.bench.contracts.task import OracleContext
from diffhpo.tasks.reward.tiny import tiny_clip, tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("session_cache")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """``(pipeline folder, CLIP folder)`` of saved random models."""
    root = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline(1).save_pretrained(root / "pipe")
    model, processor = tiny_clip(1)
    model.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    return root / "pipe", root / "clip"


def _options(tiny_sd, **extra):
    pipe, clip = tiny_sd
    return {"model": str(pipe), "clip_model": str(clip), "size": "16", **extra}


def test_task_from_saved_folders_without_network(tiny_sd, no_network):
    t = TASKS.get("reward-sd")("smoke", **_options(tiny_sd, prompts="fox,horse", grad_through="decoder",
                                                     reward="aesthetic", aesthetic_weights="random:0"))
    assert t.conditions() == ["fox", "horse"] and not t.offline
    assert t.model().noise_shape == (4, 8, 8)
    imgs = t.generate({"lam": 0.5}, 0, 2)
    assert set(imgs) == {"fox", "horse"} and imgs["fox"].shape == (2, 3, 16, 16)
    assert imgs["fox"].min() >= -1 and imgs["fox"].max() <= 1
    out = t.evaluate({"w": 2.0}, 0)
    assert all(np.isfinite(out[k]) for k in ("clip_score", "lower", "fid", "kid", "is"))
    assert abs(t.evaluate({}, 0)["fid"]) < 1e-3  # reference = the un-guided images, same prompts and seeds
    r = t.oracle({"lam": 0.5}, 0, OracleContext(iteration=0, gamma=10.0))
    assert set(r.grad) == {"lam"} and np.isfinite(r.grad["lam"]) and r.cost > t.config.oracle_cost
    bank = t.bank(0)
    assert bank.images == 2 * t.config.bank_size  # a conditional model: a bank per prompt
    assert (bank.r1 >= 0).all()  # CLIP score 100 * max(cos, 0)


def test_prompts_file_and_bad_settings(tiny_sd, tmp_path):
    (tmp_path / "p.txt").write_text("a fox\n\nred horse\n")
    t = TASKS.get("reward-sd")("smoke", **_options(tiny_sd, prompts_file=str(tmp_path / "p.txt")))
    assert t.conditions() == ["a fox", "red horse"]
    with pytest.raises(DiffhpoError, match="prompt"):
        TASKS.get("reward-sd")("smoke", **_options(tiny_sd, prompts_file=str(tmp_path / "missing.txt")))
    with pytest.raises(DiffhpoError, match="fid_backend"):
        TASKS.get("reward-sd")("smoke", **_options(tiny_sd, fid_backend="x"))
    with pytest.raises(DiffhpoError, match="size must be a multiple"):
        TASKS.get("reward-sd")("smoke", **_options(tiny_sd, size="15")).model()
    with pytest.raises(DiffhpoError, match="no such folder"):
        TASKS.get("reward-sd")("smoke", model=str(tmp_path / "nothing")).model()


def test_uncached_hub_model_offline_is_a_clear_error(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    t = TASKS.get("reward-sd")("quick")  # the paper's model id, not in this empty cache
    assert t.config.model == "runwayml/stable-diffusion-v1-5" and t.config.steps == 25
    assert TASKS.get("reward-sd")("paper").config.steps == 50
    with pytest.raises(DiffhpoError, match="could not be loaded"):
        t.model()
