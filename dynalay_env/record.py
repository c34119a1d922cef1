"""The record of episodes: the state of those in flight, and one schema of finished ones, in torch
and numpy form, for every face.

The engine keeps its N episodes in flight in an :class:`EpisodeState`, one row each, whose fields
are declared once in that class (dtype, per-row shape, the value a new episode starts from, and
the record key the field ends up under). It fills an :class:`EpisodeRecord` of tensors for the
episodes that end in a step; the
single-sample env puts one row into its ``info``, the vector env scatters the rows into
``final_info`` arrays of length N, the SB3 face turns each row into an info dict, and the training
metrics read any of these back. Every key has one dtype and one per-episode shape wherever it
appears.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
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


# ---- episodes in flight ----------------------------------------------------------------------
GIVEN = "given"
"""A field's reset value when :meth:`EpisodeState.reset_rows` is given it (it differs per episode)."""
OBSERVED = "observed"
"""A field that reset leaves alone: it is computed from the main model's state, for new episodes too."""


@dataclass(frozen=True)
class StateField:
    """The declaration of one :class:`EpisodeState` field."""

    dtype: torch.dtype
    per_row: str
    """Shape of one row's value: "" for a scalar, "L" (one entry per layer), "T" (the budget), "D"
    (the observation)."""
    reset: Any
    """The value a new episode starts from, or :data:`GIVEN`, or :data:`OBSERVED`."""
    record: str | None
    """The :data:`EPISODE_FIELDS` key the field is recorded under when its episode ends, if any."""
    doc: str


def _state(dtype: torch.dtype, per_row: str, doc: str, *, reset: Any, record: str | None = None) -> Any:
    return field(metadata={"spec": StateField(dtype, per_row, reset, record, doc)})


@dataclass(eq=False)
class EpisodeState:
    """The state of N episodes in flight, one row each, as tensors on one device. A new field is one
    declaration here: :meth:`zeros` allocates it, :meth:`reset_rows` starts it, :meth:`record`
    records it. Fields are rebound or updated in place by the engine; readers must not write."""

    sample: Tensor = _state(torch.int64, "", "index of the sample in its split", reset=GIVEN, record="sample")
    label: Tensor = _state(torch.int64, "", "the true class", reset=GIVEN, record="label")
    lam_row: Tensor = _state(torch.float32, "", "the episode's lambda", reset=GIVEN, record="lam")
    steps: Tensor = _state(torch.int64, "", "FPI steps taken", reset=0, record="steps")
    last_action: Tensor = _state(torch.int64, "", "the last FPI layer chosen (1..L), 0 before the first", reset=0)
    repeat: Tensor = _state(torch.int64, "", "consecutive choices of the last FPI layer", reset=0)
    prediction: Tensor = _state(torch.int64, "", "the head's answer at the current state", reset=OBSERVED)
    confidence: Tensor = _state(torch.float32, "", "the head's largest class probability at the current state", reset=OBSERVED)
    ep_compute: Tensor = _state(torch.float32, "", "compute spent, in straightforward passes", reset=GIVEN, record="compute")
    ep_iterations: Tensor = _state(torch.int64, "", "FPI iterations over all steps", reset=0, record="iterations")
    ep_layer_iterations: Tensor = _state(torch.int64, "L", "FPI iterations spent on each layer", reset=0, record="layer_iterations")
    ep_return: Tensor = _state(torch.float32, "", "the return so far", reset=0.0, record="return")
    path: Tensor = _state(torch.int64, "T", "the actions taken (1..L), 0-padded to the budget T", reset=0, record="path")
    iterated: Tensor = _state(torch.bool, "L", "per layer, whether it sits at its fixed point for its current input", reset=False)
    running: Tensor = _state(torch.bool, "", "the row holds an episode in progress", reset=True)
    obs: Tensor = _state(torch.float32, "D", "the observation", reset=OBSERVED)

    @staticmethod
    def specs() -> dict[str, StateField]:
        """Each field's declaration, by name, in declaration order."""
        return _STATE_SPECS

    @classmethod
    def zeros(cls, n: int, num_layers: int, max_steps: int, obs_size: int, device: torch.device | str, **fill: float) -> "EpisodeState":
        """N idle rows of zeros (``fill`` gives other starting values, e.g. ``lam_row=0.005``)."""
        unknown = set(fill) - set(cls.specs())
        if unknown:
            raise ValueError(f"no episode state fields {sorted(unknown)}")
        sizes = {"": (), "L": (num_layers,), "T": (max_steps,), "D": (obs_size,)}
        return cls(
            **{
                name: torch.full((n, *sizes[spec.per_row]), fill.get(name, 0), dtype=spec.dtype, device=device)
                for name, spec in cls.specs().items()
            }
        )

    def reset_rows(self, rows: Tensor, **given: Any) -> None:
        """Start new episodes in ``rows``: every field gets its reset value, those reset
        :data:`GIVEN` the values in ``given``; :data:`OBSERVED` fields are left to the caller."""
        specs = self.specs()
        wanted = {name for name, spec in specs.items() if spec.reset is GIVEN}
        if set(given) != wanted:
            raise ValueError(f"reset_rows needs exactly {sorted(wanted)}, got {sorted(given)}")
        for name, spec in specs.items():
            if spec.reset is OBSERVED:
                continue
            getattr(self, name)[rows] = given.get(name, spec.reset)

    def record(self, rows: Tensor, **columns: Tensor) -> EpisodeRecord:
        """The :class:`EpisodeRecord` of ``rows``: the recorded fields' rows, plus ``columns`` (the
        record keys no field holds, already for these rows)."""
        recorded = {spec.record: getattr(self, name)[rows] for name, spec in self.specs().items() if spec.record is not None}
        return EpisodeRecord.from_tensors(**recorded, **columns)


_STATE_SPECS: dict[str, StateField] = {f.name: f.metadata["spec"] for f in fields(EpisodeState)}
if set(EPISODE_KEYS) - {spec.record for spec in _STATE_SPECS.values()} != {"correct", "difficulty"}:
    raise AssertionError("every episode record key but correct and difficulty must be an EpisodeState field's record")
