"""Rebuild src/imgcls/assets/mnist_sample.npz from the official MNIST files.

A seeded, class-balanced subset of real MNIST digits, small enough to ship inside the
package so that `imgcls train` works offline. Usage:
    python scripts/make_mnist_sample.py ../shared/data
"""

import sys
from pathlib import Path

import numpy as np
from torchvision.datasets import MNIST

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
OUT = Path(__file__).resolve().parents[1] / "src" / "imgcls" / "assets" / "mnist_sample.npz"


def balanced_subset(images, labels, per_class, rng):
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    rng.shuffle(idx)
    return images[idx], labels[idx]


def main(root: str) -> None:
    rng = np.random.default_rng(0)
    parts = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        ds = MNIST(root, train=split == "train", download=False)
        images, labels = balanced_subset(ds.data.numpy(), ds.targets.numpy(), per_class, rng)
        parts[f"{split}_images"], parts[f"{split}_labels"] = images, labels.astype(np.uint8)
    np.savez_compressed(OUT, **parts)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
