"""PPO, A2C and DQN from stable-baselines3 against a DynaLay engine.

Each algorithm's settings are a dataclass whose fields are the algorithm's own constructor
arguments, passed verbatim; ``None`` leaves the library's default. The defaults here are the ones
DynaLay's benchmarks use, stated once. The policy network is AgentNet's architecture
(:func:`agents.nets.sb3_policy_kwargs`), so algorithms are compared on their learning rule.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnvWrapper

from dynalay_env import DynaLayEngine, DynaLaySB3VecEnv
from dynalay_env.config import setting
from main_models import atomic_write_bytes

from .checkpoint import CheckpointError
from .hooks import Hooks
from .nets import sb3_policy_kwargs


@dataclass
class OnPolicySettings:
    """What PPO and A2C share; each sets its own rollout length."""

    learning_rate: float | None = setting(None, "optimizer learning rate (Adam for PPO, RMSprop for A2C)")
    gamma: float | None = setting(1.0, "RL discount (episodes last at most T steps)")
    gae_lambda: float | None = setting(None, "GAE lambda")
    ent_coef: float | None = setting(0.01, "entropy bonus")
    vf_coef: float | None = setting(None, "value loss weight")
    max_grad_norm: float | None = setting(None, "gradient clipping norm")
    normalize_advantage: bool | None = setting(None, "normalise advantages")


@dataclass
class PPOSettings(OnPolicySettings):
    n_steps: int | None = setting(128, "rollout length per env between updates")
    batch_size: int | None = setting(256, "minibatch size")
    n_epochs: int | None = setting(4, "epochs over each rollout")
    clip_range: float | None = setting(None, "PPO clipping parameter")
    target_kl: float | None = setting(None, "stop an update early past this KL divergence")


@dataclass
class A2CSettings(OnPolicySettings):
    n_steps: int | None = setting(8, "rollout length per env between updates")


@dataclass
class DQNSettings:
    learning_rate: float | None = setting(None, "Adam learning rate")
    buffer_size: int | None = setting(50_000, "replay buffer size (transitions)")
    learning_starts: int | None = setting(1_000, "environment steps before learning starts")
    batch_size: int | None = setting(256, "minibatch size")
    tau: float | None = setting(None, "soft target update coefficient (1: hard update)")
    gamma: float | None = setting(1.0, "RL discount (episodes last at most T steps)")
    train_freq: int | None = setting(1, "update every this many vector steps")
    gradient_steps: int | None = setting(4, "gradient steps per update (4 for the 16 episodes in flight by default)")
    target_update_interval: int | None = setting(1_000, "environment steps between target network updates")
    exploration_fraction: float | None = setting(0.3, "share of training over which epsilon decays")
    exploration_initial_eps: float | None = setting(1.0, "initial epsilon")
    exploration_final_eps: float | None = setting(0.02, "final epsilon")
    max_grad_norm: float | None = setting(None, "gradient clipping norm")


class RewardWeight(VecEnvWrapper):
    """Multiplies rewards by the paper's gamma (total loss = CE - gamma * R, Eq. 3).

    The logged episode reward stays the plain Eq. 2 return: it comes from the episode record."""

    def __init__(self, venv: Any, weight: float) -> None:
        super().__init__(venv)
        self.weight = float(weight)

    def reset(self) -> np.ndarray:
        return self.venv.reset()

    def step_wait(self) -> tuple:
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, rewards * self.weight, dones, infos


REPLAY_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
"""The arrays of SB3's ``ReplayBuffer`` that a checkpoint keeps."""


def _algorithm_class(algo: str) -> type:
    from stable_baselines3 import A2C, DQN, PPO

    return {"ppo": PPO, "a2c": A2C, "dqn": DQN}[algo]


