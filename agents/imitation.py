"""The learnable ceiling: a policy trained by supervised imitation of the oracle's action sequences.

The oracle (``dynalay_env.oracle_paths``) knows each sample's label and picks the cheapest sequence
that answers it. Imitating it from the *observations* alone, on the train split, and evaluating on
the test split, measures how much of the oracle's saving the observation makes learnable:

* a high ceiling with weak RL agents says the learning is the limit;
* a low ceiling says the observation (or the task) is.

The demonstrations are the oracle's sequences rolled out in an engine, so every (observation,
action) pair is exactly what an agent following that sequence would see; the policy is an AgentNet
trained with cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dynalay_env import DynaLayEngine, EvalReport, RewardConfig, evaluate_policy, oracle_paths
from dynalay_env.evaluation import drive
from main_models import DatasetSplits, FPINetwork

from .nets import AgentNet


@dataclass
class Demonstrations:
    obs: Tensor
    """(M, D) observations at every step of every demonstrated episode."""
    actions: Tensor
    """(M,) the oracle's action there (0 = NOP at the end)."""
    episodes: int


@torch.no_grad()
def demonstrations(
    model: FPINetwork,
    x: Tensor,
    y: Tensor,
    *,
    max_steps: int,
    observation: Sequence[str],
    reward: RewardConfig,
    min_confidence: float = 0.9,
    batch_size: int = 1024,
) -> Demonstrations:
    """Roll the oracle's sequence for every sample of (x, y) out in an engine and record each step.

    The sequence is the cheapest that answers with the true class at ``min_confidence`` or more;
    where none does, the cheapest that answers at all; where none does either, the plain path."""
    # where no sequence reaches min_confidence, the cheapest correct one still beats answering wrong
    confident = oracle_paths(model, x, y, max_steps=max_steps, min_confidence=min_confidence)
    correct = oracle_paths(model, x, y, max_steps=max_steps) if min_confidence > 0 else confident
    chosen = torch.where(confident.solved.unsqueeze(1), confident.paths, correct.paths)
    paths = torch.cat([chosen, torch.zeros(chosen.shape[0], 1, dtype=torch.long, device=chosen.device)], dim=1)
    part = DatasetSplits("demonstrations", x, y, x, y, int(y.max()) + 1 if y.numel() else 1)
    engine = DynaLayEngine(min(batch_size, int(y.shape[0])), part, model, reward=reward.fixed(reward.lam), max_steps=max_steps,
                           mode="eval", autoreset=False, observation=tuple(observation), device=y.device)
    obs_parts, action_parts = [], []

    def follow(live: Tensor) -> Tensor:
        actions = paths[engine.sample[live], engine.steps[live]]
        obs_parts.append(engine.obs[live].clone())
        action_parts.append(actions)
        return actions

    try:
        for _ in drive(engine, int(y.shape[0]), follow):
            pass
    finally:
        model.train()
    return Demonstrations(torch.cat(obs_parts), torch.cat(action_parts), int(y.shape[0]))


def train_imitation(demos: Demonstrations, num_actions: int, *, epochs: int = 30, batch_size: int = 256, lr: float = 1e-3,
                    seed: int = 0) -> AgentNet:
    """AgentNet fitted to the demonstrations with cross-entropy (classes weighted equally per
    sample, as they come)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = AgentNet(demos.obs.shape[1], num_actions)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    obs, actions = demos.obs.cpu(), demos.actions.cpu()
    for _ in range(epochs):
        order = torch.randperm(obs.shape[0], generator=generator)
        for start in range(0, obs.shape[0], batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(net(obs[index]), actions[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


@dataclass
class Ceiling:
    report: EvalReport
    """The imitation policy on the test split."""
    demonstrations: int
    """Demonstrated (observation, action) pairs from the train split."""
    train_action_accuracy: float
    """How often the fitted policy picks the oracle's action on its own demonstrations."""


def learnable_ceiling(
    model: FPINetwork,
    splits: DatasetSplits,
    *,
    max_steps: int,
    observation: Sequence[str],
    reward: RewardConfig = RewardConfig(),
    min_confidence: float = 0.9,
    train_limit: int | None = None,
    epochs: int = 30,
    seed: int = 0,
) -> Ceiling:
    """Imitate the oracle on (up to ``train_limit`` samples of) the train split; evaluate on test."""
    x, y = splits.x_train, splits.y_train
    if train_limit is not None:
        x, y = x[:train_limit], y[:train_limit]
    demos = demonstrations(model, x, y, max_steps=max_steps, observation=observation, reward=reward, min_confidence=min_confidence)
    net = train_imitation(demos, model.num_layers + 1, epochs=epochs, seed=seed)
    with torch.no_grad():
        agreement = float((net(demos.obs.cpu()).argmax(1) == demos.actions.cpu()).float().mean())
    device = splits.y_test.device

    def policy(obs: Tensor) -> Tensor:
        with torch.no_grad():
            return net(obs.cpu()).argmax(1).to(device)

    report = evaluate_policy(model, splits, policy, reward=reward.fixed(reward.lam), max_steps=max_steps, observation=observation,
                             device=device, timing_repeats=1)
    return Ceiling(report, int(demos.obs.shape[0]), agreement)
