"""Evaluation on the test split: a frozen main model, a fixed lambda, each test sample once."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from main_models import DatasetSplits, FPINetwork

from .engine import DynaLayEngine

Policy = Callable[[Tensor], Tensor]
"""Maps observations (n, D) of the running rows to their actions (n,), on the engine's device."""


@dataclass
class EvalReport:
    accuracy: float
    compute: float
    """Mean compute per sample in units of one straightforward pass (the plain path is 1.0)."""
    compute_fraction: float
    """``compute`` over the compute of 'FPI on every layer' (actions 1, 2, ..., L) on the same samples."""
    fpi_all_accuracy: float
    fpi_all_compute: float
    action_frequency: list[float]
    """Share of all actions taken that were NOP, FPI on layer 1, ..., FPI on layer L."""
    mean_episode_length: float
    num_samples: int
    lam: float
    per_difficulty: dict[int, dict[str, float]]
    """Where the dataset has known difficulty levels: accuracy, compute and count per level."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Rollout:
    correct: Tensor
    compute: Tensor
    steps: Tensor
    difficulty: Tensor
    action_counts: Tensor


def _rollout(engine: DynaLayEngine, policy: Policy | Sequence[int], num_samples: int) -> _Rollout:
    """Run each of the first ``num_samples`` eval samples once, ``engine.num_envs`` at a time."""
    L = engine.num_layers
    fixed = None
    if not callable(policy):
        steps = [int(a) for a in policy]
        if any(a < 0 or a > L for a in steps):
            raise ValueError(f"a fixed path holds actions in [0, {L}], got {steps}")
        fixed = torch.tensor(steps + [0] * (engine.max_steps + 1 - len(steps)), dtype=torch.long, device=engine.device)
    correct, compute, lengths, difficulty = [], [], [], []
    action_counts = torch.zeros(L + 1, dtype=torch.long, device=engine.device)
    engine.seed(0)
    remaining = num_samples
    while remaining > 0:
        n = min(remaining, engine.num_envs)
        engine.running.zero_()
        engine.reset(torch.arange(n, device=engine.device))
        remaining -= n
        while True:
            live = engine.running.nonzero().squeeze(1)
            if live.numel() == 0:
                break
            actions = torch.zeros(engine.num_envs, dtype=torch.long, device=engine.device)
            if fixed is not None:
                actions[live] = fixed[engine.steps[live]]
            else:
                actions[live] = policy(engine.obs[live]).to(engine.device, torch.long).reshape(-1)
            engine.validate_actions(actions)
            action_counts += torch.bincount(actions[live], minlength=L + 1)
            out = engine.step(actions, validate=False)
            fin = out.finished
            correct.append(fin["correct"])
            compute.append(fin["compute"])
            lengths.append(fin["steps"])
            difficulty.append(fin["difficulty"])
    return _Rollout(torch.cat(correct), torch.cat(compute), torch.cat(lengths), torch.cat(difficulty), action_counts)


def _per_difficulty(rollout: _Rollout) -> dict[int, dict[str, float]]:
    levels = torch.unique(rollout.difficulty).tolist()
    if levels == [-1]:
        return {}
    table = {}
    for level in levels:
        mask = rollout.difficulty == level
        table[int(level)] = {
            "accuracy": float(rollout.correct[mask].float().mean()),
            "compute": float(rollout.compute[mask].mean()),
            "count": int(mask.sum()),
        }
    return table


def evaluate_policy(
    model: FPINetwork,
    splits: DatasetSplits,
    policy: Policy | Sequence[int],
    *,
    lam: float = 1.0,
    alpha: float = 0.5,
    beta: float = 0.3,
    max_steps: int | None = None,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> EvalReport:
    """Evaluate ``policy`` (a callable on observations, or a fixed action path such as [1, 2, 3])
    on every test sample once, with the main model frozen."""
    was_training = model.training
    engine = DynaLayEngine(
        min(batch_size, int(splits.y_test.shape[0])),
        dataset=splits,
        model=model,
        lam=lam,
        alpha=alpha,
        beta=beta,
        max_steps=max_steps,
        mode="eval",
        autoreset=False,
        device=device,
    )
    try:
        n = engine.num_samples
        result = _rollout(engine, policy, n)
        reference = _rollout(engine, list(range(1, engine.num_layers + 1)), n)
    finally:
        model.train(was_training)
    fpi_all_compute = float(reference.compute.mean())
    mean_compute = float(result.compute.mean())
    counts = result.action_counts.double()
    return EvalReport(
        accuracy=float(result.correct.float().mean()),
        compute=mean_compute,
        compute_fraction=mean_compute / fpi_all_compute,
        fpi_all_accuracy=float(reference.correct.float().mean()),
        fpi_all_compute=fpi_all_compute,
        action_frequency=(counts / counts.sum()).tolist(),
        mean_episode_length=float(result.steps.float().mean()),
        num_samples=n,
        lam=lam,
        per_difficulty=_per_difficulty(result),
    )
