"""Pieces shared by the training entry points: flag parsing from a dataclass, the TensorBoard
metrics callback, the reward-weight wrapper and saving a run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnvWrapper

T = TypeVar("T")


def parse_args(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Build an argparse parser from a dataclass: ``field_name`` becomes ``--field-name`` and the
    field's ``metadata["help"]`` its help text. Wrong flags and values exit with argparse's error."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        kind = f.type if isinstance(f.type, type) else eval(f.type, vars(__import__("builtins")))  # noqa: S307
        if kind is bool:
            parser.add_argument(flag, default=default, action=argparse.BooleanOptionalAction, help=help_text)
        elif f.metadata.get("nargs"):
            parser.add_argument(flag, default=default, nargs=f.metadata["nargs"], type=f.metadata.get("item_type", float), help=help_text)
        else:
            parser.add_argument(flag, default=default, type=f.metadata.get("parse", kind if kind in (int, float, str) else str), help=help_text)
    ns = parser.parse_args(argv)
    return cls(**vars(ns))


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
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


class DynaLayMetricsCallback(BaseCallback):
    """Logs what a DynaLay user watches, once per rollout (tags grouped as charts/ and losses/):

    * ``charts/train_accuracy`` - share of finished training episodes answered correctly;
    * ``charts/compute`` - mean compute per episode, in straightforward passes;
    * ``charts/action_freq/{nop,layer1..L}`` - share of actions taken;
    * ``charts/fpi_iterations`` - mean FPI iterations per episode;
    * ``losses/main_model_ce`` and ``charts/cotrain_updates`` - the co-trained main model.
    """

    def __init__(self, num_layers: int, max_steps: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.max_steps = max_steps
        self._reset_counts()

    def _reset_counts(self) -> None:
        self.episodes = 0
        self.correct = 0
        self.compute = 0.0
        self.iterations = 0
        self.action_counts = np.zeros(self.num_layers + 1, dtype=np.int64)

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            if "path" not in info:
                continue
            self.episodes += 1
            self.correct += int(info["correct"])
            self.compute += float(info["compute"])
            self.iterations += int(info["iterations"])
            self.action_counts += np.bincount(np.asarray(info["path"], dtype=np.int64), minlength=self.num_layers + 1)
            if info["steps"] < self.max_steps:
                self.action_counts[0] += 1
        return True

    def _on_rollout_end(self) -> None:
        if self.episodes:
            self.logger.record("charts/train_accuracy", self.correct / self.episodes)
            self.logger.record("charts/compute", self.compute / self.episodes)
            self.logger.record("charts/fpi_iterations", self.iterations / self.episodes)
            freq = self.action_counts / max(1, self.action_counts.sum())
            for i, share in enumerate(freq):
                self.logger.record(f"charts/action_freq/{'nop' if i == 0 else f'layer{i}'}", float(share))
        loss = self.training_env.get_attr("last_main_loss")[0]
        if np.isfinite(loss):
            self.logger.record("losses/main_model_ce", float(loss))
        self.logger.record("charts/cotrain_updates", self.training_env.get_attr("cotrain_updates")[0])
        self._reset_counts()
