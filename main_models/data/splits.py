"""The container every dataset loads into, and the input kinds that pick a main model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

INPUT_KINDS: tuple[str, ...] = ("flat", "image", "tokens", "grid")
"""flat: float (N, F) -> MLP; image: float (N, C, H, W) -> CNN; tokens: int64 ids (N, T) -> LSTM;
grid: int64 ids (N, H, W) -> grid-LSTM."""


def apportion(num: int, mix: Sequence[float], kinds: Sequence[str]) -> np.ndarray:
    """Exact counts of ``num`` samples per kind (one weight of ``mix`` per name in ``kinds``), summing to
    ``num`` and proportional to ``mix`` (largest remainder): how the generated tasks mix their levels."""
    p = np.asarray(mix, dtype=np.float64)
    if p.shape != (len(kinds),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"mix must be {len(kinds)} non-negative weights (one per kind {tuple(kinds)}), got {tuple(mix)}")
    p = p / p.sum()
    raw = p * num
    counts = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - counts), kind="stable")[: num - counts.sum()]:
        counts[i] += 1
    return counts


def parse_mix(mix: Sequence[float] | str) -> tuple[float, ...]:
    """A level mix as floats; a string "0.7,0.1,0.1,0.1" is accepted for the command line."""
    return tuple(float(p) for p in (mix.split(",") if isinstance(mix, str) else mix))


def generated_splits(name: str, train: tuple[np.ndarray, ...], test: tuple[np.ndarray, ...], *, meta: dict[str, Any]) -> DatasetSplits:
    """A generated binary task's splits from its train and test draws, each (x, y, difficulty)."""
    (x_tr, y_tr, k_tr), (x_te, y_te, k_te) = train[:3], test[:3]
    return DatasetSplits.from_arrays(
        name,
        np.concatenate([x_tr, x_te]),
        np.concatenate([y_tr, y_te]),
        slice(0, len(y_tr)),
        slice(len(y_tr), None),
        num_classes=2,
        meta=meta,
        difficulty=np.concatenate([k_tr, k_te]),
    )


def infer_input_kind(x: Tensor) -> str:
    """The input kind of a batch of inputs from its rank and dtype; anything else is refused."""
    if x.dtype.is_floating_point and x.dim() == 2:
        return "flat"
    if x.dtype.is_floating_point and x.dim() == 4:
        return "image"
    if not x.dtype.is_floating_point and x.dtype != torch.bool and x.dim() == 2:
        return "tokens"
    if not x.dtype.is_floating_point and x.dtype != torch.bool and x.dim() == 3:
        return "grid"
    raise ValueError(
        f"inputs must be float (N, features), float (N, C, H, W), integer token ids (N, T) or integer token grids (N, H, W); "
        f"got {x.dtype} of shape {tuple(x.shape)}"
    )


@dataclass
class DatasetSplits:
    """A classification dataset split into train and test tensors (CPU; move with ``.to``).

    ``meta["input_kind"]`` (one of :data:`INPUT_KINDS`) says which main model fits; it is inferred
    from the tensors when a loader does not set it. Token (and token-grid) datasets also carry
    ``meta["vocab_size"]`` (inferred as max id + 1 when absent) and pad with id 0 at the front.
    Construction validates the whole dataset, so a malformed one is refused before anything uses it.
    """

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
        if self.x_train.shape[1:] != self.x_test.shape[1:] or self.x_train.dtype != self.x_test.dtype:
            raise ValueError(
                f"dataset {self.name!r}: train inputs {self.x_train.dtype} {tuple(self.x_train.shape)} and test inputs "
                f"{self.x_test.dtype} {tuple(self.x_test.shape)} differ in shape or dtype"
            )
        if any(size == 0 for size in self.x_train.shape[1:]):
            raise ValueError(f"dataset {self.name!r}: inputs of shape {tuple(self.x_train.shape[1:])} have no features")
        for part, x, y, d in (
            ("train", self.x_train, self.y_train, self.difficulty_train),
            ("test", self.x_test, self.y_test, self.difficulty_test),
        ):
            if x.shape[0] == 0:
                raise ValueError(f"dataset {self.name!r}: the {part} split has no samples; training and evaluation need both")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"dataset {self.name!r}: {part} has {x.shape[0]} inputs but {y.shape[0]} labels")
            if d is not None and d.shape[0] != y.shape[0]:
                raise ValueError(f"dataset {self.name!r}: {part} has {d.shape[0]} difficulty levels but {y.shape[0]} labels")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(
                    f"dataset {self.name!r}: {part} labels must be in [0, {self.num_classes - 1}], found [{int(y.min())}, {int(y.max())}]"
                )
        kind = self.meta.get("input_kind") or infer_input_kind(self.x_train)
        if kind not in INPUT_KINDS:
            raise ValueError(f"dataset {self.name!r}: input_kind must be one of {INPUT_KINDS}, got {kind!r}")
        if kind != infer_input_kind(self.x_train):
            raise ValueError(
                f"dataset {self.name!r}: input_kind {kind!r} does not match inputs {self.x_train.dtype} {tuple(self.x_train.shape)}"
            )
        self.meta.setdefault("input_kind", kind)
        if kind in ("tokens", "grid"):
            lo = min(int(self.x_train.min()), int(self.x_test.min())) if self.x_train.numel() else 0
            hi = max(int(self.x_train.max()), int(self.x_test.max())) if self.x_train.numel() else 0
            vocab = int(self.meta.setdefault("vocab_size", hi + 1))
            if lo < 0 or hi >= vocab:
                raise ValueError(f"dataset {self.name!r}: token ids must be in [0, {vocab - 1}], found [{lo}, {hi}]")

    @classmethod
    def from_arrays(
        cls,
        name: str,
        x: np.ndarray,
        y: np.ndarray,
        train: Any,
        test: Any,
        *,
        num_classes: int,
        meta: dict,
        difficulty: np.ndarray | None = None,
    ) -> "DatasetSplits":
        """Split numpy arrays by the index arrays (or slices) ``train`` and ``test``."""
        level = None if difficulty is None else difficulty.astype(np.int64)
        return cls(
            name,
            torch.from_numpy(x[train]),
            torch.from_numpy(y[train]),
            torch.from_numpy(x[test]),
            torch.from_numpy(y[test]),
            num_classes,
            meta,
            None if level is None else torch.from_numpy(level[train]),
            None if level is None else torch.from_numpy(level[test]),
        )

    @property
    def has_difficulty(self) -> bool:
        return self.difficulty_train is not None and self.difficulty_test is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def input_kind(self) -> str:
        return str(self.meta["input_kind"])

    def head(self, num_train: int | None = None, num_test: int | None = None) -> "DatasetSplits":
        """The first ``num_train`` train and ``num_test`` test samples (None: all), e.g. to run an
        expensive analysis on part of a split."""
        tr, te = slice(0, num_train), slice(0, num_test)
        return DatasetSplits(
            self.name,
            self.x_train[tr],
            self.y_train[tr],
            self.x_test[te],
            self.y_test[te],
            self.num_classes,
            dict(self.meta),
            None if self.difficulty_train is None else self.difficulty_train[tr],
            None if self.difficulty_test is None else self.difficulty_test[te],
        )

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


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation cut into (train, test) indices; test gets round(n * test_fraction)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return order[n_test:], order[:n_test]
