"""Small pieces shared by the training entry points."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnvWrapper


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary shareable files
    os.replace(tmp, path)


def write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


class RewardWeight(VecEnvWrapper):
    """Multiplies rewards by the paper's gamma (total loss = CE - gamma * R, Eq. 3).

    Placed outside ``VecMonitor`` so the logged episode reward stays the plain Eq. 2 return."""

    def __init__(self, venv, weight: float) -> None:
        super().__init__(venv)
        self.weight = float(weight)

    def reset(self) -> np.ndarray:
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, rewards * self.weight, dones, infos
