"""An agent against everything that needs no learning, on the same frozen main model.

The yardsticks an agent must beat, each evaluated with the same engine, cost model and test split as the agent:

* every fixed path (each increasing sequence of layers, "NOP" to "L1,L2,L3");
* the exit rules of :mod:`dynalay_env.baselines` swept over tau (confidence; residual);
* the oracle (the cheapest sequence that answers each test sample, knowing its label);
* the learnable ceiling (:mod:`agents.imitation`): the oracle imitated from the agent's own
  observation, train split in, test split out.

From these, :func:`compare_to_baselines` derives the *headroom* of the task on this model (the
compute of the cheapest fixed path that reaches FPI-on-every-layer's accuracy minus 0.5 points,
over the ceiling's compute) and checks the agent against the decision targets. The reference accuracy
is FPI on every layer *of the same co-trained model* (Model 3's path), so that every number in the
comparison comes from one network.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from dynalay_env import EvalReport, RewardConfig, evaluate_fixed_policies, evaluate_policy, oracle, sequence_name
from dynalay_env.baselines import accuracy_at_compute, compute_at_accuracy, rule_orders, sweep
from main_models import DatasetSplits, FPINetwork

from .imitation import learnable_ceiling

TOLERANCE = 0.005
"""Half a point: 'reaches Model 3's accuracy' means within this of FPI on every layer."""
CONFIDENCE_RULE_OBSERVATION = ("progress", "confidence")
"""What the confidence rule reads. Nothing more: an observation group with a cost (the residuals'
probe) would be charged to the rule."""
RESIDUAL_RULE_OBSERVATION = ("progress", "confidence", "residuals")
"""What the residual rule reads; it pays for the residuals' probe."""


def increasing_paths(num_layers: int) -> list[list[int]]:
    """Every fixed path that iterates each layer at most once, bottom up: [], [1], [2], [1, 2], ..."""
    layers = range(1, num_layers + 1)
    return [list(c) for k in range(num_layers + 1) for c in itertools.combinations(layers, k)]


def decision_targets(
    accuracy: float,
    compute: float,
    *,
    fpi_all_accuracy: float,
    cheapest_fixed: float,
    ceiling_compute: float,
    confidence_at_agent: float | None,
) -> dict[str, bool]:
    """The checks of an agent on a task where decisions should pay: FPI-on-every-layer's
    accuracy (within :data:`TOLERANCE`) at <= 0.6x the cheapest fixed path as accurate and
    <= 1.25x the learnable ceiling, and above the confidence rule's curve at equal compute
    (vacuously true where the curve does not reach down to the agent's compute)."""
    above = confidence_at_agent is None or confidence_at_agent != confidence_at_agent or accuracy > confidence_at_agent
    return {
        "accuracy_within_0.5_points_of_fpi_all": accuracy >= fpi_all_accuracy - TOLERANCE,
        "compute_at_most_0.6_of_cheapest_fixed_path": compute <= 0.6 * cheapest_fixed,
        "compute_at_most_1.25_of_ceiling": compute <= 1.25 * ceiling_compute,
        "above_confidence_curve": bool(above),
    }


def fixed_path_reports(
    model: FPINetwork,
    splits: DatasetSplits,
    reference: EvalReport | None,
    *,
    reward: RewardConfig,
    max_steps: int,
    device: str | torch.device = "cpu",
) -> dict[str, EvalReport]:
    """Every increasing fixed path's (:func:`increasing_paths`) report on the test split, by name,
    from one pass that computes shared prefixes once. ``reference`` is FPI on every layer's report,
    reused for that path; ``None`` evaluates it in the same pass."""
    every_layer = list(range(1, model.num_layers + 1))
    paths = increasing_paths(model.num_layers)
    reused = reference is not None
    todo = [p for p in paths if not (reused and p == every_layer)]
    evaluated = iter(evaluate_fixed_policies(model, splits, todo, reward=reward, max_steps=max_steps, device=device, reference=reference))
    return {sequence_name(p): reference if reused and p == every_layer else next(evaluated) for p in paths}


