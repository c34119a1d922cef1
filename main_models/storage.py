"""Files written so that a kill never leaves a half-written one (temporary file, fsync, rename), and
tensor files read so that nothing in them can run.

``save_tensors`` / ``load_tensors`` hold only tensors and plain values (dicts, lists, tuples,
strings, numbers, bytes, None): ``torch.load(weights_only=True)`` refuses anything else before it is
built, so a crafted file cannot execute code when it is loaded.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory, fsync and rename.

    A process killed at any moment leaves either the previous file or the new one under ``path``,
    never a partial file, and no temporary file behind on an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary shareable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")


def save_tensors(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """``payload`` (tensors and plain values only) to ``path``, atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


class UnsafeFileError(ValueError):
    """A file that is corrupt, foreign, or holds objects other than tensors and plain values."""


def load_tensors(path: str | os.PathLike, what: str, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_tensors`, refusing (before running any of it) anything
    that holds other objects, and anything that is not a dict."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated, foreign or unsafe files
        raise UnsafeFileError(
            f"{what} {path} is corrupt, not written by DynaLay, or holds objects other than tensors and plain values "
            f"(refused without running any of it): {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(payload, dict):
        raise UnsafeFileError(f"{what} {path} does not hold a dict")
    return payload
