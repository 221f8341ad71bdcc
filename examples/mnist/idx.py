"""Reading and writing the IDX files MNIST is distributed in.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian uint32 per dimension, then the data. MNIST uses
type 0x08 (uint8): 3 dimensions for images, 1 for labels. Files may be gzipped.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

UBYTE = 0x08
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class IdxError(ValueError):
    """An IDX file is missing, truncated or not what it claims to be."""


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise IdxError(f"cannot read {path}: {err.strerror}") from err
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxError(f"{path} is a corrupt or truncated gzip file ({err})") from err
    return raw


def read_idx(path: str, ndim: int) -> np.ndarray:
    """Reads an IDX uint8 array with ``ndim`` dimensions, checking its header and size."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IdxError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype, got_ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != UBYTE or got_ndim != ndim:
        raise IdxError(
            f"{path}: bad magic number 0x{raw[:4].hex()}; expected "
            f"0x0000{UBYTE:02x}{ndim:02x} (uint8, {ndim} dimension(s))"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{path} is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise IdxError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(raw) - header} bytes: truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes a uint8 array as IDX, gzipped (deterministically) if ``path`` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, UBYTE, array.ndim)
    data += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if path.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(data)


def find(directory: str, stem: str) -> str:
    """The path of ``stem`` or ``stem.gz`` in ``directory``."""
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise IdxError(f"{directory} has neither {stem} nor {stem}.gz")


def load_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) uint8 and labels (N,) int32 of an MNIST-format split."""
    images_stem, labels_stem = FILES[split]
    images = read_idx(find(directory, images_stem), 3)
    labels = read_idx(find(directory, labels_stem), 1)
    if images.shape[0] != labels.shape[0]:
        raise IdxError(
            f"{directory} ({split}): {images.shape[0]} images but {labels.shape[0]} labels"
        )
    if images.shape[1:] != (28, 28):
        raise IdxError(f"{directory} ({split}): images are {images.shape[1:]}, not 28x28")
    if labels.size and labels.max() > 9:
        raise IdxError(f"{directory} ({split}): label {labels.max()} is not a digit 0-9")
    return images[..., None], labels.astype(np.int32)
