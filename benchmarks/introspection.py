"""Does a per-input decision pay? Agents against every baseline that needs no
learning, on the same co-trained main model, and one lambda-conditioned agent across the trade-off.

For each task and seed it trains, with train.py and one shared warm-up:

* PPO at the task's lambda, compared (agents/compare.py) with every fixed path, the confidence and
  residual exit rules swept over tau, the oracle and the learnable ceiling; from those the task's
  headroom and the target checks;
* PPO at a second lambda (to check the lambda-conditioned agent against, at two lambdas);
* one PPO agent trained with lambda drawn log-uniformly per episode, evaluated at each lambda of
  the task's grid (paper Fig. 5b).

Writes ``introspection.json`` (every seed, then the mean +- std summary and the targets), after each
seed, and the figures ``lambda_sweep.png`` and ``pareto_<task>.png`` into ``--out-dir``; the same
command run again continues after the seeds the file holds.

    python benchmarks/introspection.py --tasks grid-lookup --seeds 0 1 2 --out-dir runs/introspection
    python benchmarks/introspection.py --quick                  # CPU smoke size (tests use it)
    python benchmarks/introspection.py --merge runs/a/introspection.json runs/b/introspection.json --out-dir runs/i

It prints the summary as Markdown tables (``--json``: the whole result as one line).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import harness
import numpy as np

from agents import train
from agents.compare import TOLERANCE, decision_targets
from agents.evaluate import evaluate_run
from main_models import write_json

LAM_GRID = [0.001, 0.005, 0.01, 0.05, 0.1, 0.3, 1.0]


@dataclass
class TaskPlan:
    dataset: str
    lam: float = 0.05
    """The fixed-lambda agent's lambda (the one compared with every baseline)."""
    second_lam: float = 0.01
    """A second fixed-lambda agent, to check the lambda-conditioned agent at two lambdas."""
    lam_range: tuple[float, float] = (0.001, 1.0)
    """The lambda-conditioned agent's training range (log-uniform)."""
    lam_grid: list[float] = field(default_factory=lambda: list(LAM_GRID))
    """Where the lambda-conditioned agent is evaluated (both fixed lambdas among them)."""
    budget: int = 40_000
    flags: list[str] = field(default_factory=list)
    """More train.py flags for every agent of the task (warm-up, alternatives, ...)."""
    ceiling_train_limit: int = 4000
    test_limit: int | None = None
    """Compare on the first N test samples (the oracle's exact search is dear on long sequences)."""


# Warm-up paths stop early with probability 0.3 per step so that short paths (the plain one
# included) are trained as well as the full one, and every update also trains the plain path.
SHORT_PATHS_KEPT = ["--warmup-stop-prob", "0.3", "--train-alternatives", "plain"]
TASKS: dict[str, TaskPlan] = {
    # The canonical demo: which layer helps depends on the question in the corner (main_models/data/grid_lookup.py).
    "grid-lookup": TaskPlan("grid-lookup", flags=SHORT_PATHS_KEPT),
    # Reachability through walls (main_models/data/grid_reach.py): how many layers, and which, a
    # route needs differs per input. Grid-lookup's warm-up and plain-path training, but the routes
    # of the hard 30% are learnt only after a plateau: 12 warm-up epochs at lr 3e-3 get past it
    # (4 epochs at 1e-3 leave them at chance).
    "grid-reach": TaskPlan("grid-reach", flags=["--pretrain-epochs", "12", "--main-lr", "0.003", *SHORT_PATHS_KEPT]),
    "digits": TaskPlan("digits", lam=0.005, second_lam=0.05),
    "parity": TaskPlan("parity", ceiling_train_limit=1000, test_limit=500, flags=["--train-alternatives", "plain"]),
    "digits-graded": TaskPlan("digits-graded", flags=["--train-alternatives", "plain"]),
}
MARKDOWN_TAUS = (0.6, 0.7, 0.8, 0.9, 0.99)
"""The confidence thresholds the Markdown tables show (the JSON holds the whole sweep)."""
QUICK = dict(
    budget=256,
    flags=["--pretrain-epochs", "1", "--n-steps", "16", "--batch-size", "64", "--imitation-samples", "64"],
    ceiling_train_limit=64,
    test_limit=64,
)


