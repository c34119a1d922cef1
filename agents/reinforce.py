"""REINFORCE with a learned baseline, entropy bonus and epsilon-greedy exploration (paper App. A).

It runs on the batched environment's torch face (``DynaLayVectorEnv(torch_arrays=True)``):
observations, actions, rewards and episode ends stay on ``device`` and are batched over the N
episodes in flight, with no numpy round trip per step. Rollouts of ``n_steps`` batched steps
are turned into Monte-Carlo returns; steps of episodes still unfinished at the rollout's end wait
in a carry-over buffer until their episode ends, so every gradient uses a complete return.

The policy loss is scaled by the paper's gamma (total loss = CE - gamma * R, Eq. 3); the CE part
belongs to the main model and is optimized inside the environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nets import AgentNet, mlp


@dataclass
class ReinforceConfig:
    learning_rate: float = 1e-3
    n_steps: int = 16
    discount: float = 1.0
    reward_weight: float = 0.2
    """The paper's gamma."""
    ent_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    exploration_initial_eps: float = 0.2
    exploration_final_eps: float = 0.02
    exploration_fraction: float = 0.3


class ReinforceAgent(nn.Module):
    """AgentNet policy plus a state-value baseline of the same shape."""

    def __init__(self, obs_dim: int, num_actions: int, config: ReinforceConfig) -> None:
        super().__init__()
        self.config = config
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

    def update(self, obs: Tensor, actions: Tensor, returns: Tensor) -> dict[str, float]:
        """One gradient step on complete-episode samples (obs (n, D), actions (n,), returns (n,))."""
        c = self.config
        logits = self.policy(obs)
        logp_all = F.log_softmax(logits, dim=1)
        logp = logp_all.gather(1, actions.unsqueeze(1)).squeeze(1)
        entropy = -(logp_all.exp() * logp_all).sum(dim=1).mean()
        values = self.baseline(obs).squeeze(1)
        advantage = (returns - values).detach()
        policy_loss = -c.reward_weight * (advantage * logp).mean()
        value_loss = F.mse_loss(values, returns)
        loss = policy_loss + c.value_coef * value_loss - c.ent_coef * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.parameters(), c.max_grad_norm)
        self.optimizer.step()
        return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}


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
