"""The data: tensorflow-datasets (any 28x28x1, 10-class set), the IDX files of ``--data-dir``,
or the real-MNIST sample in ``examples/mnist/data`` when tfds cannot give MNIST within
seconds; then all of it on the devices (replicated: MNIST is 47 MB)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from examples.mnist import idx

BUNDLED_DIR = idx.SAMPLE_DIR
TFDS_HOST = ("storage.googleapis.com", 443)  # where tfds downloads MNIST from
TFDS_TIMEOUT_S = 2.0  # without a network tfds retries for minutes: check first


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A 10-class dataset of 28x28x1 uint8 images."""

    source: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def num_train(self) -> int:
        return len(self.train_labels)


class DataUnavailable(RuntimeError):
    """The requested dataset cannot be loaded; the message says why and what to do."""


def load_idx_dir(directory: str, source: str | None = None) -> Dataset:
    """The four MNIST-format IDX files (optionally gzipped) in ``directory``."""
    splits = (*idx.load_split(directory, "train"), *idx.load_split(directory, "test"))
    return Dataset(source or f"IDX files in {directory}", *splits)


def load_bundled_sample() -> Dataset:
    """The bundled real-MNIST sample: 10,000 train and 2,000 test images."""
    return load_idx_dir(BUNDLED_DIR, "bundled MNIST sample (10k train / 2k test)")


def network_reachable(address: tuple[str, int] = TFDS_HOST, timeout: float = TFDS_TIMEOUT_S):
    """True if a TCP connection to ``address`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _tfds_split(tfds, name: str, split: str, data_dir: str | None, download: bool):
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
    labels = np.asarray([ex["label"] for ex in examples], np.int32)
    if images.shape[1:] != (28, 28, 1) or (labels.size and labels.max() > 9):
        raise DataUnavailable(
            f"tfds dataset {name!r} has images of shape {images.shape[1:]} and "
            f"labels up to {labels.max()}; this trainer needs 28x28x1 images with "
            f"10 classes (mnist, fashion_mnist, kmnist)."
        )
    return images, labels


def load_tfds(name: str, data_dir: str | None = None, reachable=network_reachable) -> Dataset:
    """``name`` from tfds (downloaded if ``reachable()``), or :class:`DataUnavailable`."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataUnavailable(f"tensorflow-datasets is not installed ({err})") from err
    try:
        splits = [_tfds_split(tfds, name, s, data_dir, False) for s in ("train", "test")]
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DataUnavailable(f"tfds has no dataset named {name!r}") from err
    except (KeyError, FileNotFoundError, AssertionError, NotImplementedError):
        # Not prepared here (or prepared as TFRecord, which has no random access).
        if not reachable():
            raise DataUnavailable(
                f"tfds cannot give {name!r}: it is not prepared locally and the "
                f"download server is unreachable (no network?)"
            ) from None
        splits = [_tfds_split(tfds, name, s, data_dir, True) for s in ("train", "test")]
    return Dataset(f"tfds {name}", *splits[0], *splits[1])


def load(
    dataset: str | None = None,
    data_dir: str | None = None,
    *,
    tfds_data_dir: str | None = None,
    log: Callable[[str], None] = print,
    reachable: Callable[[], bool] = network_reachable,
) -> Dataset:
    """``data_dir``'s IDX files, else tfds's ``dataset``; with neither named, tfds's
    MNIST or (saying so) the bundled sample. A named dataset never falls back."""
    if data_dir is not None:
        return load_idx_dir(data_dir)
    try:
        return load_tfds(dataset or "mnist", tfds_data_dir, reachable)
    except DataUnavailable as err:
        if dataset is not None:
            raise DataUnavailable(
                f"--dataset {dataset}: {err}. Pass --data-dir with the IDX files, "
                f"or drop --dataset to train on the bundled MNIST sample."
            ) from err
        log(f"{err}; training on the bundled MNIST sample instead.")
        return load_bundled_sample()


def replicate(mesh: jax.sharding.Mesh, array: np.ndarray) -> jax.Array:
    """``array`` (the same on every process) replicated on every device of ``mesh``."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.make_array_from_process_local_data(sharding, array)


class DeviceData(NamedTuple):
    """The whole dataset on the devices, replicated, and the evaluation's batch size."""

    train_images: jax.Array  # (num_train, 28, 28, 1) uint8, and so the test images
    train_labels: jax.Array  # (num_train,) int32, and so the test labels
    test_images: jax.Array
    test_labels: jax.Array
    eval_batch: int  # a multiple of the device count


def put_on_devices(dataset: Dataset, mesh: jax.sharding.Mesh, eval_batch_size: int) -> DeviceData:
    """``dataset`` replicated on ``mesh``, ``eval_batch_size`` rounded up to a device multiple."""
    arrays = (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels)
    eval_batch = -(-eval_batch_size // mesh.size) * mesh.size
    return DeviceData(*(replicate(mesh, a) for a in arrays), eval_batch)