def _train(plan: TaskPlan, seed: int, run_dir: Path, *, lam: float, lam_range: tuple[float, float] | None = None) -> dict:
    argv = ["--algo", "ppo", "--dataset", plan.dataset, "--seed", str(seed), "--total-timesteps", str(plan.budget), "--lam", str(lam)]
    argv += ["--logdir", str(run_dir.parent), "--run-name", run_dir.name, "--no-progress", "--overwrite", "--checkpoint-freq", "0"]
    argv += ["--warmup-cache", str(run_dir.parent / "warmup"), *plan.flags]
    if lam_range is not None:
        argv += ["--lam-range", f"{lam_range[0]},{lam_range[1]}", "--lam-dist", "log-uniform"]
    return train.main(argv)


def _brief(report: dict) -> dict:
    keep = (
        "lam",
        "accuracy",
        "compute_fraction",
        "fpi_all_accuracy",
        "action_frequency",
        "per_difficulty",
        "sequences_per_level",
        "actions_per_step",
    )
    return {k: report[k] for k in keep}


def run_seed(plan: TaskPlan, seed: int, out_dir: Path) -> dict:
    start = time.perf_counter()
    runs = {
        "fixed": out_dir / f"{plan.dataset}-lam{plan.lam:g}-s{seed}",
        "second": out_dir / f"{plan.dataset}-lam{plan.second_lam:g}-s{seed}",
        "lambda": out_dir / f"{plan.dataset}-lambda-s{seed}",
    }
    trained = _train(plan, seed, runs["fixed"], lam=plan.lam)
    # nothing here reads wall times: the evaluations time nothing
    main = evaluate_run(
        runs["fixed"],
        [plan.lam],
        device="cpu",
        figures=True,
        timing_repeats=0,
        baselines=True,
        ceiling_train_limit=plan.ceiling_train_limit,
        baseline_test_limit=plan.test_limit,
        residual_rule=True,
    )
    _train(plan, seed, runs["second"], lam=plan.second_lam)
    second = evaluate_run(runs["second"], [plan.second_lam], device="cpu", figures=False, timing_repeats=0)["results"][0]
    _train(plan, seed, runs["lambda"], lam=plan.lam_range[0], lam_range=plan.lam_range)
    sweep = evaluate_run(runs["lambda"], plan.lam_grid, device="cpu", figures=True, timing_repeats=0)["results"]
    return {
        "dataset": plan.dataset,
        "seed": seed,
        "plan": asdict(plan),
        "train_seconds": trained["train_seconds"],
        "comparison": main["comparison"][0],
        "fixed_lambda_agents": {f"{plan.lam:g}": _brief(main["results"][0]), f"{plan.second_lam:g}": _brief(second)},
        "lambda_agent": [_brief(r) for r in sweep],
        "seconds": time.perf_counter() - start,
    }


