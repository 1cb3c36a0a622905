"""CLIP score with a tiny random CLIP built from a config: no download, no network."""

from __future__ import annotations

import shutil

import pytest
import torch

from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.bench.toolkit.metrics.clip_score import ClipScorer, ClipScoreResult, compute_clip_score
from diffhpo.tasks.reward.tiny import tiny_clip


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    model, processor = tiny_clip()
    folder = tmp_path_factory.mktemp("tiny-clip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def digits():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 1, 28, 28), generator=gen, dtype=torch.uint8)


PROMPTS = ["a handwritten digit 0", "one", "the number 7", "digit 3", "a blurry 5", "nine 9"]


def test_tiny_clip_from_folder_without_network(tiny_clip_dir, digits, offline):
    scorer = ClipScorer.from_pretrained(tiny_clip_dir, device="cpu", batch_size=4)  # two batches
    result = scorer(digits, PROMPTS)

    # the definition, recomputed by hand from the same model and processor
    rgb = digits.expand(-1, 3, -1, -1)
    inputs = scorer.processor(text=PROMPTS, images=list(rgb), return_tensors="pt", padding=True)
    with torch.no_grad():
        img = scorer.model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = scorer.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    cos = torch.nn.functional.cosine_similarity(img.double(), txt.double(), dim=-1)

    assert result.n == 6
    assert result.cosine == pytest.approx(float(cos.mean()), abs=1e-5)
    assert result.clip_score == pytest.approx(float((100 * cos.clamp(min=0)).mean()), abs=1e-3)
    assert 0 <= result.clip_score <= 100 and -1 <= result.cosine <= 1
    assert torch.allclose(scorer.cosines(digits, PROMPTS), cos, atol=1e-5)
    assert offline == []


def test_one_prompt_for_all_images_and_one_shot_helper(tiny_clip_dir, digits, offline):
    result = compute_clip_score(digits, "a digit", model=tiny_clip_dir, device="cpu")
    per_pair = ClipScorer.from_pretrained(tiny_clip_dir, device="cpu")(digits, ["a digit"] * 6)
    assert result == per_pair


def test_score_clamps_negative_cosines_but_cosine_keeps_the_sign(monkeypatch):
    scorer = object.__new__(ClipScorer)
    monkeypatch.setattr(ClipScorer, "cosines", lambda self, images, texts: torch.tensor([0.5, -0.2, 0.1, -0.4]))
    result = scorer(None, None)
    assert result == ClipScoreResult(clip_score=pytest.approx(15.0), cosine=pytest.approx(0.0), n=4)


def test_text_count_must_match(tiny_clip_dir, digits):
    scorer = ClipScorer.from_pretrained(tiny_clip_dir, device="cpu")
    with pytest.raises(DiffhpoError, match="one text per image"):
        scorer(digits, PROMPTS[:2])


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(DiffhpoError, match="--clip-model .*no such folder"):
        ClipScorer.from_pretrained(tmp_path / "nope")


def test_uncached_hub_id_offline_is_a_clear_error(offline, monkeypatch):
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # skip the hub client's retry back-off
    with pytest.raises(DiffhpoError, match="could not be loaded.*--clip-model"):
        ClipScorer.from_pretrained("diffhpo-tests/no-such-clip-model")


def test_cached_hub_id_loads_without_network(tiny_clip_dir, digits, tmp_path, offline):
    # the Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/REVISION/...}
    revision = "0" * 40
    repo = tmp_path / "models--diffhpo-tests--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(tiny_clip_dir, repo / "snapshots" / revision)
    scorer = ClipScorer.from_pretrained("diffhpo-tests/tiny-clip", cache_dir=tmp_path, device="cpu")
    from_folder = ClipScorer.from_pretrained(tiny_clip_dir, device="cpu")
    assert scorer(digits, PROMPTS) == from_folder(digits, PROMPTS)
    assert offline == []  # served from the cache: not even an attempt to connect