def fixed_path_points(
    model: FPINetwork,
    splits: DatasetSplits,
    reference: EvalReport | None,
    *,
    reward: RewardConfig,
    max_steps: int,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, Any]]:
    """:func:`fixed_path_reports` as points (accuracy, compute fraction, per level), each with its ``path``."""
    return _points(fixed_path_reports(model, splits, reference, reward=reward, max_steps=max_steps, device=device), model.num_layers)


def _points(reports: dict[str, EvalReport], num_layers: int) -> dict[str, dict[str, Any]]:
    paths = {sequence_name(p): p for p in increasing_paths(num_layers)}
    return {name: {**_point(report), "path": paths[name]} for name, report in reports.items()}


def tuned_confidence_curve(
    model: FPINetwork,
    splits: DatasetSplits,
    fixed: dict[str, dict[str, Any]],
    reference: EvalReport,
    *,
    reward: RewardConfig,
    max_steps: int,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """The confidence rule swept over tau for each of :func:`rule_orders`: bottom-up, and the order
    of the cheapest fixed path within :data:`TOLERANCE` of FPI on every layer. Its upper envelope
    is the rule an agent is compared with."""
    goal = reference.fpi_all_accuracy - TOLERANCE
    reaching = [p for p in fixed.values() if p["accuracy"] >= goal]
    cheapest = min(reaching, key=lambda p: p["compute_fraction"])["path"] if reaching else None
    on_the_test_split = {"reward": reward, "max_steps": max_steps, "device": device, "reference": reference}
    return [
        point
        for order in rule_orders(model.num_layers, cheapest)
        for point in sweep("confidence", model, splits, observation=CONFIDENCE_RULE_OBSERVATION, order=order, **on_the_test_split)
    ]


def _point(report) -> dict[str, float]:
    return {
        "accuracy": report.accuracy,
        "compute_fraction": report.compute_fraction,
        "per_difficulty": {str(k): v for k, v in report.per_difficulty.items()},
    }


def compare_to_baselines(
    model: FPINetwork,
    splits: DatasetSplits,
    policy: Callable[[Tensor], Tensor],
    *,
    reward: RewardConfig,
    max_steps: int,
    observation: Sequence[str],
    device: str | torch.device = "cpu",
    ceiling_train_limit: int | None = 4000,
    ceiling_min_confidence: float = 0.9,
    test_limit: int | None = None,
    seed: int = 0,
    residual_rule: bool = True,
) -> dict[str, Any]:
    """The agent (``policy``, reading ``observation``) and every baseline at ``reward.lam``, with
    the derived headroom and target checks (see the module docstring); all on the first
    ``test_limit`` test samples when it is given (the oracle's exact search is dear on long
    sequences)."""
    if test_limit is not None:
        splits = splits.head(None, test_limit)
    every_layer = list(range(1, model.num_layers + 1))
    ref = evaluate_policy(model, splits, every_layer, reward=reward, max_steps=max_steps, observation=observation, device=device)
    agent = evaluate_policy(
        model, splits, policy, reward=reward, max_steps=max_steps, observation=observation, device=device, reference=ref
    )
    fixed = fixed_path_points(model, splits, ref, reward=reward, max_steps=max_steps, device=device)
    on_the_test_split = {"reward": reward, "max_steps": max_steps, "device": device, "reference": ref}
    confidence = tuned_confidence_curve(model, splits, fixed, ref, reward=reward, max_steps=max_steps, device=device)
    residual = sweep("residual", model, splits, observation=RESIDUAL_RULE_OBSERVATION, **on_the_test_split) if residual_rule else []
    best = oracle(model, splits, max_steps=max_steps, device=device, reference=ref)
    # the imitation of the oracle reads what the agent reads, and is trained on the same seed
    imitation = {"observation": observation, "min_confidence": ceiling_min_confidence, "train_limit": ceiling_train_limit, "seed": seed}
    ceiling = learnable_ceiling(model, splits, max_steps=max_steps, reward=reward, reference=ref, **imitation)

    reference = fixed[sequence_name(range(1, model.num_layers + 1))]["accuracy"]
    goal = reference - TOLERANCE
    reaching = {name: p["compute_fraction"] for name, p in fixed.items() if p["accuracy"] >= goal}
    cheapest_name = min(reaching, key=reaching.get)
    cheapest = reaching[cheapest_name]
    ceil = ceiling.report
    headroom = cheapest / ceil.compute_fraction
    conf_at_agent = accuracy_at_compute(confidence, agent.compute_fraction)
    targets = decision_targets(
        agent.accuracy,
        agent.compute_fraction,
        fpi_all_accuracy=reference,
        cheapest_fixed=cheapest,
        ceiling_compute=ceil.compute_fraction,
        confidence_at_agent=conf_at_agent,
    )
    targets["all"] = all(targets.values())
    return {
        "lam": reward.lam,
        "agent": agent.as_dict(),
        "fixed_paths": fixed,
        "fpi_all_accuracy": reference,
        "cheapest_fixed_path_at_fpi_all_accuracy": {"path": cheapest_name, "compute_fraction": cheapest},
        "confidence_curve": confidence,
        "confidence_compute_at_fpi_all_accuracy": compute_at_accuracy(confidence, goal),
        "confidence_accuracy_at_agent_compute": conf_at_agent,
        "residual_curve": residual,
        "oracle": best.as_dict(),
        "ceiling": {
            "report": ceil.as_dict(),
            "demonstrations": ceiling.demonstrations,
            "train_action_accuracy": ceiling.train_action_accuracy,
            "min_confidence": ceiling_min_confidence,
            "train_limit": ceiling_train_limit,
        },
        "headroom": headroom,
        "ceiling_reaches_fpi_all_accuracy": ceil.accuracy >= goal,
        "test_samples": int(splits.y_test.shape[0]),
        "agent_gap_to_ceiling": {
            "accuracy": agent.accuracy - ceil.accuracy,
            "compute_fraction": agent.compute_fraction - ceil.compute_fraction,
        },
        "agent_gap_to_oracle": {
            "accuracy": agent.accuracy - best.accuracy,
            "compute_fraction": agent.compute_fraction - best.compute_fraction,
        },
        "targets": targets,
    }


def comparison_table(result: dict[str, Any]) -> str:
    """The comparison as aligned text lines."""
    rows = [("agent", result["agent"]["accuracy"], result["agent"]["compute_fraction"])]
    rows += [(f"fixed {name}", p["accuracy"], p["compute_fraction"]) for name, p in result["fixed_paths"].items()]
    rows += [
        (f"confidence tau {p['tau']:g} ({','.join(f'L{j}' for j in p['order'])})", p["accuracy"], p["compute_fraction"])
        for p in result["confidence_curve"]
    ]
    rows += [(f"residual tau {p['tau']:g}", p["accuracy"], p["compute_fraction"]) for p in result["residual_curve"]]
    rows += [
        ("learnable ceiling", result["ceiling"]["report"]["accuracy"], result["ceiling"]["report"]["compute_fraction"]),
        ("oracle (knows the label)", result["oracle"]["accuracy"], result["oracle"]["compute_fraction"]),
    ]
    lines = [f"at lambda {result['lam']:g}: {'method':>24} | accuracy | compute (fraction of FPI on every layer)"]
    lines += [f"{'':>{len(str(result['lam'])) + 14}}{name:>24} | {acc:.4f}   | {comp:.3f}" for name, acc, comp in rows]
    cheapest = result["cheapest_fixed_path_at_fpi_all_accuracy"]
    headroom = f"{result['headroom']:.2f}" + (
        "" if result["ceiling_reaches_fpi_all_accuracy"] else " (the ceiling itself is below that accuracy)"
    )
    lines.append(
        f"cheapest fixed path within 0.5 points of FPI on every layer ({result['fpi_all_accuracy']:.4f}): "
        f"{cheapest['path']} at {cheapest['compute_fraction']:.3f}; headroom {headroom}"
    )
    lines.append("targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["targets"].items()))
    return "\n".join(lines)


def simple_baselines(
    model: FPINetwork,
    splits: DatasetSplits,
    agent: EvalReport,
    *,
    reward: RewardConfig,
    max_steps: int,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """What a training run prints beside its agent (``agent``, its test report): FPI on every
    layer, the plain path, the cheapest fixed path within :data:`TOLERANCE` of the agent's
    accuracy, and the confidence rule's cheapest tau as accurate, on the same frozen model. No
    oracle or ceiling: ``evaluate.py RUN --baselines`` adds those."""
    every_layer = list(range(1, model.num_layers + 1))
    reports = fixed_path_reports(model, splits, None, reward=reward, max_steps=max_steps, device=device)
    ref = reports[sequence_name(every_layer)]
    goal = agent.accuracy - TOLERANCE
    fixed = _points(reports, model.num_layers)
    reaching = {name: p for name, p in fixed.items() if p["accuracy"] >= goal}
    cheapest = min(reaching, key=lambda name: reaching[name]["compute_fraction"]) if reaching else None
    confidence = tuned_confidence_curve(model, splits, fixed, ref, reward=reward, max_steps=max_steps, device=device)
    rule = [p for p in confidence if p["accuracy"] >= goal]
    rule_best = min(rule, key=lambda p: p["compute_fraction"]) if rule else None
    return {
        "agent": {"accuracy": agent.accuracy, "compute_fraction": agent.compute_fraction},
        "fpi_all": fixed[sequence_name(every_layer)],
        "plain": fixed["NOP"],
        "cheapest_fixed_path": None if cheapest is None else {**reaching[cheapest], "path": cheapest},
        "confidence_rule": rule_best,
        "confidence_curve": confidence,
        "tolerance": TOLERANCE,
    }


def simple_baselines_table(result: dict[str, Any], agent_name: str = "agent") -> str:
    """:func:`simple_baselines` as a short aligned table."""

    def row(name: str, accuracy: float | None, compute: float | None) -> str:
        if accuracy is None:
            return f"  {name:<44} {'-':>8}  {'-':>7}"
        return f"  {name:<44} {accuracy:>8.4f}  {compute:>7.3f}"

    fixed, rule = result["cheapest_fixed_path"], result["confidence_rule"]
    points = " points" if result["tolerance"] * 100 != 1 else " point"
    lines = [
        f"  {'on the test split, same main model':<44} {'accuracy':>8}  {'compute':>7}  (fraction of FPI on every layer)",
        row(agent_name, result["agent"]["accuracy"], result["agent"]["compute_fraction"]),
        row("FPI on every layer", result["fpi_all"]["accuracy"], result["fpi_all"]["compute_fraction"]),
        row("plain pass (NOP)", result["plain"]["accuracy"], result["plain"]["compute_fraction"]),
        row(
            f"cheapest fixed path as accurate: {fixed['path']}" if fixed else "cheapest fixed path as accurate: none",
            fixed and fixed["accuracy"],
            fixed and fixed["compute_fraction"],
        ),
        row(
            f"confidence rule as accurate: tau {rule['tau']:g}, order {','.join(f'L{j}' for j in rule['order'])}"
            if rule
            else "confidence rule as accurate: no tau",
            rule and rule["accuracy"],
            rule and rule["compute_fraction"],
        ),
    ]
    lines.append(f"  (as accurate: within {result['tolerance'] * 100:g}{points} of the agent's accuracy)")
    return "\n".join(lines)
