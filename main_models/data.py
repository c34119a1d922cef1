"""Datasets for the main models, as tensors with a fixed train/test split.

Every dataset loads into a :class:`DatasetSplits`. The default, ``digits``, is scikit-learn's
bundled 8x8 handwritten digits: it ships inside the scikit-learn wheel, so it needs no download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor


@dataclass
class DatasetSplits:
    """A classification dataset split into train and test tensors (CPU; move with ``.to``)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    meta: dict = field(default_factory=dict)
    difficulty_train: Tensor | None = None
    """Known per-sample difficulty level (int64, 0 = easiest) where the dataset defines one."""
    difficulty_test: Tensor | None = None

    def __post_init__(self) -> None:
        for part, x, y, d in (
            ("train", self.x_train, self.y_train, self.difficulty_train),
            ("test", self.x_test, self.y_test, self.difficulty_test),
        ):
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"dataset {self.name!r}: {part} has {x.shape[0]} inputs but {y.shape[0]} labels")
            if d is not None and d.shape[0] != y.shape[0]:
                raise ValueError(f"dataset {self.name!r}: {part} has {d.shape[0]} difficulty levels but {y.shape[0]} labels")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(
                    f"dataset {self.name!r}: {part} labels must be in [0, {self.num_classes - 1}], "
                    f"found [{int(y.min())}, {int(y.max())}]"
                )

    @property
    def has_difficulty(self) -> bool:
        return self.difficulty_train is not None and self.difficulty_test is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "DatasetSplits":
        return DatasetSplits(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.num_classes,
            dict(self.meta),
            None if self.difficulty_train is None else self.difficulty_train.to(device),
            None if self.difficulty_test is None else self.difficulty_test.to(device),
        )


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_digits(data_dir: str | None = None, *, seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixels scaled to [0, 1].

    ``data_dir`` is accepted for a uniform loader signature and ignored: the data is bundled.
    The split is a fixed permutation drawn from ``seed``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, y_tr, x_te, y_te = _split(x, y, test_fraction, seed)
    return DatasetSplits(
        "digits",
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te),
        num_classes=10,
        meta={"source": "sklearn.datasets.load_digits", "split_seed": seed},
    )


DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": load_digits,
}


def load_dataset(name: str, data_dir: str | None = None, *, seed: int = 0) -> DatasetSplits:
    """Load a dataset by name; an unknown name is refused with the list of known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir, seed=seed)


def build_main_model(splits: DatasetSplits, **kwargs) -> "FPINetwork":
    """The default main model for a dataset's input shape."""
    from .network import build_mlp_fpi_network

    if len(splits.input_shape) != 1:
        raise ValueError(f"no main model for input shape {splits.input_shape} of dataset {splits.name!r}")
    return build_mlp_fpi_network(splits.input_shape[0], splits.num_classes, **kwargs)
