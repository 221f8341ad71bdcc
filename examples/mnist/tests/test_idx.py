"""The IDX reader on real MNIST, on files it wrote, and on corrupt files."""

from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np
import pytest

from examples.mnist import idx

SHARED = os.path.join(os.path.dirname(__file__), *[".."] * 4, "shared", "datasets", "mnist")
SHARED = os.path.normpath(SHARED)


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/datasets/mnist not present")
def test_reads_the_real_mnist():
    images, labels = idx.load_split(SHARED, "train")
    assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    raw = gzip.decompress(open(os.path.join(SHARED, "train-labels-idx1-ubyte.gz"), "rb").read())
    assert hashlib.md5(raw).hexdigest() == "a25bea736e30d166cdddb491f175f624"
    test_images, test_labels = idx.load_split(SHARED, "test")
    assert test_images.shape == (10000, 28, 28, 1)
    assert abs(images.mean() / 255 - 0.1307) < 1e-3


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_round_trip(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = str(tmp_path / name)
    idx.write_idx(path, array)
    np.testing.assert_array_equal(idx.read_idx(path, 3), array)


def _write_raw(tmp_path, data: bytes, name="f-idx1-ubyte") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_corrupt_files_get_clear_errors(tmp_path):
    good = tmp_path / "good.gz"
    idx.write_idx(str(good), np.arange(100, dtype=np.uint8))
    with pytest.raises(idx.IdxError, match="corrupt or truncated gzip"):
        idx.read_idx(_write_raw(tmp_path, good.read_bytes()[:-20], "t.gz"), 1)
    with pytest.raises(idx.IdxError, match="bad magic number 0x00000803"):
        idx.read_idx(_write_raw(tmp_path, b"\x00\x00\x08\x03" + b"\x00" * 20), 1)
    with pytest.raises(
        idx.IdxError,
        match=r"shape \(100,\) \(100 bytes of data\) but the file holds 60",
    ):
        raw = gzip.decompress(good.read_bytes())
        idx.read_idx(_write_raw(tmp_path, raw[:-40]), 1)
    with pytest.raises(idx.IdxError, match="too short"):
        idx.read_idx(_write_raw(tmp_path, b"\x00"), 1)
    with pytest.raises(idx.IdxError, match="cannot read"):
        idx.read_idx(str(tmp_path / "missing"), 1)


def test_split_checks(tmp_path):
    idx.write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(idx.IdxError, match="neither train-labels-idx1-ubyte nor"):
        idx.load_split(str(tmp_path), "train")
    idx.write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros(3, np.uint8))
    with pytest.raises(idx.IdxError, match="4 images but 3 labels"):
        idx.load_split(str(tmp_path), "train")
    idx.write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.array([0, 1, 2, 12], np.uint8))
    with pytest.raises(idx.IdxError, match="label 12 is not a digit"):
        idx.load_split(str(tmp_path), "train")
