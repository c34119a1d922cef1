"""Run checkpoints: one file, written atomically, loaded without ever running code from it.

A checkpoint holds only tensors and plain values (dicts, lists, tuples, strings, numbers, bytes,
None): agent and main-model weights, optimizer states, counters, RNG states as tensors, DQN's replay
buffer as tensors. It is read with ``torch.load(weights_only=True)``, whose unpickler refuses any
other object, so a crafted file is refused before anything in it can execute. The same holds for
the warm-up cache (dynalay_env/make.py) and for exported main models (``main_model.pt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from main_models import UnsafeFileError, load_tensors, save_tensors

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, unsafe, or of another run/model."""


def save_checkpoint(run_dir: Path, payload: dict[str, Any], *, name: str = CHECKPOINT_NAME) -> Path:
    """Write ``run_dir/name`` via a temporary file, fsync and rename.

    A process killed at any moment leaves either the previous checkpoint or the new one, never a
    partial file under the final name."""
    return save_tensors(Path(run_dir) / name, {"format": FORMAT_VERSION, **payload})


def read_safely(path: Path, what: str, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A file this program wrote, read with ``torch.load(weights_only=True)``: anything else (a
    pickled object, a truncated or foreign file) is refused with :class:`CheckpointError` before
    any of it can run."""
    try:
        payload = load_tensors(path, what, map_location=map_location)
    except UnsafeFileError as err:
        raise CheckpointError(str(err)) from None
    if payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{what} {path} is not a DynaLay file of format {FORMAT_VERSION}")
    return payload


def load_checkpoint(run_dir: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_NAME
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {run_dir}: expected {path}; the run stopped before it wrote its first one")
    payload = read_safely(path, "checkpoint", map_location=map_location)
    for key in ("phase", "algo", "timesteps", "agent", "engine", "config"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}")
    return payload


def rng_state() -> dict[str, Any]:
    """The global torch and numpy RNG states, as tensors and numbers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
