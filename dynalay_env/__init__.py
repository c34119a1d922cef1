"""DynaLay as a Gymnasium environment: importing this package registers ``DynaLay-v0``."""

import gymnasium as gym

from .engine import DynaLayEngine, ObservationLayout, StepOutput, resolve_device
from .env import DynaLayEnv, DynaLaySB3VecEnv, DynaLayVectorEnv
from .evaluation import EvalReport, evaluate_policy

ENV_ID = "DynaLay-v0"

if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="dynalay_env.env:DynaLayEnv",
        vector_entry_point="dynalay_env.env:DynaLayVectorEnv",
        # The main model is co-trained while the agent acts, so the same seed does not replay.
        nondeterministic=True,
    )

__all__ = [
    "ENV_ID",
    "DynaLayEngine",
    "DynaLayEnv",
    "DynaLaySB3VecEnv",
    "DynaLayVectorEnv",
    "EvalReport",
    "ObservationLayout",
    "StepOutput",
    "evaluate_policy",
    "resolve_device",
]
