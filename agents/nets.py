"""AgentNet (paper 3.3, App. A): observation -> distribution over the L+1 actions.

The REINFORCE agent uses :class:`AgentNet` directly; the stable-baselines3 agents get the same
hidden layers and activation through ``policy_kwargs``, so the comparison across algorithms is
between learning rules, not architectures.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

HIDDEN: tuple[int, ...] = (64, 64)
ACTIVATION = nn.Tanh


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int] = HIDDEN) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), ACTIVATION()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class AgentNet(nn.Module):
    """Logits over {NOP, FPI on layer 1, ..., FPI on layer L}; softmax turns them into the policy."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: Sequence[int] = HIDDEN) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.num_actions = num_actions
        self.net = mlp(obs_dim, num_actions, hidden)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)


def sb3_policy_kwargs(algo: str) -> dict:
    """AgentNet's architecture expressed for SB3's policies."""
    if algo == "dqn":
        return {"net_arch": list(HIDDEN), "activation_fn": ACTIVATION}
    return {"net_arch": {"pi": list(HIDDEN), "vf": list(HIDDEN)}, "activation_fn": ACTIVATION}
