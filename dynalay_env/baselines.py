"""Exit rules without learning: the standard early-exit baselines an agent has to beat.

Each rule is a policy on observations (it reads the columns it needs through the
:class:`ObservationLayout`), so it runs through the same evaluation, cost model and engine as an
agent, on the same frozen main model:

* confidence threshold: answer when the head's largest probability reaches tau, else iterate the
  next layer in a fixed order (1, 2, ..., L by default, or any other; then answer);
* residual threshold: answer when every layer's fixed-point residual is below tau, else iterate the
  first layer (in that order) whose residual is not; it needs the ``residuals`` observation group,
  whose probe it pays for.

Sweeping tau traces each rule's accuracy/compute curve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from main_models import DatasetSplits, FPINetwork

from .config import RewardConfig, default_max_steps
from .engine import ObservationLayout
from .evaluation import EvalReport, _eval_engine, drive, evaluate_policy

Policy = Callable[[Tensor], Tensor]
DEFAULT_TAUS: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
DEFAULT_RESIDUAL_TAUS: tuple[float, ...] = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.001)


def confidence_threshold(layout: ObservationLayout, max_steps: int, tau: float, order: Sequence[int] | None = None) -> Policy:
    """Answer when confidence >= tau; otherwise FPI on the next layer of ``order`` (default 1..L)."""
    order_t = torch.tensor(list(order) if order is not None else range(1, layout.num_layers + 1), dtype=torch.long)

    def act(obs: Tensor) -> Tensor:
        step = torch.round(obs[:, layout.step_fraction] * max_steps).long()
        order_d = order_t.to(obs.device)
        nxt = order_d[step.clamp(max=order_d.numel() - 1)] if order_d.numel() else torch.zeros_like(step)
        stop = (obs[:, layout.confidence] >= tau) | (step >= order_d.numel())
        return torch.where(stop, torch.zeros_like(nxt), nxt)

    return act


def residual_threshold(layout: ObservationLayout, tau: float) -> Policy:
    """Answer when every layer's residual < tau; otherwise FPI on the first layer whose residual is not."""
    layout.residuals  # noqa: B018  (raises KeyError when the observation has no residuals)

    def act(obs: Tensor) -> Tensor:
        high = obs[:, layout.residuals] >= tau
        first = high.float().argmax(dim=1) + 1
        return torch.where(high.any(dim=1), first, torch.zeros_like(first))

    return act


@dataclass
class CurvePoint:
    tau: float
    accuracy: float
    compute: float
    compute_fraction: float
    """Compute over FPI on every layer's, on the same samples."""


def sweep(
    rule: str,
    model: FPINetwork,
    splits: DatasetSplits,
    *,
    taus: Sequence[float] | None = None,
    max_steps: int | None = None,
    observation: Sequence[str],
    reward: RewardConfig = RewardConfig(),
    device: str | torch.device = "cpu",
    reference: EvalReport | None = None,
    order: Sequence[int] | None = None,
) -> list[dict]:
    """Evaluate exit rule ``rule`` ("confidence" or "residual") at each tau on the test split
    (``reference``: FPI on every layer's report on the same samples, see :func:`evaluate_policy`).
    ``order``: the confidence rule's layer order (default 1..L); each point records it."""
    T = max_steps if max_steps is not None else default_max_steps(model.num_layers)
    layout = ObservationLayout(model.num_layers, model.summary_dim, tuple(observation))
    order = list(order) if order is not None else list(range(1, model.num_layers + 1))
    if rule == "confidence":
        make = lambda tau: confidence_threshold(layout, T, tau, order)  # noqa: E731
        taus = DEFAULT_TAUS if taus is None else taus
    elif rule == "residual":
        make = lambda tau: residual_threshold(layout, tau)  # noqa: E731
        taus = DEFAULT_RESIDUAL_TAUS if taus is None else taus
    else:
        raise ValueError(f"rule must be 'confidence' or 'residual', got {rule!r}")
    if rule == "confidence" and len(order) <= T:
        return _confidence_sweep(model, splits, taus, order, T, reward, device, reference)
    points = []
    for tau in taus:
        report = evaluate_policy(
            model, splits, make(tau), reward=reward, max_steps=T, observation=layout.groups, device=device, reference=reference
        )
        point = asdict(CurvePoint(float(tau), report.accuracy, report.compute, report.compute_fraction))
        points.append({**point, "order": order} if rule == "confidence" else point)
    return points


