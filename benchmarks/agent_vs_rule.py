"""Does the agent clearly beat the confidence rule? Seeds of the default job, against the rule and
the learnable ceiling on the same co-trained main model; a lambda-conditioned agent against the
rule's whole curve; and the digits control, where iteration does not pay.

For every seed it runs exactly what a user runs (``agents/train_ppo.py`` with the defaults, then
``agents/evaluate.py RUN --baselines``), skipping any step whose output is already in ``--out-dir``
(so an interrupted benchmark continues), then aggregates:

* grid-lookup, the default task (``--seeds``): the agent's accuracy and compute; the confidence
  rule's compute at FPI-on-every-layer's accuracy minus 0.5 points (tuned over tau and layer order);
  the learnable ceiling's compute; the share of the gap from the rule to the ceiling that the agent
  closes, ``(rule - agent) / (rule - ceiling)``;
* the lambda-conditioned agent (``--lambda-seeds``: lambda drawn log-uniformly from [0.001, 1]
  per episode, the same budget), evaluated at ``--lams``: whether its accuracy, interpolated at each
  point of the rule's tau sweep, is at least the rule's; one figure per seed with both curves, the
  fixed paths and the ceiling;
* digits (``--digits-seeds``): the agent at the default lambda against the best fixed path.

A job with the same seed and training flags as an earlier one (the digits seeds under ``--dataset
digits``, as in the smoke test) reuses that run and its comparison instead of training it again.

    python benchmarks/agent_vs_rule.py --out-dir runs/avr --json > benchmarks/results/agent_vs_rule/agent_vs_rule.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import harness

from dynalay_env.baselines import accuracy_at_compute

ROOT = Path(__file__).resolve().parent.parent
LAMS = (0.001, 0.005, 0.01, 0.03, 0.05, 0.1, 0.3, 1.0)
LAMBDA_AGENT = ["--lam-range", "0.001,1.0", "--lam-dist", "log-uniform"]


def _python(script: str, *args: str, out: Path | None = None) -> None:
    command = [sys.executable, str(ROOT / script), *args]
    if out is None:  # a training run's own report goes to stderr: stdout is this benchmark's result
        subprocess.run(command, check=True, stdout=sys.stderr)
        return
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    partial = out.with_suffix(".partial")
    partial.write_text(result.stdout.strip().splitlines()[-1])
    partial.replace(out)  # a comparison is either whole or absent


def _train(out_dir: Path, name: str, seed: int, extra: Sequence[str], quick: bool) -> Path:
    run = out_dir / name
    if not (run / "eval.json").is_file():
        # quick: one rollout (16 envs x 16 steps) and one PPO update, the least that exercises training
        budget = (
            "--total-timesteps 256 --n-steps 16 --pretrain-epochs 1 --imitation-samples 64 --imitation-every 512".split() if quick else []
        )
        _python(
            "agents/train_ppo.py",
            "--seed",
            str(seed),
            "--run-name",
            name,
            "--logdir",
            str(out_dir),
            "--no-progress",
            "--warmup-cache",
            str(out_dir / "warmup"),
            *("--overwrite",) * run.exists(),
            *extra,
            *budget,
        )
    return run


def _evaluate(run: Path, name: str, *args: str, quick: bool) -> dict[str, Any]:
    out = run.parent / f"{run.name}.{name}.json"
    if not out.is_file():
        limits = ["--ceiling-train-limit", "64", "--baseline-test-limit", "64"] if quick and "--baselines" in args else []
        _python("agents/evaluate.py", str(run), "--json", "--no-figures", *args, *limits, out=out)
    return json.loads(out.read_text())


def gap_closed(rule: float | None, agent: float, ceiling: float) -> float | None:
    """The share of the compute gap from the rule to the ceiling that the agent closes (1 = at the
    ceiling, 0 = at the rule, < 0 = costlier than the rule); None where the rule never reaches the
    accuracy or is no costlier than the ceiling."""
    if rule is None or rule <= ceiling:
        return None
    return (rule - agent) / (rule - ceiling)


def grid_seed(run: Path, quick: bool) -> dict[str, Any]:
    comparison = _evaluate(run, "baselines", "--baselines", quick=quick)["comparison"][0]
    agent, ceiling = comparison["agent"], comparison["ceiling"]["report"]
    rule = comparison["confidence_compute_at_fpi_all_accuracy"]
    closed = gap_closed(rule, agent["compute_fraction"], ceiling["compute_fraction"])
    reference = comparison["fpi_all_accuracy"]
    as_accurate = [p["compute_fraction"] for p in comparison["confidence_curve"] if p["accuracy"] >= agent["accuracy"] - 0.005]
    return {
        "run": str(run),
        "agent_accuracy": agent["accuracy"],
        "agent_compute": agent["compute_fraction"],
        "fpi_all_accuracy": reference,
        "agent_within_half_a_point": agent["accuracy"] >= reference - 0.005,
        "rule_compute_at_fpi_all_accuracy": rule,
        "rule_compute_at_agent_accuracy": min(as_accurate) if as_accurate else None,
        "ceiling_accuracy": ceiling["accuracy"],
        "ceiling_compute": ceiling["compute_fraction"],
        "oracle_compute": comparison["oracle"]["compute_fraction"],
        "cheapest_fixed_path": comparison["cheapest_fixed_path_at_fpi_all_accuracy"],
        "gap_closed": closed,
        "half_the_gap": closed is not None and closed >= 0.5 and agent["accuracy"] >= reference - 0.005,
        "at_the_ceiling": agent["compute_fraction"] <= ceiling["compute_fraction"] and agent["accuracy"] >= reference - 0.005,
        "agent_sequences_per_level": agent["sequences_per_level"],
        "ceiling_sequences_per_level": ceiling["sequences_per_level"],
    }


def lambda_seed(run: Path, lams: Sequence[float], quick: bool) -> dict[str, Any]:
    sweep = _evaluate(run, "lams", "--lam", *map(str, lams), quick=quick)["results"]
    comparison = _evaluate(run, "baselines", "--baselines", quick=quick)["comparison"][0]
    agent_points = [{"compute_fraction": r["compute_fraction"], "accuracy": r["accuracy"]} for r in sweep]
    below = []
    for point in comparison["confidence_curve"]:
        interpolated = accuracy_at_compute(agent_points, point["compute_fraction"])
        if interpolated != interpolated:  # the rule spends less than any agent point: no agent accuracy there
            interpolated = None
        if interpolated is None or interpolated < point["accuracy"] - 1e-9:
            below.append({**point, "agent_accuracy": interpolated})
    computes = [p["compute_fraction"] for p in agent_points]
    return {
        "run": str(run),
        "lams": list(lams),
        "points": [{"lam": r["lam"], "accuracy": r["accuracy"], "compute_fraction": r["compute_fraction"]} for r in sweep],
        # within half a percent of FPI on every layer: the test split's sampling noise at equal policy
        "compute_never_rises": all(b <= a + 0.005 for a, b in zip(computes, computes[1:])),
        "compute_span": max(computes) / min(computes),
        "rule_points_above_the_agent": below,
        "on_or_above_the_rule": not below,
        "confidence_curve": comparison["confidence_curve"],
        "fixed_paths": {name: {k: p[k] for k in ("accuracy", "compute_fraction")} for name, p in comparison["fixed_paths"].items()},
        "ceiling": {k: comparison["ceiling"]["report"][k] for k in ("accuracy", "compute_fraction")},
    }


def digits_seed(run: Path, quick: bool) -> dict[str, Any]:
    comparison = _evaluate(run, "baselines", "--baselines", quick=quick)["comparison"][0]
    agent = comparison["agent"]
    best_name = max(
        comparison["fixed_paths"],
        key=lambda n: (comparison["fixed_paths"][n]["accuracy"], -comparison["fixed_paths"][n]["compute_fraction"]),
    )
    best = comparison["fixed_paths"][best_name]
    return {
        "run": str(run),
        "agent_accuracy": agent["accuracy"],
        "agent_compute": agent["compute_fraction"],
        "best_fixed_path": best_name,
        "best_fixed_accuracy": best["accuracy"],
        "within_half_a_point_of_the_best_fixed_path": agent["accuracy"] >= best["accuracy"] - 0.005,
        "compute_at_most_0.3": agent["compute_fraction"] <= 0.3,
        "actions": agent["action_frequency"],
    }


def figure(seed: dict[str, Any], path: Path, title: str) -> None:
    orders = sorted({tuple(p["order"]) for p in seed["confidence_curve"]})
    series = [
        harness.curve(
            [p for p in seed["confidence_curve"] if tuple(p["order"]) == order],
            "s--",
            f"confidence rule, order {','.join(f'L{j}' for j in order)}",
            ms=4,
        )
        for order in orders
    ]
    agent = sorted((p["compute_fraction"], p["accuracy"], p["lam"]) for p in seed["points"])
    fixed = seed["fixed_paths"]
    series += [
        harness.Series(
            [a[0] for a in agent],
            [a[1] for a in agent],
            "o-",
            "λ-conditioned agent (one policy)",
            names=[f"{a[2]:g}" for a in agent],
            name_offset=(4, -10),
            options={"color": "black"},
        ),
        harness.Series(
            [p["compute_fraction"] for p in fixed.values()],
            [p["accuracy"] for p in fixed.values()],
            "^",
            names=list(fixed),
            name_offset=(3, 3),
            options={"color": "grey"},
        ),
        harness.Series(
            [seed["ceiling"]["compute_fraction"]],
            [seed["ceiling"]["accuracy"]],
            "*",
            "learnable ceiling",
            options={"ms": 12, "color": "tab:red"},
        ),
    ]
    harness.pareto_figure(path, {title: series}, size=(6.4, 4.4), log_x=True, legend_loc="lower right")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = ["--dataset", args.dataset] if args.dataset else []
    trained: dict[tuple[int, tuple[str, ...]], Path] = {}

    def train(name: str, seed: int, extra: Sequence[str]) -> Path:
        """The run of ``seed`` with the flags ``extra``: trained once, however many jobs ask for it."""
        key = (seed, tuple(extra))
        if key not in trained:
            trained[key] = _train(out_dir, name, seed, extra, args.quick)
        return trained[key]

    grid = [grid_seed(train(f"grid-s{s}", s, task), args.quick) for s in args.seeds]
    lam_agents = [lambda_seed(train(f"grid-lambda-s{s}", s, task + LAMBDA_AGENT), args.lams, args.quick) for s in args.lambda_seeds]
    digits = [digits_seed(train(f"digits-s{s}", s, ["--dataset", "digits"]), args.quick) for s in args.digits_seeds]
    figures = []
    for seed, result in zip(args.lambda_seeds, lam_agents):
        path = out_dir / f"lambda_agent_vs_rule_s{seed}.png"
        figure(result, path, f"{args.dataset or 'grid-lookup'}, seed {seed}: one agent across λ against the confidence rule")
        figures.append(str(path))
    keys = (
        "agent_accuracy",
        "agent_compute",
        "fpi_all_accuracy",
        "rule_compute_at_fpi_all_accuracy",
        "rule_compute_at_agent_accuracy",
        "ceiling_accuracy",
        "ceiling_compute",
        "gap_closed",
    )
    return {
        "benchmark": "agent_vs_rule",
        "seeds": list(args.seeds),
        "grid_lookup": grid,
        "grid_lookup_summary": harness.stats(grid, keys),
        "half_the_gap_on_every_seed": bool(grid) and all(g["half_the_gap"] for g in grid),
        "at_the_ceiling_on_every_seed": bool(grid) and all(g["at_the_ceiling"] for g in grid),
        "lambda_agent": lam_agents,
        "lambda_agent_on_or_above_the_rule_on_every_seed": bool(lam_agents) and all(r["on_or_above_the_rule"] for r in lam_agents),
        "digits": digits,
        "digits_summary": harness.stats(digits, ("agent_accuracy", "agent_compute", "best_fixed_accuracy")),
        "digits_targets_on_every_seed": bool(digits)
        and all(d["within_half_a_point_of_the_best_fixed_path"] and d["compute_at_most_0.3"] for d in digits),
        "figures": figures,
    }


def _grid_lookup_row(label: Any, f: Callable[..., str], g: dict[str, Any]) -> list[Any]:
    """One row of the grid-lookup table: ``g``'s values (one seed's, or the summary's) written by ``f``."""
    return [
        label,
        f(g["agent_accuracy"], 4),
        f(g["fpi_all_accuracy"], 4),
        f(g["agent_compute"]),
        f(g["rule_compute_at_fpi_all_accuracy"]),
        f(g["rule_compute_at_agent_accuracy"]),
        f"{f(g['ceiling_accuracy'], 4)}, {f(g['ceiling_compute'])}",
        f(g["gap_closed"], 2),
    ]


