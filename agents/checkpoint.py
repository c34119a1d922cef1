"""Run checkpoints: one file, written atomically, refused clearly when corrupt or mismatched."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from main_models import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or of another run/model."""


def save_checkpoint(run_dir: Path, payload: dict[str, Any], *, name: str = CHECKPOINT_NAME) -> Path:
    """Write ``run_dir/name`` via a temporary file, fsync and rename.

    A process killed at any moment leaves either the previous checkpoint or the new one, never a
    partial file under the final name."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **payload}, buffer)
    return atomic_write_bytes(Path(run_dir) / name, buffer.getvalue())


def load_checkpoint(run_dir: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_NAME
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {run_dir}: expected {path} (was the run started with --checkpoint-freq?)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a DynaLay checkpoint: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a DynaLay checkpoint of format {FORMAT_VERSION}")
    for key in ("algo", "timesteps", "agent", "engine", "config"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}")
    return payload


def load_warmup(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A cached warmed-up main model (see ``agents/train.py --warmup-cache``)."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"warm-up cache {path} is corrupt or not a DynaLay warm-up file: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or not {"engine", "torch_rng", "numpy_rng", "key"} <= set(payload):
        raise CheckpointError(f"warm-up cache {path} is not a DynaLay warm-up file of format {FORMAT_VERSION}")
    return payload
