"""FID, KID and IS of generated images against a reference set, computed by torch-fidelity.

Two feature backends (``backend=``):

``mnist-net`` (default, offline)
    The project's MNIST CNN (:mod:`.feature_net`), registered in torch-fidelity as
    feature extractor ``mnist-net``: 128-d penultimate features for FID and KID, logits
    for IS. Its FID/KID/IS values are *not* comparable with published Inception numbers.
``inception``
    torch-fidelity's standard ``inception-v3-compat`` (2048-d pool features, logits). Its
    weights come from ``inception_weights`` (CLI ``--inception-weights``, or the
    environment variable ``DIFFHPO_INCEPTION_WEIGHTS``), else from torch hub's cache,
    else are downloaded; offline without them a :class:`DiffhpoError` names the option.
    Grey images are repeated to three channels.

The reference is a data set split, ``"mnist5k:heldout"`` (or ``mnist5k:train``,
``mnist:train``, ``mnist:heldout``), or a uint8 tensor. For a split, torch-fidelity's
file cache keeps the reference features and FID statistics under
``<cache>/fidelity/<dataset>-<split>/<backend>/``, so they are computed once per
(data set, split, backend); the images are not even loaded on a cache hit. A tensor
reference is cached only when ``reference_cache_name`` is given. Each result says
whether the reference came from the cache (``reference_cache``) and how long the call
took (``seconds``), so a hit is visible in the timing.

KID uses subsets of ``min(1000, n_generated, n_reference)`` images, as clean-fid does
(torch-fidelity itself requires 1,000); when both sets have exactly that many images all
subsets are the same, so it is computed once and its std is 0. IS uses
``min(10, n_generated)`` splits.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch_fidelity
from torch.utils.data import Dataset

from ..cache import cache_dir, unreadable
from ...contracts.errors import DiffhpoError
from . import feature_net
from .images import as_image_batch

BACKENDS = {"mnist-net": feature_net.FEATURE_EXTRACTOR_NAME, "inception": "inception-v3-compat"}
DEFAULT_BACKEND = "mnist-net"
DEFAULT_REFERENCE = "mnist5k:heldout"
INCEPTION_WEIGHTS_OPTION = "--inception-weights"
INCEPTION_WEIGHTS_ENV = "DIFFHPO_INCEPTION_WEIGHTS"
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
ISC_SPLITS = 10


@dataclass(frozen=True)
class FidelityResult:
    """FID, KID (mean, std over subsets) and IS (mean, std over splits) of one comparison."""

    fid: float
    kid_mean: float
    kid_std: float
    is_mean: float
    is_std: float
    backend: str
    reference: str
    n_generated: int
    n_reference: int
    reference_cache: str  # "hit", "miss" or "off"
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def scores(self) -> dict[str, float]:
        """The five metric values only."""
        return {k: getattr(self, k) for k in ("fid", "kid_mean", "kid_std", "is_mean", "is_std")}


class ImageDataset(Dataset):
    """uint8 images as torch-fidelity wants them: ``__getitem__`` returns a bare ``C x H x W`` tensor.

    ``loader`` (instead of ``images``) defers loading to the first access: on a reference
    cache hit torch-fidelity never touches the data set, so the images are never read.
    """

    def __init__(self, images: torch.Tensor | None = None, *, loader=None, length: int | None = None,
                 rgb: bool = False):
        self._images = images
        self._loader = loader
        self._length = length if images is None else len(images)
        self.rgb = rgb

    @property
    def images(self) -> torch.Tensor:
        if self._images is None:
            images = as_image_batch(self._loader(), "reference images")
            if self._length is not None and len(images) != self._length:
                raise DiffhpoError(f"reference has {len(images)} images, expected {self._length}")
            self._images = images
        return self._images

    def __len__(self) -> int:
        return self._length if self._length is not None else len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return image.expand(3, -1, -1) if self.rgb and image.shape[0] == 1 else image


def parse_reference(spec: str) -> tuple[str, str]:
    """``"mnist5k:heldout"`` -> ``("mnist5k", "heldout")`` (split names checked by the loader)."""
    from ..data import _check

    name, sep, split = spec.partition(":")
    if not sep:
        raise DiffhpoError(f"reference {spec!r} must be DATASET:SPLIT, e.g. {DEFAULT_REFERENCE}")
    return _check(name, split)


def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """Local InceptionV3 weights: ``path``, ``$DIFFHPO_INCEPTION_WEIGHTS``, torch hub's cache, or a download."""
    from torch.hub import HASH_REGEX, download_url_to_file, get_dir
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    path = path or os.environ.get(INCEPTION_WEIGHTS_ENV) or None
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DiffhpoError(f"{INCEPTION_WEIGHTS_OPTION} {path}: no such file")
        return path
    filename = URL_INCEPTION_V3.rsplit("/", 1)[-1]
    cached = Path(get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        match = HASH_REGEX.search(filename)
        download_url_to_file(URL_INCEPTION_V3, str(cached), hash_prefix=match.group(1) if match else None,
                             progress=False)
    except Exception as exc:  # URLError without network, HTTP errors, hash mismatch
        raise DiffhpoError(
            f"the inception backend needs InceptionV3 weights, which are not available offline "
            f"({cached} is missing and the download failed: {_one_line(exc)}); get {URL_INCEPTION_V3} "
            f"elsewhere and pass {INCEPTION_WEIGHTS_OPTION} PATH (or set {INCEPTION_WEIGHTS_ENV}), "
            f"or use the offline backend mnist-net"
        ) from None
    return cached


def compute_fidelity(
    generated: torch.Tensor,
    reference: str | torch.Tensor = DEFAULT_REFERENCE,
    *,
    backend: str = DEFAULT_BACKEND,
    data_root: str | os.PathLike | None = None,
    inception_weights: str | os.PathLike | None = None,
    reference_cache_name: str | None = None,
    cache: bool = True,
    seed: int = 0,
    batch_size: int = 200,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    isc_splits: int = ISC_SPLITS,
    cuda: bool | None = None,
) -> FidelityResult:
    """FID, KID and IS of uint8 ``generated`` images (``N x C x H x W``) against ``reference``.

    IS is computed on ``generated`` alone. ``seed`` fixes KID's subsets and IS's shuffle.
    ``cuda=None`` uses a GPU when there is one.
    """
    started = time.perf_counter()
    generated = as_image_batch(generated, "generated images")
    extractor = _feature_extractor_name(backend)
    rgb = backend == "inception"
    ref_ds, ref_label, cache_key = _reference_dataset(reference, rgb, data_root, reference_cache_name)
    n_gen, n_ref = len(generated), len(ref_ds)
    if n_ref < 2:
        raise DiffhpoError(f"reference {ref_label}: need at least 2 images, got {n_ref}")
    subset = min(kid_subset_size, n_gen, n_ref)
    cache_root = _cache_root(cache_key, backend) if cache and cache_key else None
    before = _snapshot(cache_root)
    if cache_root is not None:
        _drop_unreadable(cache_root)
    raw = torch_fidelity.calculate_metrics(
        input1=ImageDataset(generated, rgb=rgb),
        input2=ref_ds,
        input2_cache_name="reference" if cache_root else None,
        cache_root=str(cache_root) if cache_root else None,
        cache=cache_root is not None,
        fid=True,
        kid=True,
        isc=True,
        feature_extractor=extractor,
        **_weights_kwargs(backend, inception_weights),
        kid_subset_size=subset,
        kid_subsets=1 if n_gen == n_ref == subset else kid_subsets,
        isc_splits=min(isc_splits, n_gen),
        batch_size=batch_size,
        cuda=torch.cuda.is_available() if cuda is None else cuda,
        save_cpu_ram=True,  # no DataLoader worker processes: the data are in memory already
        rng_seed=seed,
        verbose=False,
    )
    status = "off" if cache_root is None else ("hit" if before and _snapshot(cache_root) == before else "miss")
    return FidelityResult(
        fid=float(raw[torch_fidelity.KEY_METRIC_FID]),
        kid_mean=float(raw[torch_fidelity.KEY_METRIC_KID_MEAN]),
        kid_std=float(raw[torch_fidelity.KEY_METRIC_KID_STD]),
        is_mean=float(raw[torch_fidelity.KEY_METRIC_ISC_MEAN]),
        is_std=float(raw[torch_fidelity.KEY_METRIC_ISC_STD]),
        backend=backend,
        reference=ref_label,
        n_generated=n_gen,
        n_reference=n_ref,
        reference_cache=status,
        seconds=round(time.perf_counter() - started, 4),
    )


def inception_score(
    images: torch.Tensor,
    *,
    backend: str = DEFAULT_BACKEND,
    inception_weights: str | os.PathLike | None = None,
    seed: int = 0,
    splits: int = ISC_SPLITS,
    batch_size: int = 200,
    cuda: bool | None = None,
) -> tuple[float, float]:
    """``(mean, std)`` of the Inception Score of uint8 ``images`` alone (no reference)."""
    images = as_image_batch(images, "images")
    raw = torch_fidelity.calculate_metrics(
        input1=ImageDataset(images, rgb=backend == "inception"),
        isc=True,
        feature_extractor=_feature_extractor_name(backend),
        **_weights_kwargs(backend, inception_weights),
        isc_splits=min(splits, len(images)),
        batch_size=batch_size,
        cuda=torch.cuda.is_available() if cuda is None else cuda,
        save_cpu_ram=True,
        cache=False,
        rng_seed=seed,
        verbose=False,
    )
    return float(raw[torch_fidelity.KEY_METRIC_ISC_MEAN]), float(raw[torch_fidelity.KEY_METRIC_ISC_STD])


def prepare_reference(
    reference: str = DEFAULT_REFERENCE,
    *,
    backend: str = DEFAULT_BACKEND,
    data_root: str | os.PathLike | None = None,
    inception_weights: str | os.PathLike | None = None,
) -> FidelityResult:
    """Fill the reference cache of a data set split now (e.g. before timed trials).

    Compares two images of the reference with the reference; the result's
    ``reference_cache`` says whether the cache was warm already.
    """
    name, split = parse_reference(reference)
    from ..data import load_mnist

    probe = load_mnist(name, split, data_root)[0][:2]
    return compute_fidelity(probe, reference, backend=backend, data_root=data_root,
                            inception_weights=inception_weights, kid_subsets=1)


# --- helpers -------------------------------------------------------------------------------


def _feature_extractor_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise DiffhpoError(f"unknown metrics backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return BACKENDS[backend]


def _weights_kwargs(backend: str, inception_weights) -> dict:
    if backend == "inception":
        return {"feature_extractor_weights_path": str(resolve_inception_weights(inception_weights))}
    return {}


def _backend_cache_tag(backend: str) -> str:
    """Cache folder of a backend; mnist-net's includes its weights' checksum (new weights, new cache)."""
    if backend == "mnist-net":
        from ..assets import read_record, verified_asset

        sha = read_record(verified_asset(feature_net.WEIGHTS_FILE))["sha256"]
        return f"mnist-net-{sha[:12]}"
    return BACKENDS[backend]


def _reference_dataset(reference, rgb: bool, data_root, cache_name: str | None):
    """``(dataset, label, cache key or None)`` of a reference given as a split or a tensor."""
    if isinstance(reference, str):
        from ..data import dataset_size, load_mnist

        name, split = parse_reference(reference)
        ds = ImageDataset(loader=lambda: load_mnist(name, split, data_root)[0], length=dataset_size(name, split),
                          rgb=rgb)
        return ds, f"{name}:{split}", cache_name or f"{name}-{split}"
    images = as_image_batch(reference, "reference images")
    return ImageDataset(images, rgb=rgb), f"tensor[{len(images)}]", cache_name


def _cache_root(cache_key: str, backend: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", cache_key)
    if safe != cache_key:  # keep distinct names distinct after sanitising
        safe += "-" + hashlib.sha256(cache_key.encode()).hexdigest()[:8]
    return cache_dir("fidelity", safe, _backend_cache_tag(backend))


def _drop_unreadable(folder: Path) -> None:
    """Name and remove the cached reference statistics in ``folder`` that do not load (a
    truncated or empty ``.pt`` of an earlier run), so torch-fidelity computes them again
    instead of failing every call (:func:`~diffhpo.bench.toolkit.cache.unreadable`). Each file is
    checked once per process and modification time: a whole load on every call would double
    the reading."""
    for p in sorted(folder.glob("*.pt")) if folder.is_dir() else ():
        key = (str(p), p.stat().st_mtime_ns)
        if key in _CHECKED:
            continue
        try:
            # torch-fidelity's own files (numpy arrays inside), in diffhpo's cache: loaded as it loads them
            torch.load(p, map_location="cpu", weights_only=False)
            _CHECKED.add(key)
        except Exception as exc:
            unreadable(p, exc)


_CHECKED: set[tuple[str, int]] = set()


def _snapshot(folder: Path | None) -> dict[str, int]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix == ".pt"}


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