@torch.no_grad()
def _confidence_sweep(
    model: FPINetwork,
    splits: DatasetSplits,
    taus: Sequence[float],
    order: list[int],
    max_steps: int,
    reward: RewardConfig,
    device: str | torch.device,
    reference: EvalReport | None,
) -> list[dict]:
    """The confidence rule at every tau from one rollout: under the rule a sample follows ``order``
    and answers at the first step whose confidence reaches tau (or after the last layer), so one
    rollout along the whole order, recording each step's confidence, correctness and compute so
    far, gives every tau's episodes exactly as the rule would run them. The rule reads only the
    confidence and the step, so it is charged for nothing else."""
    L = len(order)
    engine = _eval_engine(
        model,
        splits,
        reward=reward,
        max_steps=max_steps,
        observation=("progress", "confidence"),
        batch_size=int(splits.y_test.shape[0]),
        device=device,
    )
    n = engine.num_samples
    then = torch.tensor(order + [0], dtype=torch.long, device=engine.device)  # NOP after the last layer
    confidence = torch.zeros(n, L + 1, device=engine.device)
    correct = torch.zeros(n, L + 1, dtype=torch.bool, device=engine.device)
    compute = torch.zeros(n, L + 1, device=engine.device)

    def follow(live: Tensor) -> Tensor:
        sample, t = engine.sample[live], engine.steps[live]
        confidence[sample, t] = engine.confidence[live]
        correct[sample, t] = engine.prediction[live] == engine.label[live]
        compute[sample, t] = engine.ep_compute[live]
        return then[t]

    was_training = model.training
    try:
        for _ in drive(engine, n, follow):
            pass
    finally:
        model.train(was_training)
    if reference is None:
        reference = evaluate_policy(model, splits, list(range(1, model.num_layers + 1)), reward=reward, max_steps=max_steps, device=device)
    rows = torch.arange(n, device=engine.device)
    points = []
    for tau in taus:
        reached = confidence[:, :L] >= tau
        stop = torch.where(reached.any(dim=1), reached.float().argmax(dim=1), torch.full_like(rows, L))
        mean_compute = float(compute[rows, stop].mean())
        point = CurvePoint(float(tau), float(correct[rows, stop].float().mean()), mean_compute, mean_compute / reference.fpi_all_compute)
        points.append({**asdict(point), "order": list(order)})
    return points


def compute_at_accuracy(points: Sequence[dict], accuracy: float) -> float | None:
    """The least compute fraction at which a curve reaches ``accuracy`` (None if it never does)."""
    reached = [p["compute_fraction"] for p in points if p["accuracy"] >= accuracy]
    return min(reached) if reached else None


def accuracy_at_compute(points: Sequence[dict], compute_fraction: float) -> float:
    """A curve's accuracy at ``compute_fraction``, interpolated linearly between its points along
    the upper envelope (the best accuracy reachable at or below each compute)."""
    pts = sorted((p["compute_fraction"], p["accuracy"]) for p in points)
    envelope: list[tuple[float, float]] = []
    for c, a in pts:
        if not envelope or a > envelope[-1][1]:
            envelope.append((c, a))
    if compute_fraction <= envelope[0][0]:
        return envelope[0][1] if compute_fraction == envelope[0][0] else float("nan")
    for (c0, a0), (c1, a1) in zip(envelope, envelope[1:]):
        if c0 <= compute_fraction <= c1:
            return a0 + (a1 - a0) * (compute_fraction - c0) / (c1 - c0)
    return envelope[-1][1]


def rule_orders(num_layers: int, cheapest_accurate_path: Sequence[int] | None) -> list[list[int]]:
    """The layer orders a tuned confidence rule is swept over: bottom-up (1..L) and, where it
    differs, the order of the cheapest fixed path that is as accurate as FPI on every layer,
    followed by the layers it leaves out. The rule so tries its best fixed path first and stops
    as soon as it is confident."""
    orders = [list(range(1, num_layers + 1))]
    if cheapest_accurate_path:
        tuned = list(cheapest_accurate_path) + [j for j in range(1, num_layers + 1) if j not in cheapest_accurate_path]
        if tuned not in orders:
            orders.append(tuned)
    return orders
