"""The learning algorithms a run can use, and what train.py needs of each."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from dynalay_env import DynaLayEngine

from .hooks import Hooks
from .reinforce import ReinforceLearner, ReinforceSettings
from .sb3_agents import A2CSettings, DQNSettings, PPOSettings, SB3Agent

ALGORITHMS: dict[str, type] = {"ppo": PPOSettings, "a2c": A2CSettings, "dqn": DQNSettings, "reinforce": ReinforceSettings}
"""Each algorithm's settings class; its fields are the algorithm's flags."""


class Agent(Protocol):
    num_timesteps: int

    def learn(self, steps: int, hooks: Hooks) -> None:
        """Train for ``steps`` more environment steps, calling ``hooks`` as it goes."""

    def imitate(self, obs: torch.Tensor, actions: torch.Tensor, *, epochs: int, seed: int) -> float:
        """Fit the policy to pick ``actions`` at ``obs`` (an imitation warm-start); the agreement reached."""

    def state(self) -> dict[str, Any]:
        """Agent weights, optimizer state and anything else needed to resume."""

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; raise :class:`CheckpointError` when it does not fit."""

    def policy(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The deterministic evaluation policy: observations -> actions."""

    def effective_settings(self) -> dict[str, Any]:
        """The algorithm's settings as it actually runs them (library defaults filled in)."""

    def attach_run(self, run_dir: Path) -> None:
        """Point the algorithm's own logging (if any) at the run directory."""

    def export(self, run_dir: Path) -> Path:
        """Write the agent in a format other libraries read (SB3's agent.zip, or weights)."""


def make_agent(
    algo: str, settings: Any, engine: DynaLayEngine, *, reward_weight: float, seed: int, device: torch.device, total_timesteps: int
) -> Agent:
    """The agent for ``algo`` on ``engine`` (each builds the face of the engine it speaks)."""
    if algo == "reinforce":
        return ReinforceLearner(settings, engine, reward_weight=reward_weight, seed=seed, device=device, total_timesteps=total_timesteps)
    return SB3Agent(algo, settings, engine, reward_weight=reward_weight, seed=seed, device=device)
