"""Inference wall time: does the charged compute an agent saves show up on the clock?

Charged FLOPs are not wall time: a policy that skips work by masking still pays for it, and a
policy network has its own cost. This measures, on a trained run's frozen main model and test
split, the wall time of answering every test sample with

* the trained agent (its policy network included, as it runs in deployment: observation, policy,
  step);
* FPI on every layer;
* the cheapest fixed path within 0.5 points of FPI on every layer's accuracy;
* the confidence rule (tuned over tau and layer order) at that accuracy;

batched (``--batch`` rows in flight, 256 by default) and one sample at a time (``--single``
samples, batch 1). Each time is the median of ``--repeats`` rollouts, the policies interleaved
so that drift in machine load hits all alike (:func:`dynalay_env.evaluation.time_policies`).

    python benchmarks/inference_time.py runs/<run> --json > benchmarks/results/inference_time.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import harness
import torch

from agents.compare import CONFIDENCE_RULE_OBSERVATION, TOLERANCE, fixed_path_points, tuned_confidence_curve
from agents.evaluate import load_run
from dynalay_env import ObservationLayout, evaluate_policy
from dynalay_env.baselines import confidence_threshold
from dynalay_env.evaluation import time_policies
from main_models import set_threads


def _policies(run_dir: Path, device: str) -> tuple[Any, dict[str, tuple[Any, Sequence[str]]], dict[str, Any]]:
    """The run's engine and the four policies, each with the observation it reads."""
    loaded = load_run(run_dir, device)
    engine = loaded.engine
    model, splits, T = engine.model, engine.splits, engine.max_steps
    reward = engine.reward.fixed(loaded.settings.env.lam)
    every_layer = list(range(1, model.num_layers + 1))
    ref = evaluate_policy(model, splits, every_layer, reward=reward, max_steps=T, device=engine.device)
    fixed = fixed_path_points(model, splits, ref, reward=reward, max_steps=T, device=engine.device)
    goal = ref.fpi_all_accuracy - TOLERANCE
    cheapest = min((p for p in fixed.values() if p["accuracy"] >= goal), key=lambda p: p["compute_fraction"])
    curve = tuned_confidence_curve(model, splits, fixed, ref, reward=reward, max_steps=T, device=engine.device)
    reaching = [p for p in curve if p["accuracy"] >= goal]
    rule = min(reaching, key=lambda p: p["compute_fraction"]) if reaching else max(curve, key=lambda p: p["accuracy"])
    layout = ObservationLayout(model.num_layers, model.summary_dim, CONFIDENCE_RULE_OBSERVATION)
    policies = {
        "agent": (loaded.agent.policy(), engine.layout.groups),
        "fpi_all": (every_layer, engine.layout.groups),
        f"fixed {','.join(f'L{j}' for j in cheapest['path']) or 'NOP'}": (cheapest["path"], engine.layout.groups),
        f"confidence tau {rule['tau']:g} ({','.join(f'L{j}' for j in rule['order'])})": (
            confidence_threshold(layout, T, rule["tau"], rule["order"]),
            CONFIDENCE_RULE_OBSERVATION,
        ),
    }
    return engine, policies, {"reward": reward, "goal_accuracy": goal, "reference": ref}


def measure(run_dir: Path, *, batch: int = 256, single: int = 200, repeats: int = 5, device: str = "cpu") -> dict[str, Any]:
    engine, policies, meta = _policies(run_dir, device)
    model, splits, T = engine.model, engine.splits, engine.max_steps
    one_by_one = splits.head(None, single)
    rollout = dict(reward=meta["reward"], max_steps=T, device=engine.device)
    reports = {
        name: evaluate_policy(model, splits, policy, observation=observation, batch_size=batch, reference=meta["reference"], **rollout)
        for name, (policy, observation) in policies.items()
    }
    batched = time_policies(model, splits, policies, repeats=repeats, batch_size=batch, **rollout)
    single_s = time_policies(model, one_by_one, policies, repeats=repeats, batch_size=1, **rollout)
    rows: dict[str, dict[str, Any]] = {}
    n, m = int(splits.y_test.shape[0]), int(one_by_one.y_test.shape[0])
    for name, report in reports.items():
        rows[name] = {
            "accuracy": report.accuracy,
            "compute_fraction": report.compute_fraction,
            "batched_seconds": batched[name],
            "batched_ms_per_sample": 1000 * batched[name] / n,
            "single_seconds": single_s[name],
            "single_ms_per_sample": 1000 * single_s[name] / m,
        }
    fpi_all = rows["fpi_all"]
    for row in rows.values():
        row["batched_time_vs_fpi_all"] = row["batched_seconds"] / fpi_all["batched_seconds"]
        row["single_time_vs_fpi_all"] = row["single_seconds"] / fpi_all["single_seconds"]
    fixed_name = next(name for name in rows if name.startswith("fixed "))
    agent = rows["agent"]
    return {
        "benchmark": "inference_time",
        "run_dir": str(run_dir),
        "dataset": splits.name,
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "test_samples": n,
        "single_samples": m,
        "repeats": repeats,
        "goal_accuracy": meta["goal_accuracy"],
        "rows": rows,
        "targets": {
            "batched_agent_at_most_half_of_fpi_all": agent["batched_time_vs_fpi_all"] <= 0.5,
            "batched_agent_below_cheapest_fixed_path": agent["batched_seconds"] < rows[fixed_name]["batched_seconds"],
        },
    }


def markdown(out: dict[str, Any]) -> list[str]:
    return harness.markdown_table(
        ["policy", "accuracy", "compute", f"batch {out['batch']}: ms/sample", "vs FPI-all", "batch 1: ms/sample", "vs FPI-all"],
        [
            [
                name,
                f"{r['accuracy']:.4f}",
                f"{r['compute_fraction']:.3f}",
                f"{r['batched_ms_per_sample']:.3f}",
                f"{r['batched_time_vs_fpi_all']:.2f}x",
                f"{r['single_ms_per_sample']:.2f}",
                f"{r['single_time_vs_fpi_all']:.2f}x",
            ]
            for name, r in out["rows"].items()
        ],
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = harness.parser(__doc__, quick="1 repeat, 20 single samples (a smoke test, not a measurement)", device="auto")
    parser.add_argument("run_dir", type=Path, help="a trained run directory (agents/train.py)")
    parser.add_argument("--batch", type=int, default=256, help="rows in flight for the batched measurement")
    parser.add_argument("--single", type=int, default=200, help="test samples answered one at a time (batch 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rollouts per policy and setting; the median is reported")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.single < 1 or args.repeats < 1:
        parser.error("--batch, --single and --repeats must be >= 1")
    set_threads(args.threads)
    if args.quick:
        args.repeats, args.single = 1, 20
    return harness.show(
        measure(args.run_dir, batch=args.batch, single=args.single, repeats=args.repeats, device=args.device), args.json, markdown
    )


if __name__ == "__main__":
    main()