class SB3Agent:
    """An SB3 algorithm on the SB3 face of ``engine``, with the shared hooks as a callback."""

    def __init__(self, algo: str, settings: Any, engine: DynaLayEngine, *, reward_weight: float, seed: int, device: torch.device) -> None:
        self.algo = algo
        self.settings = settings
        self.env = DynaLaySB3VecEnv(engine)  # its infos already carry Monitor's episode statistics
        self.venv = RewardWeight(self.env, reward_weight)
        self.cls = _algorithm_class(algo)
        self.device = device
        kwargs = {k: v for k, v in asdict(settings).items() if v is not None}
        self.model = self.cls("MlpPolicy", self.venv, policy_kwargs=sb3_policy_kwargs(algo), seed=seed, device=device, verbose=0, **kwargs)

    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    def effective_settings(self) -> dict[str, Any]:
        """Every setting as the library actually runs it (its defaults filled in)."""
        return {name: _plain(getattr(self.model, name, None)) for name in asdict(self.settings)}

    def learn(self, steps: int, hooks: Hooks) -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        class Callback(BaseCallback):
            def _on_step(inner) -> bool:
                hooks.on_infos(inner.locals.get("infos", ()))
                hooks.after_step(self.num_timesteps)
                return True

            def _on_rollout_start(inner) -> None:
                hooks.between_updates(self.num_timesteps)

        self.model.learn(steps, callback=Callback(), reset_num_timesteps=False, progress_bar=hooks.progress)

    def imitate(self, obs: torch.Tensor, actions: torch.Tensor, *, epochs: int, seed: int) -> float:
        """Fit the policy to ``actions``: PPO's and A2C's action logits by cross-entropy; DQN's
        Q-network by DQfD's large-margin loss, then its target network is synced. The algorithm's
        own optimizer state is left as it was."""
        from .imitation import fit_to_actions

        policy = self.model.policy
        obs, actions = obs.to(self.device, torch.float32), actions.to(self.device, torch.long)
        policy.set_training_mode(True)
        try:
            if self.algo == "dqn":
                agreement = fit_to_actions(policy.q_net, policy.q_net.parameters(), obs, actions, epochs=epochs, seed=seed, loss="margin")
                policy.q_net_target.load_state_dict(policy.q_net.state_dict())
            else:
                agreement = fit_to_actions(
                    lambda o: policy.get_distribution(o).distribution.logits, policy.parameters(), obs, actions, epochs=epochs, seed=seed
                )
        finally:
            policy.set_training_mode(False)
        return agreement

    def state(self) -> dict[str, Any]:
        """Weights, optimizer state and counters as tensors and numbers, never SB3's zip: its data
        section is cloudpickled, so loading one runs code (see agents/checkpoint.py)."""
        model = self.model
        out: dict[str, Any] = {
            "policy": model.policy.state_dict(),
            "optimizer": model.policy.optimizer.state_dict(),
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(getattr(model, "_n_updates", 0)),
            "n_calls": int(getattr(model, "_n_calls", 0)),
            "replay_buffer": None,
        }
        buffer = getattr(model, "replay_buffer", None)
        if buffer is not None:
            out["replay_buffer"] = {
                "pos": int(buffer.pos),
                "full": bool(buffer.full),
                **{name: torch.from_numpy(getattr(buffer, name)) for name in REPLAY_ARRAYS},
            }
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        model = self.model
        try:
            model.policy.load_state_dict(state["policy"])
            model.policy.optimizer.load_state_dict(state["optimizer"])
            model.num_timesteps = int(state["num_timesteps"])
            model._n_updates = int(state["n_updates"])
            if hasattr(model, "_n_calls"):
                model._n_calls = int(state["n_calls"])
            saved = state["replay_buffer"]
            buffer = getattr(model, "replay_buffer", None)
            if (saved is None) != (buffer is None):
                raise ValueError("the checkpoint's replay buffer does not fit this algorithm")
            if buffer is not None:
                for name in REPLAY_ARRAYS:
                    target = getattr(buffer, name)
                    array = saved[name].numpy()
                    if array.shape != target.shape:
                        raise ValueError(f"replay buffer {name} has shape {array.shape}, this run's has {target.shape}")
                    target[...] = array
                buffer.pos, buffer.full = int(saved["pos"]), bool(saved["full"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"the checkpoint's agent does not match this environment: {err}") from None

    def export(self, run_dir: Path) -> Path:
        """The agent as SB3's own ``agent.zip``, for SB3 clients (``PPO.load``, RL Zoo). DynaLay never
        reads it back: SB3's zip cloudpickles part of its data, so load only zips you trust."""
        buffer = io.BytesIO()
        self.model.save(buffer)
        return atomic_write_bytes(Path(run_dir) / "agent.zip", buffer.getvalue())

    def policy(self) -> Callable[[torch.Tensor], torch.Tensor]:
        model = self.model

        def act(obs: torch.Tensor) -> torch.Tensor:
            actions, _ = model.predict(obs.cpu().numpy(), deterministic=True)
            return torch.as_tensor(actions)

        return act

    def attach_run(self, run_dir: Path) -> None:
        from stable_baselines3.common.logger import configure

        # SB3's own tags (rollout/ep_rew_mean, train/*, time/fps) go into the same run directory
        self.model.set_logger(configure(str(run_dir), ["tensorboard"]))


def _plain(value: Any) -> Any:
    """A library attribute as a JSON value (SB3 stores schedules as callables)."""
    if callable(value):
        try:
            return float(value(1.0))
        except Exception:
            return repr(value)
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)