def markdown(out: dict[str, Any]) -> str:
    rows = [_grid_lookup_row(seed, harness.fmt, g) for seed, g in zip(out["seeds"], out["grid_lookup"])]
    rows.append(_grid_lookup_row("mean ± std", harness.pm, out["grid_lookup_summary"]))
    lines = harness.markdown_table(
        [
            "seed",
            "agent accuracy",
            "FPI-all accuracy",
            "agent compute",
            "rule compute at FPI-all accuracy",
            "rule compute at the agent's accuracy",
            "ceiling (accuracy, compute)",
            "gap closed",
        ],
        rows,
    )
    for r in out["lambda_agent"]:
        pts = ", ".join(f"λ {p['lam']:g}: {p['accuracy']:.4f} at {p['compute_fraction']:.3f}" for p in r["points"])
        lines.append(
            f"\nλ-agent {r['run']}: {pts}; on or above the rule: {r['on_or_above_the_rule']}"
            + (
                f" (rule points above it: {[(p['tau'], p['order'], round(p['accuracy'], 4), round(p['compute_fraction'], 3)) for p in r['rule_points_above_the_agent']]})"
                if r["rule_points_above_the_agent"]
                else ""
            )
        )
    for d in out["digits"]:
        lines.append(
            f"\ndigits {d['run']}: agent {d['agent_accuracy']:.4f} at {d['agent_compute']:.3f}; best fixed path "
            f"{d['best_fixed_path']} {d['best_fixed_accuracy']:.4f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs/agent_vs_rule", help="where the runs and their comparisons go (reused when present)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4], help="seeds of the default job on grid-lookup")
    parser.add_argument("--lambda-seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the lambda-conditioned agent")
    parser.add_argument("--digits-seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the default job on digits")
    parser.add_argument("--lams", type=float, nargs="+", default=list(LAMS), help="lambdas the lambda-conditioned agent is evaluated at")
    parser.add_argument(
        "--dataset",
        default=None,
        help="the task of the seeds and the lambda-conditioned agent (default: the default task, grid-lookup); the smoke test uses digits",
    )
    parser.add_argument("--quick", action="store_true", help="tiny runs (a smoke test, not a measurement)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    return harness.show(run(args), args.json, lambda out: [markdown(out)])


if __name__ == "__main__":
    main()
