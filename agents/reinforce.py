"""REINFORCE with a learned baseline, entropy bonus and epsilon-greedy exploration (paper App. A).

:class:`ReinforceLearner` is the whole algorithm, top to bottom: settings, the rollout loop, the
update. It runs on the batched environment's torch face (``DynaLayVectorEnv(torch_arrays=True)``):
observations, actions, rewards and episode ends stay on ``device`` and are batched over the N
episodes in flight, with no numpy round trip per step. Rollouts of ``n_steps`` batched steps
are turned into Monte-Carlo returns; steps of episodes still unfinished at the rollout's end wait
in a carry-over buffer until their episode ends, so every gradient uses a complete return.

The policy loss is scaled by the paper's gamma (total loss = CE - gamma * R, Eq. 3); the CE part
belongs to the main model and is optimized inside the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynalay_env import EPISODE_KEYS, DynaLayEngine, DynaLayVectorEnv, EpisodeRecord
from dynalay_env.config import setting
from main_models import save_tensors

from .checkpoint import CheckpointError
from .hooks import Hooks
from .nets import AgentNet, mlp


@dataclass
class ReinforceSettings:
    learning_rate: float = setting(1e-3, "Adam learning rate of the policy and its baseline")
    n_steps: int = setting(16, "update once this many vector steps have finished episodes (each adds its complete episodes)")
    gamma: float = setting(1.0, "RL discount of the Monte-Carlo returns (episodes last at most T steps)")
    ent_coef: float = setting(0.01, "entropy bonus")
    value_coef: float = setting(0.5, "baseline loss weight")
    max_grad_norm: float = setting(0.5, "gradient clipping norm")
    exploration_initial_eps: float = setting(0.2, "initial epsilon of epsilon-greedy exploration")
    exploration_final_eps: float = setting(0.02, "final epsilon")
    exploration_fraction: float = setting(0.3, "share of training over which epsilon decays")


class ReinforceAgent(nn.Module):
    """AgentNet policy plus a state-value baseline of the same shape."""

    def __init__(self, obs_dim: int, num_actions: int, config: ReinforceSettings, reward_weight: float) -> None:
        super().__init__()
        self.config = config
        self.reward_weight = reward_weight
        """The paper's gamma: weight of the reward in the agent's loss (Eq. 3)."""
        self.policy = AgentNet(obs_dim, num_actions)
        self.baseline = mlp(obs_dim, 1)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=config.learning_rate)
        self.num_actions = num_actions

    def epsilon(self, progress: float) -> float:
        c = self.config
        frac = min(1.0, progress / max(c.exploration_fraction, 1e-9))
        return c.exploration_initial_eps + frac * (c.exploration_final_eps - c.exploration_initial_eps)

    @torch.no_grad()
    def act(self, obs: Tensor, epsilon: float, generator: torch.Generator | None = None) -> Tensor:
        """Sample from the policy; with probability epsilon take a uniformly random action instead."""
        logits = self.policy(obs)
        sampled = torch.distributions.Categorical(logits=logits).sample()
        if epsilon > 0:
            explore = torch.rand(obs.shape[0], device=obs.device, generator=generator) < epsilon
            random = torch.randint(self.num_actions, (obs.shape[0],), device=obs.device, generator=generator)
            sampled = torch.where(explore, random, sampled)
        return sampled

    @torch.no_grad()
    def predict(self, obs: Tensor) -> Tensor:
        """The greedy action (evaluation)."""
        return self.policy(obs).argmax(dim=1)

    def update(
        self, obs: Tensor, actions: Tensor, returns: Tensor, average_gradients: Callable[[nn.Module], None] | None = None
    ) -> dict[str, float]:
        """One gradient step on complete-episode samples (obs (n, D), actions (n,), returns (n,)).
        ``average_gradients`` (replicated training) averages the gradients with the other replicas'
        before the step."""
        c = self.config
        logits = self.policy(obs)
        logp_all = F.log_softmax(logits, dim=1)
        logp = logp_all.gather(1, actions.unsqueeze(1)).squeeze(1)
        entropy = -(logp_all.exp() * logp_all).sum(dim=1).mean()
        values = self.baseline(obs).squeeze(1)
        advantage = (returns - values).detach()
        policy_loss = -self.reward_weight * (advantage * logp).mean()
        value_loss = F.mse_loss(values, returns)
        loss = policy_loss + c.value_coef * value_loss - c.ent_coef * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if average_gradients is not None:
            average_gradients(self)
        nn.utils.clip_grad_norm_(self.parameters(), c.max_grad_norm)
        self.optimizer.step()
        return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}


class Replicas(Protocol):
    """The other processes an agent is replicated on (agents/train_distributed.py)."""

    def all_ready(self, ready: bool) -> bool:
        """True on every replica once every replica is ready to update."""

    def average_gradients(self, module: nn.Module) -> None:
        """Replace each gradient of ``module`` by its mean over the replicas."""


class EpisodeBuffer:
    """Per-row buffers of the open episode, (N, T, ...) tensors on device.

    Every step writes one column for all rows at once; when rows finish, their complete episodes
    are emitted with Monte-Carlo returns-to-go and their buffers restart. Episodes last at most T
    steps (the env's budget), so the buffers never overflow.
    """

    def __init__(self, num_envs: int, max_len: int, obs_dim: int, discount: float, device: torch.device) -> None:
        self.discount = discount
        self.max_len = max_len
        self.obs = torch.zeros(num_envs, max_len, obs_dim, device=device)
        self.actions = torch.zeros(num_envs, max_len, dtype=torch.long, device=device)
        self.rewards = torch.zeros(num_envs, max_len, device=device)
        self.length = torch.zeros(num_envs, dtype=torch.long, device=device)
        self._rows = torch.arange(num_envs, device=device)

    def add(self, obs: Tensor, actions: Tensor, rewards: Tensor, dones: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Record one batched step; return (obs, actions, returns) of the steps of finished episodes."""
        if bool((self.length >= self.max_len).any()):
            raise RuntimeError("an episode outlived the step budget the buffer was sized for")
        pos = self.length
        self.obs[self._rows, pos] = obs
        self.actions[self._rows, pos] = actions
        self.rewards[self._rows, pos] = rewards
        self.length = pos + 1
        done_rows = dones.nonzero().squeeze(1)
        if done_rows.numel() == 0:
            return obs[:0], actions[:0], rewards[:0]
        rew = self.rewards[done_rows]
        returns = torch.zeros_like(rew)
        running = torch.zeros_like(rew[:, 0])
        for t in range(self.max_len - 1, -1, -1):
            running = rew[:, t] + self.discount * running
            returns[:, t] = running
        valid = torch.arange(self.max_len, device=rew.device).unsqueeze(0) < self.length[done_rows].unsqueeze(1)
        out = (self.obs[done_rows][valid], self.actions[done_rows][valid], returns[valid])
        self.length[done_rows] = 0
        self.rewards[done_rows] = 0.0
        return out


class ReinforceLearner:
    """REINFORCE on the torch face of ``engine``: act, record, update every ``n_steps``."""

    def __init__(
        self,
        settings: ReinforceSettings,
        engine: DynaLayEngine,
        *,
        reward_weight: float,
        seed: int,
        device: torch.device,
        total_timesteps: int,
        replicas: Replicas | None = None,
    ) -> None:
        self.settings = settings
        self.env = DynaLayVectorEnv(engine=engine, torch_arrays=True)
        obs_dim = self.env.single_observation_space.shape[0]
        self.agent = ReinforceAgent(obs_dim, int(self.env.single_action_space.n), settings, reward_weight).to(device)
        self.buffer = EpisodeBuffer(self.env.num_envs, engine.max_steps, obs_dim, settings.gamma, device)
        self.total = total_timesteps
        self.num_timesteps = 0
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.device = device
        self.replicas = replicas
        """Set when the agent is replicated across processes: they update together, on averaged gradients."""

    def effective_settings(self) -> dict[str, Any]:
        return {name: getattr(self.settings, name) for name in self.settings.__dataclass_fields__}

    def learn(self, steps: int, hooks: Hooks) -> None:
        from tqdm.auto import tqdm

        n = self.env.num_envs
        obs, _ = self.env.reset(seed=self.seed + self.num_timesteps)
        target = self.num_timesteps + steps
        pending: list[tuple[Tensor, Tensor, Tensor]] = []
        bar = tqdm(total=steps, disable=not hooks.progress, unit="step", desc="reinforce")
        while self.num_timesteps < target:
            eps = self.agent.epsilon(self.num_timesteps / max(1, self.total))
            actions = self.agent.act(obs, eps, self.generator)
            next_obs, rewards, terminated, truncated, infos = self.env.step(actions)
            finished = self.buffer.add(obs, actions, rewards, terminated | truncated)
            if finished[0].shape[0]:
                pending.append(finished)
            if "final_info" in infos:
                mask = infos["_final_info"]
                hooks.on_episodes(EpisodeRecord({k: infos["final_info"][k][mask] for k in EPISODE_KEYS}))
            obs = next_obs
            self.num_timesteps += n
            bar.update(n)
            ready = len(pending) >= self.settings.n_steps
            if self.replicas is not None:  # every replica must join the update's all-reduce
                ready = self.replicas.all_ready(ready)
            if ready:
                batch = [torch.cat(parts) for parts in zip(*pending)]
                average = self.replicas.average_gradients if self.replicas is not None else None
                hooks.on_losses(self.agent.update(*batch, average_gradients=average), self.num_timesteps)
                pending.clear()
                hooks.between_updates(self.num_timesteps)
            hooks.after_step(self.num_timesteps)
        bar.close()

    def imitate(self, obs: Tensor, actions: Tensor, *, epochs: int, seed: int) -> float:
        """Fit the policy's logits to ``actions`` by cross-entropy (the baseline is left to RL)."""
        from .imitation import fit_to_actions

        policy = self.agent.policy
        return fit_to_actions(
            policy, policy.parameters(), obs.to(self.device, torch.float32), actions.to(self.device, torch.long), epochs=epochs, seed=seed
        )

    def state(self) -> dict[str, Any]:
        return {
            "agent": self.agent.state_dict(),
            "optimizer": self.agent.optimizer.state_dict(),
            "num_timesteps": self.num_timesteps,
            "generator": self.generator.get_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            self.agent.load_state_dict(state["agent"])
            self.agent.optimizer.load_state_dict(state["optimizer"])
            self.num_timesteps = int(state["num_timesteps"])
            self.generator.set_state(state["generator"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"the checkpoint's agent does not match this environment: {err}") from None

    def export(self, run_dir: Path) -> Path:
        """AgentNet's weights (weights-only), for use outside DynaLay's training scripts."""
        return save_tensors(
            Path(run_dir) / "agent.pt",
            {
                "kind": "dynalay-reinforce-agent",
                "obs_dim": self.agent.policy.obs_dim,
                "num_actions": self.agent.num_actions,
                "policy": self.agent.policy.state_dict(),
            },
        )

    def policy(self) -> Callable[[Tensor], Tensor]:
        agent = self.agent
        return lambda obs: agent.predict(obs.to(self.device))

    def attach_run(self, run_dir: Path) -> None:
        """REINFORCE logs through the shared RunLogger only."""