def summarise(entries: list[dict]) -> dict[str, Any]:
    """Mean +- std over seeds per task, and the targets checked on the means."""
    out: dict[str, Any] = {}
    both = ("accuracy", "compute_fraction")
    for dataset, rows in harness.by_task(entries, "plan").items():
        comp = [r["comparison"] for r in rows]
        t: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "plan": rows[0]["plan"]}
        t["agent"] = harness.stats([c["agent"] for c in comp], both)
        t["fpi_all_accuracy"] = harness.mean_std([c["fpi_all_accuracy"] for c in comp])
        t["fixed_paths"] = {name: harness.stats([c["fixed_paths"][name] for c in comp], both) for name in comp[0]["fixed_paths"]}
        cheapest = [c["cheapest_fixed_path_at_fpi_all_accuracy"] for c in comp]
        t["cheapest_fixed_path"] = {
            "compute_fraction": harness.mean_std([c["compute_fraction"] for c in cheapest]),
            "paths": [c["path"] for c in cheapest],
        }
        t["ceiling"] = harness.stats([c["ceiling"]["report"] for c in comp], both)
        t["oracle"] = harness.stats([c["oracle"] for c in comp], both)
        # from the parts, so that entries written when an out-of-reach ceiling gave None still count
        t["headroom"] = harness.mean_std(
            [c["cheapest_fixed_path_at_fpi_all_accuracy"]["compute_fraction"] / c["ceiling"]["report"]["compute_fraction"] for c in comp]
        )
        t["ceiling_reaches_fpi_all_accuracy"] = [c["ceiling"]["report"]["accuracy"] >= c["fpi_all_accuracy"] - TOLERANCE for c in comp]
        t["confidence_accuracy_at_agent_compute"] = harness.mean_std([c["confidence_accuracy_at_agent_compute"] for c in comp])
        # the rule's bottom-up order is swept on every seed (its tuned order depends on the seed's model)
        bottom_up = [[p for p in c["confidence_curve"] if p.get("order", [1]) == sorted(p.get("order", [1]))] for c in comp]
        t["confidence_curve"] = [{"tau": p["tau"], **harness.stats([b[i] for b in bottom_up], both)} for i, p in enumerate(bottom_up[0])]
        t["residual_curve"] = [
            {"tau": p["tau"], **harness.stats([c["residual_curve"][i] for c in comp], both)}
            for i, p in enumerate(comp[0]["residual_curve"])
        ]
        t["agent_level_compute"] = {
            lv: harness.mean_std([c["agent"]["per_difficulty"][lv]["compute"] for c in comp]) for lv in comp[0]["agent"]["per_difficulty"]
        }
        t["per_seed_targets"] = [c["targets"] for c in comp]
        t["fixed_lambda_agents"] = {
            lam: harness.stats([r["fixed_lambda_agents"][lam] for r in rows], both) for lam in rows[0]["fixed_lambda_agents"]
        }
        t["lambda_agent"] = [
            {"lam": p["lam"], **harness.stats([r["lambda_agent"][i] for r in rows], both)} for i, p in enumerate(rows[0]["lambda_agent"])
        ]
        t["targets"] = _targets(dataset, t)
        out[dataset] = t
    return out


def _targets(dataset: str, t: dict) -> dict[str, Any]:
    """The decision targets, on the means over seeds."""
    acc, comp = t["agent"]["accuracy"]["mean"], t["agent"]["compute_fraction"]["mean"]
    targets: dict[str, Any] = {}
    if dataset in ("grid-lookup", "grid-reach"):
        targets.update(
            decision_targets(
                acc,
                comp,
                fpi_all_accuracy=t["fpi_all_accuracy"]["mean"],
                cheapest_fixed=t["cheapest_fixed_path"]["compute_fraction"]["mean"],
                ceiling_compute=t["ceiling"]["compute_fraction"]["mean"],
                confidence_at_agent=t["confidence_accuracy_at_agent_compute"]["mean"],
            )
        )
        targets["headroom_at_least_2"] = (t["headroom"]["mean"] or 0) >= 2
    elif dataset == "parity":
        targets["accuracy_1.000_at_compute_at_most_0.41"] = acc >= 0.9995 and comp <= 0.41
    elif dataset == "digits-graded":
        plain = t["fixed_paths"]["NOP"]["accuracy"]["mean"]
        targets["within_0.5_points_of_plain_at_compute_at_most_0.25"] = acc >= plain - TOLERANCE and comp <= 0.25
    sweep = t["lambda_agent"]
    computes = [p["compute_fraction"]["mean"] for p in sweep]
    targets["lambda_agent_compute_never_rises"] = all(b <= a + 1e-9 for a, b in zip(computes, computes[1:]))
    targets["lambda_agent_compute_span"] = computes[0] / computes[-1] if computes and computes[-1] > 0 else None
    targets["lambda_agent_span_at_least_3x"] = bool(targets["lambda_agent_compute_span"] and targets["lambda_agent_compute_span"] >= 3)
    within = {}
    for lam, fixed in t["fixed_lambda_agents"].items():
        match = [p for p in sweep if f"{p['lam']:g}" == lam]
        if match:
            within[lam] = abs(match[0]["accuracy"]["mean"] - fixed["accuracy"]["mean"]) <= 0.01
    targets["lambda_agent_within_1_point_of_fixed_agents"] = within
    targets["lambda_agent_within_1_point_at_2_lambdas"] = sum(within.values()) >= 2
    return targets


