"""``diffhpo metrics sanity``: do FID, KID and IS rank known distortions of real images correctly?

The held-out split is cut (seeded) into two disjoint halves A and B. Half A is the
reference; four candidate sets are derived from half B and compared with it:

* ``real_vs_real``: B itself: only sampling noise separates it from A;
* ``real_vs_blurred``: B blurred with a Gaussian (sigma 1 px, 5 x 5 kernel);
* ``real_vs_shuffled_pixels``: every image of B with its pixels permuted at random (the
  intensity histogram kept, the strokes destroyed);
* ``real_vs_noise``: uniform noise 0..255 of the same shape.

A healthy metric stack gives FID(real) << FID(blurred) << FID(noise); the checks ask for
a factor of at least :data:`MIN_GAP` at each step, and an Inception Score of the whole
held-out split (ten balanced digits for mnist5k) above :data:`MIN_HELDOUT_IS`. The
feature network's held-out accuracy is reported alongside.
"""

from __future__ import annotations

import time

import torch
from torchvision.transforms.v2.functional import gaussian_blur

from ..data import load_mnist
from . import feature_net
from .fidelity import DEFAULT_BACKEND, compute_fidelity, inception_score

MIN_GAP = 5.0
MIN_HELDOUT_IS = 7.0
BLUR_SIGMA = 1.0
BLUR_KERNEL = 5


def blur(images: torch.Tensor, sigma: float = BLUR_SIGMA, kernel: int = BLUR_KERNEL) -> torch.Tensor:
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def shuffle_pixels(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Permute the pixels of each image independently."""
    flat = images.reshape(len(images), -1)
    order = torch.argsort(torch.rand(flat.shape, generator=generator), dim=1)
    return torch.gather(flat, 1, order).reshape(images.shape)


def uniform_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, like.shape, generator=generator, dtype=torch.uint8)


def run_sanity(
    dataset: str = "mnist5k",
    *,
    backend: str = DEFAULT_BACKEND,
    data_root=None,
    inception_weights=None,
    images_per_set: int | None = None,
    seed: int = 0,
) -> dict:
    """The sanity report as a JSON-ready dict (see the module docstring)."""
    started = time.perf_counter()
    images, labels = load_mnist(dataset, "heldout", data_root)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)
    half = len(images) // 2
    n = min(images_per_set or half, half)
    ref, real = images[order[:n]], images[order[half : half + n]]
    candidates = {
        "real_vs_real": real,
        "real_vs_blurred": blur(real),
        "real_vs_shuffled_pixels": shuffle_pixels(real, gen),
        "real_vs_noise": uniform_noise(real, gen),
    }
    common = dict(backend=backend, inception_weights=inception_weights, seed=seed)
    comparisons = {}
    for name, candidate in candidates.items():
        result = compute_fidelity(candidate, ref, reference_cache_name=f"sanity-{dataset}-heldout-A{n}-seed{seed}",
                                  **common)
        comparisons[name] = result.scores()
    is_mean, is_std = inception_score(images, **common)
    accuracy = feature_net.accuracy(feature_net.load_feature_net(), images, labels)

    fid = {name: c["fid"] for name, c in comparisons.items()}
    blur_gap = fid["real_vs_blurred"] / fid["real_vs_real"] if fid["real_vs_real"] > 0 else float("inf")
    noise_gap = fid["real_vs_noise"] / fid["real_vs_blurred"] if fid["real_vs_blurred"] > 0 else float("inf")
    checks = {
        "fid_blurred_over_real": round(blur_gap, 2),
        "fid_noise_over_blurred": round(noise_gap, 2),
        "fid_order_with_5x_gaps": bool(blur_gap >= MIN_GAP and noise_gap >= MIN_GAP),
        "heldout_is_above_7": bool(is_mean > MIN_HELDOUT_IS),
    }
    checks["passed"] = checks["fid_order_with_5x_gaps"] and checks["heldout_is_above_7"]
    return {
        "dataset": dataset,
        "split": "heldout",
        "backend": backend,
        "images_per_set": n,
        "seed": seed,
        "feature_net_heldout_accuracy": accuracy,
        "heldout_inception_score": {"is_mean": is_mean, "is_std": is_std, "n": len(images)},
        "comparisons": comparisons,
        "checks": checks,
        "seconds": round(time.perf_counter() - started, 2),
    }
