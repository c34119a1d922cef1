"""DynaLay as a Gymnasium environment: importing this package registers ``DynaLay-v0``."""

import gymnasium as gym

from .config import TASK_DEFAULTS, EnvConfig, RewardConfig, action_names, default_max_steps, task_defaults
from .engine import DynaLayEngine, StepOutput
from .env import DynaLayEnv, DynaLaySB3VecEnv, DynaLayVectorEnv
from .evaluation import (
    EvalReport,
    OraclePaths,
    OracleReport,
    PolicyTiming,
    evaluate_fixed_policies,
    evaluate_policy,
    oracle,
    oracle_paths,
    sequence_name,
    sequence_shares,
    time_policies,
    time_policy,
)
from .make import (
    build_engine,
    cache_directory,
    export_main_model,
    load_main_model,
    make_engine,
    make_trainer,
    new_main_model,
    prepare_main_model,
)
from .observation import DEFAULT_OBSERVATION, OBSERVATION_GROUPS, ObservationLayout
from .record import EPISODE_FIELDS, EPISODE_KEYS, EpisodeRecord, EpisodeState

ENV_ID = "DynaLay-v0"

if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="dynalay_env.env:DynaLayEnv",
        vector_entry_point="dynalay_env.env:DynaLayVectorEnv",
        # The main model is co-trained while the agent acts, so the same seed does not replay.
        nondeterministic=True,
        # 90% of the largest return (alpha = 0.5 for a right answer at no compute), for trainers that
        # stop on spec.reward_threshold (tianshou's stop_fn)
        reward_threshold=0.9 * EnvConfig.alpha,
    )

__all__ = [
    "DEFAULT_OBSERVATION",
    "OBSERVATION_GROUPS",
    "ENV_ID",
    "EPISODE_FIELDS",
    "EPISODE_KEYS",
    "DynaLayEngine",
    "DynaLayEnv",
    "DynaLaySB3VecEnv",
    "DynaLayVectorEnv",
    "EnvConfig",
    "EpisodeRecord",
    "EpisodeState",
    "EvalReport",
    "ObservationLayout",
    "OraclePaths",
    "OracleReport",
    "RewardConfig",
    "StepOutput",
    "TASK_DEFAULTS",
    "action_names",
    "build_engine",
    "cache_directory",
    "export_main_model",
    "load_main_model",
    "make_engine",
    "make_trainer",
    "new_main_model",
    "prepare_main_model",
    "default_max_steps",
    "evaluate_fixed_policies",
    "evaluate_policy",
    "oracle",
    "oracle_paths",
    "sequence_name",
    "sequence_shares",
    "task_defaults",
    "time_policies",
    "time_policy",
    "PolicyTiming",
]
