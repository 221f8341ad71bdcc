"""MNIST's IDX files: a magic number (0, 0, type 0x08 for uint8, number of dimensions),
a big-endian uint32 per dimension, the data; maybe gzipped. ``python -m examples.mnist.idx
--source DIR`` rebuilds the bundled sample from the full files in DIR (see data/README.md).
"""

from __future__ import annotations

import argparse
import gzip
import os
import struct
import zlib

import numpy as np

UBYTE = 0x08
SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "data")
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
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise IdxError(f"{path} is a corrupt or truncated gzip file ({err})") from err


def read_idx(path: str, ndim: int) -> np.ndarray:
    """Reads an IDX uint8 array with ``ndim`` dimensions, checking its header and size."""
    raw = _read_bytes(path)
    if len(raw) < 4 + 4 * ndim:
        raise IdxError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    if raw[:4] != struct.pack(">HBB", 0, UBYTE, ndim):
        raise IdxError(
            f"{path}: bad magic number 0x{raw[:4].hex()}; expected "
            f"0x0000{UBYTE:02x}{ndim:02x} (uint8, {ndim} dimension(s))"
        )
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != (expected := int(np.prod(shape))):
        raise IdxError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(raw) - header} bytes: truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes a uint8 array as IDX, gzipped (deterministically) if ``path`` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(f">HBB{array.ndim}I", 0, UBYTE, array.ndim, *array.shape) + array.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(data, compresslevel=9, mtime=0) if path.endswith(".gz") else data)


def load_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) uint8 and labels (N,) int32 of an MNIST-format split."""
    paths = []
    for stem in FILES[split]:
        found = [p for p in (stem + ".gz", stem) if os.path.exists(os.path.join(directory, p))]
        if not found:
            raise IdxError(f"{directory} has neither {stem} nor {stem}.gz")
        paths.append(os.path.join(directory, found[0]))
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    where = f"{directory} ({split})"
    if images.shape[0] != labels.shape[0]:
        raise IdxError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise IdxError(f"{where}: images are {images.shape[1:]}, not 28x28")
    if labels.size and labels.max() > 9:
        raise IdxError(f"{where}: label {labels.max()} is not a digit 0-9")
    return images[..., None], labels.astype(np.int32)


def build_sample(source: str, out: str = SAMPLE_DIR, seed: int = 0) -> None:
    """Writes the bundled sample's four gzipped files, byte for byte reproducibly."""
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    for split, size in {"train": 10_000, "test": 2_000}.items():
        images, labels = load_split(source, split)
        keep = np.sort(rng.choice(len(labels), size=size, replace=False))
        for stem, array in zip(FILES[split], (images[keep, ..., 0], labels[keep]), strict=True):
            write_idx(os.path.join(out, stem + ".gz"), array)
        counts = np.bincount(labels[keep], minlength=10).tolist()
        print(f"{split}: {size} of {len(labels)} examples, label counts {counts}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Rebuilds examples/mnist/data from full MNIST.")
    parser.add_argument("--source", required=True, help="directory of the 4 MNIST IDX files")
    parser.add_argument("--out", default=SAMPLE_DIR, help="output directory")
    args = parser.parse_args()
    build_sample(args.source, args.out)
