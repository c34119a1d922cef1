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

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    max_depth: int | None = None,
) -> Demonstrations:
    """Roll the oracle's sequence for every sample of (x, y) out in an engine and record each step
    (each episode's lambda drawn as ``reward`` draws it).

    The sequence is the cheapest that answers with the true class at ``min_confidence`` or more;
    where none does, the cheapest that answers at all; where none does either, the plain path. An
    episode whose lambda makes the sequence cost more than a right answer earns (``alpha <= beta *
    lambda * (compute - 1)``, compute in plain passes) answers at once instead: so demonstrations
    drawn across a lambda range teach a lambda-conditioned agent the trade-off.
    Sequences of up to ``max_depth`` FPI steps are searched (default L, the number of layers:
    every layer once; the search's cost grows as L^depth for samples that no sequence answers)."""
    # where no sequence reaches min_confidence, the cheapest correct one still beats answering wrong
    found = oracle_paths(
        model,
        x,
        y,
        max_steps=max_steps,
        min_confidence=min_confidence,
        fallback=True,
        max_depth=model.num_layers if max_depth is None else max_depth,
    )
    cost = found.cost
    paths = torch.cat([found.paths, torch.zeros(found.paths.shape[0], 1, dtype=torch.long, device=found.paths.device)], dim=1)
    part = DatasetSplits("demonstrations", x, y, x, y, int(y.max()) + 1 if y.numel() else 1)
    engine = DynaLayEngine(
        min(batch_size, int(y.shape[0])),
        part,
        model,
        reward=reward,
        max_steps=max_steps,
        mode="eval",
        autoreset=False,
        observation=tuple(observation),
        device=y.device,
    )
    obs_parts, action_parts = [], []

    def follow(live: Tensor) -> Tensor:
        sample = engine.sample[live]
        # a sequence is worth its steps at this episode's lambda only if a right answer (alpha) pays
        # for them (Eq. 2, consecutive-layer factor aside); else the demonstration answers at once
        worth = reward.alpha > reward.beta * engine.lam_row[live] * (cost[sample] - 1)
        actions = torch.where(worth, paths[sample, engine.steps[live]], 0)
        obs_parts.append(engine.obs[live].clone())
        action_parts.append(actions)
        return actions

    try:
        for _ in drive(engine, int(y.shape[0]), follow):
            pass
    finally:
        model.train()
    return Demonstrations(torch.cat(obs_parts), torch.cat(action_parts), int(y.shape[0]))


Loss = str
"""How actions are fitted: "cross-entropy" on a policy's logits, or "margin" on a Q-network's values
(DQfD's large-margin loss: the demonstrated action's value must exceed every other by ``margin``)."""


def fit_to_actions(
    scores: Callable[[Tensor], Tensor],
    parameters: Iterable[nn.Parameter],
    obs: Tensor,
    actions: Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    loss: Loss = "cross-entropy",
    margin: float = 0.8,
) -> float:
    """Fit ``scores(obs)`` (logits or Q-values, (n, A)) to pick ``actions`` by minibatch Adam over
    ``parameters``; returns the share of ``obs`` on which the argmax is the demonstrated action."""
    if loss not in ("cross-entropy", "margin"):
        raise ValueError(f"loss must be 'cross-entropy' or 'margin', got {loss!r}")
    generator = torch.Generator().manual_seed(seed)
    parameters = list(parameters)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(obs.shape[0], generator=generator).to(obs.device)
            for start in range(0, obs.shape[0], batch_size):
                index = order[start : start + batch_size]
                out, target = scores(obs[index]), actions[index]
                if loss == "cross-entropy":
                    value = F.cross_entropy(out, target)
                else:
                    penalty = torch.full_like(out, margin).scatter_(1, target.unsqueeze(1), 0.0)
                    value = ((out + penalty).max(dim=1).values - out.gather(1, target.unsqueeze(1)).squeeze(1)).mean()
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
    with torch.no_grad():
        return float((scores(obs).argmax(1) == actions).float().mean())


def train_imitation(
    demos: Demonstrations, num_actions: int, *, epochs: int = 30, batch_size: int = 256, lr: float = 1e-3, seed: int = 0
) -> AgentNet:
    """AgentNet fitted to the demonstrations with cross-entropy (classes weighted equally per
    sample, as they come)."""
    torch.manual_seed(seed)
    net = AgentNet(demos.obs.shape[1], num_actions)
    fit_to_actions(net, net.parameters(), demos.obs.cpu(), demos.actions.cpu(), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    return net.eval()


@dataclass
class WarmStart:
    """What an imitation warm-start did, for the run's log and eval.json."""

    samples: int
    """Train samples whose oracle sequences were demonstrated."""
    demonstrations: int
    """(observation, action) pairs fitted."""
    agreement: float
    """Share of those pairs on which the agent's greedy action is the oracle's after fitting."""
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def imitation_warm_start(
    engine: DynaLayEngine, agent: "Imitable", *, samples: int, epochs: int, seed: int, min_confidence: float = 0.9
) -> WarmStart:
    """Start ``agent`` from the learnable ceiling's policy: roll the oracle's sequences for the first
    ``samples`` train samples out on the engine's current main model (the warmed-up one), then fit
    the agent's own policy to them (:meth:`Imitable.imitate`). RL then improves on it, against the
    real reward and the co-trained model. Episodes are drawn at the engine's lambda distribution,
    so a lambda-conditioned agent sees the lambdas it will be trained on."""
    if samples < 1 or epochs < 1:
        raise ValueError(f"imitation needs samples >= 1 and epochs >= 1, got {samples} and {epochs}")
    start = time.perf_counter()
    x, y = engine.splits.x_train[:samples], engine.splits.y_train[:samples]
    demos = demonstrations(
        engine.model,
        x,
        y,
        max_steps=engine.max_steps,
        observation=engine.layout.groups,
        reward=engine.reward,
        min_confidence=min_confidence,
    )
    agreement = agent.imitate(demos.obs, demos.actions, epochs=epochs, seed=seed)
    return WarmStart(int(y.shape[0]), int(demos.obs.shape[0]), agreement, time.perf_counter() - start)


class Imitable(Protocol):
    def imitate(self, obs: Tensor, actions: Tensor, *, epochs: int, seed: int) -> float:
        """Fit the agent's policy to pick ``actions`` at ``obs``; the agreement reached."""


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
    reference: EvalReport | None = None,
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

    report = evaluate_policy(
        model,
        splits,
        policy,
        reward=reward.fixed(reward.lam),
        max_steps=max_steps,
        observation=observation,
        device=device,
        reference=reference,
    )
    return Ceiling(report, int(demos.obs.shape[0]), agreement)
