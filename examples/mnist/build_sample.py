"""Rebuilds the bundled MNIST sample from the full IDX files.

    python -m examples.mnist.build_sample --source ../shared/datasets/mnist

It takes 10,000 training and 2,000 test images, chosen uniformly at random
with NumPy seed 0 (indices kept in their original order), and writes them
gzipped in IDX format to ``examples/mnist/data/``. The output is byte-for-byte
reproducible.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from examples.mnist import idx

SIZES = {"train": 10_000, "test": 2_000}
OUT = os.path.join(os.path.dirname(__file__), "data")


def build(source: str, out: str = OUT, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    for split, size in SIZES.items():
        images, labels = idx.load_split(source, split)
        keep = np.sort(rng.choice(len(labels), size=size, replace=False))
        images_stem, labels_stem = idx.FILES[split]
        idx.write_idx(os.path.join(out, images_stem + ".gz"), images[keep, ..., 0])
        idx.write_idx(os.path.join(out, labels_stem + ".gz"), labels[keep])
        print(
            f"{split}: {size} of {len(labels)} examples, label counts "
            f"{np.bincount(labels[keep], minlength=10).tolist()}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="directory of the 4 MNIST IDX files")
    parser.add_argument("--out", default=OUT, help="output directory")
    args = parser.parse_args()
    build(args.source, args.out)


if __name__ == "__main__":
    main()
