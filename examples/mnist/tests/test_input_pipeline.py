"""Every data path: bundled sample, IDX dir, tfds (mocked), the offline fallback."""

from __future__ import annotations

import socket
import time

import jax
import numpy as np
import pytest

from examples.mnist import input_pipeline, train


def test_bundled_sample():
    ds = input_pipeline.load_bundled_sample()
    assert ds.train_images.shape == (10_000, 28, 28, 1)
    assert ds.test_images.shape == (2_000, 28, 28, 1)
    assert np.bincount(ds.train_labels).tolist() == [
        991,
        1135,
        995,
        1016,
        956,
        907,
        1026,
        1040,
        947,
        987,
    ]
    assert np.bincount(ds.test_labels).tolist() == [
        185,
        232,
        222,
        218,
        181,
        165,
        183,
        211,
        183,
        220,
    ]


def test_tfds_path_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = input_pipeline.load("mnist", reachable=lambda: False)
    assert ds.source == "tfds mnist"
    assert ds.train_images.shape == (12, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.dtype == np.int32 and ds.test_labels.max() <= 9


def test_tfds_rejects_datasets_of_another_shape():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):
        with pytest.raises(input_pipeline.DataUnavailable, match="needs 28x28x1 images"):
            input_pipeline.load("cifar10", reachable=lambda: False)


def _closed_loopback_port() -> tuple[str, int]:
    with socket.socket() as s:  # bind, then close: nothing listens there any more
        s.bind(("127.0.0.1", 0))
        return s.getsockname()


def _unreachable() -> bool:
    # The real check, aimed at a closed port on this machine: tests send no
    # traffic off the machine.
    return input_pipeline.network_reachable(_closed_loopback_port(), timeout=2.0)


def test_offline_falls_back_to_the_sample_within_seconds(tmp_path):
    messages = []
    start = time.perf_counter()
    ds = input_pipeline.load(
        None,  # no --dataset: MNIST, or the sample
        tfds_data_dir=str(tmp_path),
        log=messages.append,
        reachable=_unreachable,
    )
    assert time.perf_counter() - start < 20
    assert ds.source.startswith("bundled MNIST sample")
    assert len(messages) == 1 and "training on the bundled MNIST sample" in messages[0]


def test_reachability_check():
    start = time.perf_counter()
    assert not _unreachable()
    assert time.perf_counter() - start < 3
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert input_pipeline.network_reachable(server.getsockname(), timeout=2.0)


def test_explicit_dataset_never_falls_back(tmp_path):
    with pytest.raises(input_pipeline.DataUnavailable, match="--dataset fashion_mnist: .*bundled"):
        input_pipeline.load(
            "fashion_mnist",
            tfds_data_dir=str(tmp_path),
            reachable=lambda: False,
        )
    with pytest.raises(input_pipeline.DataUnavailable, match="no dataset named 'no_such_set'"):
        input_pipeline.load("no_such_set", reachable=_unreachable)


def test_data_dir_wins():
    ds = input_pipeline.load("mnist", input_pipeline.BUNDLED_DIR, reachable=lambda: 1 / 0)
    assert ds.source.startswith("IDX files in")


def test_epoch_permutation_is_a_function_of_seed_and_epoch():
    order = lambda seed, epoch: np.asarray(
        train.epoch_order(seed, epoch, num_examples=100, mesh=train.make_mesh())
    )
    a, b, c = order(0, 3), order(0, 3), order(0, 4)
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == list(range(100)) and not np.array_equal(a, c)


@pytest.mark.parametrize("eval_batch_size", [1, 7, 500, 2000, 5000])
def test_the_data_is_replicated_and_the_eval_batch_rounded_up(eval_batch_size):
    rng = np.random.default_rng(0)
    ds = input_pipeline.Dataset(
        "random",
        rng.integers(0, 256, (16, 28, 28, 1), np.uint8),
        rng.integers(0, 10, 16).astype(np.int32),
        rng.integers(0, 256, (2000, 28, 28, 1), np.uint8),
        rng.integers(0, 10, 2000).astype(np.int32),
    )
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    data = input_pipeline.put_on_devices(ds, mesh, eval_batch_size)
    assert data.eval_batch % jax.device_count() == 0
    assert eval_batch_size <= data.eval_batch < eval_batch_size + jax.device_count()
    for array, expected in zip(
        data[:4], (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels), strict=True
    ):
        assert array.sharding.is_fully_replicated
        np.testing.assert_array_equal(np.asarray(array), expected)
    assert len(data.train_labels) == 16