def _seeds(t: dict) -> str:
    n = len(t["seeds"])
    return f"{n} seed{'s' if n > 1 else ''}"


def lambda_sweep_figure(summary: dict, path: Path) -> None:
    """Paper Fig. 5b: the lambda-conditioned agent's compute and accuracy against lambda, one panel
    per task, with the agents trained at one lambda marked."""
    with harness.figure(path, len(summary), size=(4.8, 3.6)) as axes:
        for ax, (task, t) in zip(axes, summary.items()):
            lams = [p["lam"] for p in t["lambda_agent"]]
            comp = np.array([p["compute_fraction"]["mean"] for p in t["lambda_agent"]])
            comp_sd = np.array([p["compute_fraction"]["std"] for p in t["lambda_agent"]])
            acc = np.array([p["accuracy"]["mean"] for p in t["lambda_agent"]])
            ax.errorbar(lams, comp, yerr=comp_sd, fmt="o-", color="#1f77b4", capsize=2, label="compute, one agent across λ")
            for lam, fixed in t["fixed_lambda_agents"].items():
                ax.plot(float(lam), fixed["compute_fraction"]["mean"], "s", color="#ff7f0e", label=f"compute, agent trained at λ={lam}")
            ax.set_xscale("log")
            ax.set_xlabel("λ")
            ax.set_ylabel(harness.COMPUTE_LABEL)
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
            twin = ax.twinx()
            twin.plot(lams, acc, "^--", color="#2ca02c", label="accuracy, one agent across λ")
            for lam, fixed in t["fixed_lambda_agents"].items():
                twin.plot(
                    float(lam), fixed["accuracy"]["mean"], "D", color="#d62728", markersize=5, label=f"accuracy, agent trained at λ={lam}"
                )
            twin.set_ylabel("test accuracy")
            ax.set_title(f"{task} ({_seeds(t)})")
            handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
            ax.legend(handles, [h.get_label() for h in handles], fontsize=6.5, loc="upper right")


def pareto_figure(task: str, t: dict, path: Path) -> None:
    """Accuracy against compute: the agent, every fixed path, both exit-rule curves, the learnable
    ceiling and the oracle (means over seeds)."""
    fixed = t["fixed_paths"]
    series = [
        harness.Series(
            [p["compute_fraction"]["mean"] for p in fixed.values()],
            [p["accuracy"]["mean"] for p in fixed.values()],
            "s",
            names=list(fixed),
            options={"color": "#777777"},
        ),
        harness.curve(t["confidence_curve"], "o-", "confidence threshold (τ sweep)", markersize=3, alpha=0.7),
        harness.curve(t["residual_curve"], "v-", "residual threshold (τ sweep)", markersize=3, alpha=0.7),
        harness.Series(
            [t["ceiling"]["compute_fraction"]["mean"]],
            [t["ceiling"]["accuracy"]["mean"]],
            "D",
            "learnable ceiling (imitation)",
            options={"color": "#9467bd"},
        ),
        harness.Series(
            [t["oracle"]["compute_fraction"]["mean"]],
            [t["oracle"]["accuracy"]["mean"]],
            "*",
            "oracle (knows the label)",
            options={"markersize": 11, "color": "#d62728"},
        ),
        harness.Series(
            [t["agent"]["compute_fraction"]["mean"]],
            [t["agent"]["accuracy"]["mean"]],
            "o",
            f"PPO at λ={t['plan']['lam']:g}",
            xerr=[t["agent"]["compute_fraction"]["std"]],
            yerr=[t["agent"]["accuracy"]["std"]],
            options={"color": "black"},
        ),
    ]
    harness.pareto_figure(path, {f"{task}: agent against every baseline ({_seeds(t)})": series}, legend_loc="lower right")


