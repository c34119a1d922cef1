"""The record of finished episodes: one schema, in torch and numpy form, for every face.

The engine fills an :class:`EpisodeRecord` of tensors for the episodes that end in a step; the
single-sample env puts one row into its ``info``, the vector env scatters the rows into
``final_info`` arrays of length N, the SB3 face turns each row into an info dict, and the training
metrics read any of these back. Every key has one dtype and one per-episode shape wherever it
appears.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class EpisodeField:
    name: str
    dtype: torch.dtype
    per_episode: str
    """Shape of one episode's value: "" for a scalar, "L" (one entry per layer), "T" (the budget)."""
    doc: str

    @property
    def numpy_dtype(self) -> np.dtype:
        return torch.empty(0, dtype=self.dtype).numpy().dtype


EPISODE_FIELDS: tuple[EpisodeField, ...] = (
    EpisodeField("correct", torch.bool, "", "the answer was right"),
    EpisodeField("compute", torch.float32, "", "compute spent, in straightforward passes (the plain pass is 1.0)"),
    EpisodeField("iterations", torch.int64, "", "FPI iterations over all steps"),
    EpisodeField("layer_iterations", torch.int64, "L", "FPI iterations spent on each layer"),
    EpisodeField("return", torch.float32, "", "the Eq. 2 return, undiscounted"),
    EpisodeField("steps", torch.int64, "", "FPI steps taken"),
    EpisodeField("path", torch.int64, "T", "the actions taken (1..L), 0-padded to the budget T"),
    EpisodeField("label", torch.int64, "", "the true class"),
    EpisodeField("sample", torch.int64, "", "index of the sample in its split"),
    EpisodeField("lam", torch.float32, "", "the episode's lambda"),
    EpisodeField("difficulty", torch.int64, "", "the sample's known difficulty level, -1 where the dataset has none"),
)
EPISODE_KEYS: tuple[str, ...] = tuple(f.name for f in EPISODE_FIELDS)


class EpisodeRecord:
    """Finished episodes, one row each: ``record["compute"]`` is a (n,) tensor or array.

    Built from tensors by the engine (:meth:`from_tensors`) or from SB3-style info dicts
    (:meth:`from_info_dicts`); converted with :meth:`numpy`, :meth:`info_dicts` and :meth:`scatter`.
    """

    def __init__(self, columns: Mapping[str, Any]) -> None:
        missing = set(EPISODE_KEYS) - set(columns)
        if missing:
            raise ValueError(f"an episode record needs {sorted(missing)}")
        self.columns = {k: columns[k] for k in EPISODE_KEYS}

    @classmethod
    def from_tensors(cls, **columns: Tensor) -> "EpisodeRecord":
        return cls({f.name: columns[f.name].to(f.dtype) for f in EPISODE_FIELDS})

    @classmethod
    def from_info_dicts(cls, infos: Iterable[Mapping[str, Any]]) -> "EpisodeRecord":
        """The finished episodes among SB3-style per-env info dicts (those that carry the keys)."""
        done = [info for info in infos if "path" in info]
        return cls({f.name: np.array([info[f.name] for info in done], dtype=f.numpy_dtype) for f in EPISODE_FIELDS})

    def __getitem__(self, key: str) -> Any:
        return self.columns[key]

    def __len__(self) -> int:
        return int(self.columns["correct"].shape[0])

    def numpy(self) -> dict[str, np.ndarray]:
        """Host copies the caller owns, with the schema's dtypes."""
        return {f.name: _to_numpy(self.columns[f.name], f.numpy_dtype) for f in EPISODE_FIELDS}

    def info_dicts(self) -> list[dict[str, Any]]:
        """One dict per episode: numpy scalars (0-d) and arrays of the schema's dtypes."""
        arrays = self.numpy()
        return [{k: v[i] for k, v in arrays.items()} for i in range(len(self))]

    def scatter(self, rows: Any, num_envs: int, *, as_numpy: bool) -> dict[str, Any]:
        """Gymnasium vector ``final_info``: each key as a length-``num_envs`` numpy array (or torch
        tensor on the record's device) with this record's rows at ``rows`` and zeros elsewhere, plus
        the ``_key`` masks."""
        source = self.numpy() if as_numpy else self.columns
        zeros = np.zeros if as_numpy else (lambda shape, dtype: torch.zeros(shape, dtype=dtype, device=self.columns["correct"].device))
        mask = zeros(num_envs, dtype=np.bool_ if as_numpy else torch.bool)
        mask[rows] = True
        out: dict[str, Any] = {}
        for name, values in source.items():
            full = zeros((num_envs, *values.shape[1:]), dtype=values.dtype)
            full[rows] = values
            out[name] = full
            out[f"_{name}"] = mask
        return out


def _to_numpy(values: Any, dtype: np.dtype) -> np.ndarray:
    if isinstance(values, Tensor):
        # a copy the caller owns: .cpu() alone aliases the engine's buffers on CPU
        return values.detach().to("cpu", copy=True).numpy().astype(dtype, copy=False)
    return np.asarray(values, dtype=dtype)
