"""Image-quality metrics: FID, KID and IS through torch-fidelity, and the CLIP score.

* :func:`compute_fidelity` - FID, KID (mean, std), IS (mean, std) of generated uint8 images
  against a data set split or a tensor, with the offline ``mnist-net`` backend (default)
  or torch-fidelity's InceptionV3 (``inception``); reference statistics are cached.
* :func:`inception_score` - IS of a set of images alone.
* :func:`prepare_reference` - fill the reference cache ahead of time.
* :class:`ClipScorer` / :func:`compute_clip_score` - CLIP score of (image, prompt) pairs.
* :func:`run_sanity` - the checks behind ``diffhpo metrics sanity``.
* :func:`to_uint8` - float model output to the uint8 images the metrics take.

The names are loaded on first use (torch-fidelity and transformers take seconds to
import; the CLI should not pay for them on ``--help``). Importing
:mod:`diffhpo.bench.toolkit.metrics.feature_net` (done by the fidelity functions) registers
torch-fidelity's feature extractor ``mnist-net``.
"""

import importlib

_EXPORTS = {
    "FEATURE_EXTRACTOR_NAME": "feature_net",
    "MnistFeatureNet": "feature_net",
    "load_feature_net": "feature_net",
    "BACKENDS": "fidelity",
    "DEFAULT_BACKEND": "fidelity",
    "DEFAULT_REFERENCE": "fidelity",
    "FidelityResult": "fidelity",
    "compute_fidelity": "fidelity",
    "inception_score": "fidelity",
    "prepare_reference": "fidelity",
    "resolve_inception_weights": "fidelity",
    "as_image_batch": "images",
    "to_uint8": "images",
    "ClipScorer": "clip_score",
    "ClipScoreResult": "clip_score",
    "DEFAULT_CLIP_MODEL": "clip_score",
    "compute_clip_score": "clip_score",
    "run_sanity": "sanity",
}


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