def markdown(summary: dict) -> str:
    pm = harness.pm
    lines = []
    for task, t in summary.items():
        rows = [["**PPO agent**", pm(t["agent"]["accuracy"], 4), pm(t["agent"]["compute_fraction"])]]
        rows += [
            [f"fixed path {name}", pm(p["accuracy"], 4), pm(p["compute_fraction"])]
            for name, p in sorted(t["fixed_paths"].items(), key=lambda kv: (0 if kv[0] == "NOP" else kv[0].count(",") + 1, kv[0]))
        ]
        rows += [
            [f"confidence τ = {p['tau']:g}", pm(p["accuracy"], 4), pm(p["compute_fraction"])]
            for p in t["confidence_curve"]
            if p["tau"] in MARKDOWN_TAUS
        ]
        rows += [
            ["learnable ceiling", pm(t["ceiling"]["accuracy"], 4), pm(t["ceiling"]["compute_fraction"])],
            ["oracle (knows the label)", pm(t["oracle"]["accuracy"], 4), pm(t["oracle"]["compute_fraction"])],
        ]
        sweep = []
        for p in t["lambda_agent"]:
            fixed = t["fixed_lambda_agents"].get(f"{p['lam']:g}")
            sweep.append(
                [
                    f"{p['lam']:g}",
                    pm(p["accuracy"], 4),
                    pm(p["compute_fraction"]),
                    *([pm(fixed["accuracy"], 4), pm(fixed["compute_fraction"])] if fixed else ["", ""]),
                ]
            )
        lines += [
            f"#### {task} (seeds {', '.join(map(str, t['seeds']))}; PPO at λ = {t['plan']['lam']:g})",
            "",
            *harness.markdown_table(["method", "test accuracy", "compute (fraction of FPI on every layer)"], rows),
            "",
            f"Headroom (cheapest fixed path within 0.5 points of FPI on every layer, over the ceiling's compute): {pm(t['headroom'], 2)}; "
            f"cheapest paths per seed: {', '.join(t['cheapest_fixed_path']['paths'])}. "
            f"Confidence rule's accuracy at the agent's compute: {pm(t['confidence_accuracy_at_agent_compute'], 4)}.",
            "",
            *harness.markdown_table(
                ["λ", "one agent across λ: accuracy", "its compute", "agent trained at this λ: accuracy", "its compute"], sweep
            ),
            "",
            "Targets: " + "; ".join(f"{k}: {v if not isinstance(v, float) else round(v, 2)}" for k, v in t["targets"].items()),
            "",
        ]
    return "\n".join(lines)


def _write(result: dict, out_dir: Path) -> None:
    write_json(out_dir / "introspection.json", result)
    lambda_sweep_figure(result["summary"], out_dir / "lambda_sweep.png")
    for task, t in result["summary"].items():
        pareto_figure(task, t, out_dir / f"pareto_{task}.png")


def main(argv: list[str] | None = None) -> dict:
    quick = "tiny budgets and 1 warm-up epoch (a smoke test, not a measurement)"
    parser = harness.seeds_parser(__doc__, quick=quick, tasks=TASKS, default_tasks=["grid-lookup", "digits"], out_dir="runs/introspection")
    parser.add_argument("--budget", type=int, help="override every agent's environment-step budget")
    args = harness.parse_seeds_args(parser, argv)
    jobs = []
    for task in [] if args.merge else args.tasks:
        plan = replace(TASKS[task], **(QUICK if args.quick else {}))
        if args.budget is not None:
            plan = replace(plan, budget=args.budget)
        jobs += [harness.Job({"seed": seed, **asdict(plan)}, partial(run_seed, plan, seed, args.out_dir)) for seed in args.seeds]
    result = harness.collect("introspection", args.out_dir, summarise, lambda r: _write(r, args.out_dir), merge=args.merge, jobs=jobs)
    return harness.show(
        result,
        args.json,
        lambda r: [
            markdown(r["summary"]),
            f"results: {args.out_dir / 'introspection.json'}, figures: {args.out_dir / 'lambda_sweep.png'}, "
            + ", ".join(str(args.out_dir / f"pareto_{task}.png") for task in r["summary"]),
        ],
    )


if __name__ == "__main__":
    main()
