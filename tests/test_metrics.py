"""FID / KID / IS through torch-fidelity: backends, reference cache, errors, sanity command."""

from __future__ import annotations

import json

import pytest
import torch
import torch_fidelity
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from diffhpo.bench.toolkit import data
from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.bench.toolkit.metrics import compute_fidelity, inception_score, to_uint8
from diffhpo.bench.toolkit.metrics.sanity import blur

pytestmark = pytest.mark.usefixtures("session_cache")


@pytest.fixture(scope="module")
def heldout(session_cache):
    return data.load_mnist("mnist5k", "heldout")


def test_identical_inputs_give_fid_about_zero(heldout):
    images = heldout[0][:300]
    result = compute_fidelity(images, images)
    assert abs(result.fid) < 1e-3
    blurred = compute_fidelity(blur(images), images)
    assert blurred.fid > 1.0
    # KID's unbiased estimator is not exactly 0 for identical sets, but tiny next to a real difference
    assert abs(result.kid_mean) < 0.1 * blurred.kid_mean
    assert result.n_generated == result.n_reference == 300
    assert result.reference_cache == "off"  # a tensor reference without a cache name is not cached


def test_metrics_rank_blur_and_noise(heldout):
    images = heldout[0]
    ref, real = images[:300], images[300:600]
    noise = torch.randint(0, 256, real.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    r_real, r_blur, r_noise = (compute_fidelity(x, ref) for x in (real, blur(real), noise))
    assert r_real.fid < r_blur.fid < r_noise.fid
    assert r_real.kid_mean < r_blur.kid_mean < r_noise.kid_mean
    assert r_real.is_mean > 7 > r_noise.is_mean


def test_reference_cache_miss_then_hit_without_loading_images(heldout, fresh_cache, monkeypatch):
    generated = heldout[0][:200]
    first = compute_fidelity(generated, "mnist5k:heldout")
    assert first.reference_cache == "miss" and first.n_reference == 1000
    folders = list((fresh_cache / "fidelity" / "mnist5k-heldout").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("mnist-net-")
    assert list(folders[0].glob("*.pt"))

    def must_not_load(*args, **kwargs):
        raise AssertionError("reference images loaded despite a cache hit")

    monkeypatch.setattr(data, "load_mnist", must_not_load)
    second = compute_fidelity(generated, "mnist5k:heldout")
    assert second.reference_cache == "hit"
    assert second.scores() == first.scores()


def test_reference_cache_is_per_split(heldout, fresh_cache):
    generated = heldout[0][:100]
    assert compute_fidelity(generated, "mnist5k:heldout").reference_cache == "miss"
    assert compute_fidelity(generated, "mnist5k:train").reference_cache == "miss"
    assert compute_fidelity(generated, "mnist5k:train").reference_cache == "hit"


def test_small_sets_and_unequal_sizes(heldout):
    images = heldout[0]
    result = compute_fidelity(images[:20], images[100:1000])  # KID subsets shrink to 20 images
    assert all(torch.isfinite(torch.tensor(v)) for v in result.scores().values())
    assert result.kid_std > 0  # subsets of the larger set differ


def test_seed_fixes_kid_subsets(heldout):
    images = heldout[0]
    a = compute_fidelity(images[:50], images[500:], seed=1)
    b = compute_fidelity(images[:50], images[500:], seed=1)
    c = compute_fidelity(images[:50], images[500:], seed=2)
    assert a.scores() == b.scores() and a.kid_mean != c.kid_mean


def test_bad_inputs_are_user_errors(heldout):
    images = heldout[0][:10]
    with pytest.raises(DiffhpoError, match="to_uint8"):
        compute_fidelity(images.float() / 255, images)
    with pytest.raises(DiffhpoError, match="at least 2"):
        compute_fidelity(images[:1], images)
    with pytest.raises(DiffhpoError, match="DATASET:SPLIT"):
        compute_fidelity(images, "mnist5k")
    with pytest.raises(DiffhpoError, match="unknown metrics backend"):
        compute_fidelity(images, images, backend="vgg")


def test_to_uint8_maps_the_value_range():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(torch.tensor([0.0, 0.5, 1.0]), (0, 1)).tolist() == [0, 128, 255]


def test_inception_score_of_real_digits(heldout):
    mean, std = inception_score(heldout[0])
    assert 7 < mean <= 10 and std >= 0


def test_mnist_net_is_registered_and_takes_rgb_and_other_sizes():
    cls = FEATURE_EXTRACTORS_REGISTRY["mnist-net"]
    extractor = cls("mnist-net", ["penultimate", "logits"])
    grey = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    features, logits = extractor(grey)
    assert features.shape == (3, 128) and logits.shape == (3, 10)
    rgb_big = torch.nn.functional.interpolate(grey.float(), size=(32, 32)).round().to(torch.uint8).expand(-1, 3, -1, -1)
    features_rgb, _ = extractor(rgb_big)
    assert features_rgb.shape == (3, 128)


def test_one_preprocessing_for_uint8_and_differentiable_float_images():
    """preprocess (uint8, the metrics) is normalise (float, the bilevel and guidance code) of
    x / 255; resizing to 28 x 28 is plain bilinear when enlarging and antialiased when shrinking."""
    from diffhpo.bench.toolkit.metrics.feature_net import normalise, preprocess, to_input_size

    F = torch.nn.functional
    grey = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(preprocess(grey), normalise(grey.float() / 255.0))
    small, big = torch.rand(2, 1, 16, 16, requires_grad=True), torch.rand(2, 3, 56, 56)
    assert torch.equal(to_input_size(small), F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False))
    assert torch.equal(to_input_size(big), F.interpolate(big, size=(28, 28), mode="bilinear", align_corners=False,
                                                         antialias=True))
    assert normalise(big).shape == (2, 1, 28, 28)
    normalise(small).sum().backward()
    assert small.grad is not None and small.grad.abs().sum() > 0


# --- inception backend ------------------------------------------------------------------------


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("DIFFHPO_INCEPTION_WEIGHTS", raising=False)


def test_inception_without_weights_offline_names_the_option(heldout, empty_torch_home, offline):
    with pytest.raises(DiffhpoError) as err:
        compute_fidelity(heldout[0][:10], heldout[0][10:20], backend="inception")
    assert "--inception-weights" in str(err.value) and "offline" in str(err.value)


def test_inception_weights_path_must_exist(heldout, tmp_path):
    with pytest.raises(DiffhpoError, match="--inception-weights .*no such file"):
        compute_fidelity(heldout[0][:10], heldout[0][:10], backend="inception",
                         inception_weights=tmp_path / "missing.pth")


def _random_inception_weights(path):
    """InceptionV3 weights of the right shapes, randomly initialised (no download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):
            return None

    empty = path.with_name("empty.pth")
    torch.save({}, empty)
    torch.manual_seed(0)
    torch.save(Unloaded("x", ["2048"], feature_extractor_weights_path=str(empty)).state_dict(), path)
    return path


def test_inception_backend_with_local_weights_runs_offline(heldout, tmp_path, empty_torch_home, offline):
    weights = _random_inception_weights(tmp_path / "inception.pth")
    images = heldout[0][:4]  # InceptionV3 at 299 x 299 is slow on a CPU: four grey images, made RGB
    result = compute_fidelity(images, images, backend="inception", inception_weights=weights)
    assert result.backend == "inception" and result.n_generated == 4
    assert abs(result.fid) < 1e-3 and result.is_mean >= 1
    assert offline == []


# --- sanity command -------------------------------------------------------------------------------


def test_sanity_report_passes_its_checks():
    from diffhpo.bench.toolkit.metrics.sanity import run_sanity

    report = run_sanity("mnist5k")
    json.dumps(report)  # JSON-ready
    fid = {name: c["fid"] for name, c in report["comparisons"].items()}
    assert fid["real_vs_real"] * 5 <= fid["real_vs_blurred"] and fid["real_vs_blurred"] * 5 <= fid["real_vs_noise"]
    assert report["heldout_inception_score"]["is_mean"] > 7
    assert report["feature_net_heldout_accuracy"] >= 0.97
    assert report["checks"]["passed"] is True
    assert report["images_per_set"] == 500


def test_cli_sanity_prints_json(capsys):
    from diffhpo.cli import main

    main(["metrics", "sanity", "--images-per-set", "100", "--seed", "1"])
    report = json.loads(capsys.readouterr().out)
    assert report["images_per_set"] == 100 and report["seed"] == 1
    assert set(report["comparisons"]) == {"real_vs_real", "real_vs_blurred", "real_vs_shuffled_pixels", "real_vs_noise"}


def test_cli_inception_offline_is_one_line_exit_2(capsys, empty_torch_home, offline):
    from diffhpo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["metrics", "sanity", "--backend", "inception", "-n", "10"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--inception-weights" in err and len(err.splitlines()) == 1


def test_torch_fidelity_keys_are_the_ones_read():
    assert {torch_fidelity.KEY_METRIC_FID, torch_fidelity.KEY_METRIC_KID_MEAN, torch_fidelity.KEY_METRIC_ISC_MEAN}
