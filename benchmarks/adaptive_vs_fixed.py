"""Adaptive agents against fixed paths (paper Table 1, App. D) on the offline graded datasets.

For each dataset and seed it trains and measures:

* Model 0-3: fixed-path networks (no FPI, FPI on L1, L1+L2, every layer) via main_models.run_baseline (the code behind benchmarks/fixed_paths.py);
* one adaptive agent per algorithm (PPO, A2C, DQN, REINFORCE) with the same step budget;
* one lambda-conditioned PPO agent (trained on a lambda range), evaluated at several lambdas;
* two oracles: over the fixed paths (the cheapest of Model 0-3 that answers each sample), and the
  limit of layer selection on each agent's own co-trained main model (the cheapest action
  sequence within the step budget that answers correctly, knowing the label).

Each agent is reported with test accuracy, compute as a fraction of FPI on every layer (on its own
main model), batched inference wall time against FPI on every layer (same rollout code, NOP rows
get no work), compute per difficulty level, its gap to Model 3 and to the oracle. Results are
aggregated as mean +- std over seeds, written as JSON after every seed (a partial run keeps what
it finished, and the same command run again continues after the seeds the file holds) and
plotted as an accuracy-versus-compute Pareto figure.

    python benchmarks/adaptive_vs_fixed.py                   # full: 2 datasets x 3 seeds
    python benchmarks/adaptive_vs_fixed.py --quick --json    # CPU smoke size
    python benchmarks/adaptive_vs_fixed.py --datasets parity --seeds 1 --out-dir runs/avf-p1   # one piece
    python benchmarks/adaptive_vs_fixed.py --merge runs/avf-*/adaptive_vs_fixed.json --out-dir runs/avf  # pieces -> table
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import harness

from agents import train
from agents.evaluate import evaluate_run, load_run
from dynalay_env import oracle
from main_models import fixed_path_oracle, run_baseline, set_threads, write_json

SETTINGS = ("budget", "baseline_epochs", "pretrain_epochs", "lam", "lam_range", "oracle_limit", "num_envs")
"""The plan fields recorded with each seed; seeds are only averaged when these agree."""
BASELINES = {"model0": "", "model1": "1", "model2": "1,2", "model3": "1,2,3"}


@dataclass
class Plan:
    datasets: list[str]
    seeds: list[int]
    algos: list[str]
    budget: int
    baseline_epochs: int
    pretrain_epochs: int
    lam: float
    lam_range: str
    lam_grid: list[float]
    num_envs: int = 16
    oracle_limit: int | None = None
    lambda_agent: bool = True
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Field overrides for one dataset, e.g. its lambda; flags given on the command line win."""

    def for_dataset(self, dataset: str) -> "Plan":
        return replace(self, **self.per_dataset.get(dataset, {}))


FULL = Plan(
    ["digits-graded", "parity"],
    [0, 1, 2],
    ["ppo", "a2c", "dqn", "reinforce"],
    40_000,
    20,
    10,
    0.005,
    "0,0.02",
    [0.0, 0.0025, 0.005, 0.01, 0.02],
    # parity: fewer baseline epochs, the oracle on 400 samples and a larger lambda; why:
    # benchmarks/README.md, "Against separately trained fixed-path networks (Model 0-3)"
    per_dataset={"parity": dict(baseline_epochs=10, oracle_limit=400, lam=0.05, lam_range="0,0.1", lam_grid=[0.0, 0.025, 0.05, 0.1])},
)
QUICK = Plan(["digits-graded"], [0], ["ppo", "reinforce"], 512, 1, 1, 0.005, "0,0.02", [0.0, 0.01], num_envs=8, oracle_limit=48)


SMALL_BUDGET_FLAGS = {
    "ppo": ["--n-steps", "32", "--batch-size", "64"],
    "a2c": ["--n-steps", "2"],
    "dqn": ["--batch-size", "64", "--learning-starts", "64"],
    "reinforce": ["--n-steps", "4"],
}
"""Each algorithm's settings for budgets under 2048 steps, so that a quick run still updates."""
SMALL_BUDGET_IMITATION = ["--imitation-samples", "64"]
"""The imitation warm-start for budgets under 2048 steps: 64 oracle demonstrations, not train.py's
2000, which would be most of such a run's time."""


def _level_compute(per_difficulty: dict) -> dict[str, float]:
    return {str(k): float(v["compute"]) for k, v in sorted(per_difficulty.items(), key=lambda kv: int(kv[0]))}


def _train_agent(plan: Plan, dataset: str, algo: str, seed: int, run_dir: Path, lam_range: str = "") -> dict:
    argv = [
        "--algo",
        algo,
        "--dataset",
        dataset,
        "--seed",
        str(seed),
        "--total-timesteps",
        str(plan.budget),
        "--num-envs",
        str(plan.num_envs),
        "--pretrain-epochs",
        str(plan.pretrain_epochs),
        "--lam",
        str(plan.lam),
        "--logdir",
        str(run_dir.parent),
        "--run-name",
        run_dir.name,
        "--no-progress",
        "--checkpoint-freq",
        "0",
        # every agent of a seed starts from the same warmed-up main model; warm it up once
        "--warmup-cache",
        str(run_dir.parent / "warmup"),
    ]
    if lam_range:
        argv += ["--lam-range", lam_range]
    if plan.budget < 2048:
        argv += SMALL_BUDGET_FLAGS[algo] + SMALL_BUDGET_IMITATION
    return train.main(argv)


def _agent_oracle(run_dir: Path, limit: int | None) -> dict:
    engine = load_run(run_dir, "cpu").engine
    model, splits = engine.model, engine.splits
    if limit is not None:
        splits = splits.head(1, limit)
    return oracle(model, splits, max_steps=engine.max_steps).as_dict()


def _job_key(plan: Plan, dataset: str, seed: int) -> dict:
    """What one seed of ``dataset`` runs with (see :func:`harness.run_seeds`)."""
    settings = asdict(plan.for_dataset(dataset))
    return {"dataset": dataset, "seed": seed, **{k: v for k, v in settings.items() if k not in ("datasets", "seeds", "per_dataset")}}


def run_seed(plan: Plan, dataset: str, seed: int, work_dir: Path) -> dict:
    plan = plan.for_dataset(dataset)
    entry: dict[str, Any] = {
        "dataset": dataset,
        "seed": seed,
        "baselines": {},
        "agents": {},
        "settings": {k: getattr(plan, k) for k in SETTINGS},
    }
    base_runs = []
    for name, layers in BASELINES.items():
        r = run_baseline(dataset, fpi_layers=layers, epochs=plan.baseline_epochs, seed=seed, progress=False)
        base_runs.append(r)
        entry["baselines"][name] = {
            "accuracy": r["test_accuracy"],
            "compute": r["compute"],
            "eval_seconds": r["eval_seconds"],
            "level_compute": _level_compute(r["per_difficulty"]),
            "level_accuracy": {str(k): v["accuracy"] for k, v in r["per_difficulty"].items()},
        }
    m3 = entry["baselines"]["model3"]
    for name, b in entry["baselines"].items():
        b["compute_fraction"] = b["compute"] / m3["compute"]
    fpo = fixed_path_oracle(base_runs)
    entry["fixed_path_oracle"] = {"accuracy": fpo["oracle_accuracy"], "compute_fraction": fpo["oracle_compute"] / m3["compute"]}

    for algo in plan.algos:
        run_dir = work_dir / f"{dataset}-{algo}-s{seed}"
        ev = _train_agent(plan, dataset, algo, seed, run_dir)
        orc = _agent_oracle(run_dir, plan.oracle_limit)
        entry["agents"][algo] = {
            "accuracy": ev["accuracy"],
            "compute_fraction": ev["compute_fraction"],
            "time_ratio": ev["seconds"] / ev["fpi_all_seconds"],
            "fpi_all_accuracy": ev["fpi_all_accuracy"],
            "level_compute": _level_compute(ev["per_difficulty"]),
            "action_frequency": ev["action_frequency"],
            "gap_to_model3": ev["accuracy"] - m3["accuracy"],
            "oracle_accuracy": orc["accuracy"],
            "oracle_compute_fraction": orc["compute_fraction"],
            "gap_to_oracle": ev["accuracy"] - orc["accuracy"],
            "train_seconds": ev["train_seconds"],
        }
    entry["lambda_agent"] = []
    if not plan.lambda_agent:
        return entry
    run_dir = work_dir / f"{dataset}-lambda-ppo-s{seed}"
    _train_agent(plan, dataset, "ppo", seed, run_dir, lam_range=plan.lam_range)
    sweep = evaluate_run(run_dir, plan.lam_grid, device="cpu", figures=True)
    entry["lambda_agent"] = [
        {
            "lam": r["lam"],
            "accuracy": r["accuracy"],
            "compute_fraction": r["compute_fraction"],
            "time_ratio": r["seconds"] / r["fpi_all_seconds"],
            "level_compute": _level_compute(r["per_difficulty"]),
        }
        for r in sweep["results"]
    ]
    return entry


def aggregate(entries: list[dict]) -> dict:
    out: dict[str, Any] = {}
    for dataset, rows in harness.by_task(entries, "settings").items():
        table: dict[str, Any] = {"settings": rows[0].get("settings"), "seeds": [r["seed"] for r in rows]}
        for name in BASELINES:
            table[name] = harness.stats([r["baselines"][name] for r in rows], ("accuracy", "compute_fraction", "compute"))
        table["fixed_path_oracle"] = harness.stats([r["fixed_path_oracle"] for r in rows], ("accuracy", "compute_fraction"))
        m3_acc = table["model3"]["accuracy"]["mean"]
        for algo in rows[0]["agents"]:
            agent = harness.stats(
                [r["agents"][algo] for r in rows],
                (
                    "accuracy",
                    "compute_fraction",
                    "time_ratio",
                    "gap_to_model3",
                    "oracle_accuracy",
                    "gap_to_oracle",
                    "oracle_compute_fraction",
                ),
            )
            levels = sorted(rows[0]["agents"][algo]["level_compute"], key=int)
            agent["level_compute"] = harness.stats([r["agents"][algo]["level_compute"] for r in rows], levels)
            hard_vs_easy = (agent["level_compute"][levels[-1]]["mean"] / agent["level_compute"][levels[0]]["mean"]) if levels else None
            agent["hard_over_easy_compute"] = hard_vs_easy
            agent["target"] = {
                "accuracy_within_0.5_points_of_model3": agent["accuracy"]["mean"] >= m3_acc - 0.005,
                "compute_at_most_0.4": agent["compute_fraction"]["mean"] <= 0.4,
                "wall_time_at_most_0.5": agent["time_ratio"]["mean"] <= 0.5,
                "more_compute_on_harder_levels": bool(hard_vs_easy is not None and hard_vs_easy >= 1.25),
            }
            agent["target"]["all"] = all(agent["target"].values())
            table[f"agent_{algo}"] = agent
        lams = [p["lam"] for p in rows[0]["lambda_agent"]] if all(r["lambda_agent"] for r in rows) else []
        table["lambda_agent"] = [
            {"lam": lam, **harness.stats([r["lambda_agent"][i] for r in rows], ("accuracy", "compute_fraction", "time_ratio"))}
            for i, lam in enumerate(lams)
        ]
        out[dataset] = table
    return out


def pareto_figure(summary: dict, path: Path) -> None:
    panels = {}
    for dataset, t in summary.items():
        series = [
            harness.Series(
                [t[m]["compute_fraction"]["mean"] for m in BASELINES],
                [t[m]["accuracy"]["mean"] for m in BASELINES],
                "s--",
                "Model 0-3 (fixed paths)",
                names=[m.replace("model", "M") for m in BASELINES],
                name_offset=(4, -10),
                options={"color": "#777777"},
            )
        ]
        series += [
            harness.Series(
                [a["compute_fraction"]["mean"]],
                [a["accuracy"]["mean"]],
                "o",
                key.replace("agent_", "").upper(),
                xerr=[a["compute_fraction"]["std"]],
                yerr=[a["accuracy"]["std"]],
            )
            for key, a in t.items()
            if key.startswith("agent_")
        ]
        if t["lambda_agent"]:
            series.append(harness.curve(t["lambda_agent"], "^-", "PPO, one agent across λ", color="#8c564b"))
        fo = t["fixed_path_oracle"]
        series += [
            harness.Series(
                [fo["compute_fraction"]["mean"]],
                [fo["accuracy"]["mean"]],
                "*",
                "oracle over Model 0-3",
                options={"markersize": 11, "color": "#d62728"},
            ),
            harness.Series([0.4], label="target: compute ≤ 0.4"),
        ]
        panels[dataset] = series
    harness.pareto_figure(path, panels, size=(5.2, 4))


def _table(result: dict) -> list[str]:
    pm = harness.pm
    lines = []
    for dataset, t in result["summary"].items():
        n = t["model3"]["accuracy"]["n"]
        lines += [
            f"\n{dataset}  (mean ± std over {n} seed(s); compute = fraction of FPI on every layer)",
            f"{'method':>22} | {'accuracy':>15} | {'compute':>15} | {'wall/FPI-all':>12} | compute per level (easy..hard)",
        ]
        lines += [f"{m:>22} | {pm(t[m]['accuracy'], 4):>15} | {pm(t[m]['compute_fraction']):>15} | {'':>12} |" for m in BASELINES]
        for key, a in t.items():
            if key.startswith("agent_"):
                lv = " ".join(f"{v['mean']:.2f}" for v in a["level_compute"].values())
                lines.append(
                    f"{key:>22} | {pm(a['accuracy'], 4):>15} | {pm(a['compute_fraction']):>15} | {a['time_ratio']['mean']:12.3f} | {lv} | "
                    f"oracle gap {a['gap_to_oracle']['mean']:+.4f} | targets {'met' if a['target']['all'] else 'missed'}"
                )
        lines += [
            f"{'λ-agent @ ' + format(p['lam'], 'g'):>22} | {pm(p['accuracy'], 4):>15} | {pm(p['compute_fraction']):>15} | "
            f"{p['time_ratio']['mean']:12.3f} |"
            for p in t["lambda_agent"]
        ]
        fo = t["fixed_path_oracle"]
        lines.append(f"{'oracle over Model 0-3':>22} | {pm(fo['accuracy'], 4):>15} | {pm(fo['compute_fraction']):>15} |")
    return lines


def markdown_tables(summary: dict) -> str:
    """The summary as Markdown tables (mean ± std over seeds), ready for a results page."""
    pm = harness.pm
    lines = []
    names = {"model0": "Model 0 (plain)", "model1": "Model 1", "model2": "Model 2", "model3": "Model 3 (FPI everywhere)"}
    for dataset, t in summary.items():
        rows = [[label, pm(t[m]["accuracy"], 4), pm(t[m]["compute_fraction"]), "", "", "", "", ""] for m, label in names.items()]
        rows += [
            [
                key[6:].upper(),
                pm(a["accuracy"], 4),
                pm(a["compute_fraction"]),
                pm(a["time_ratio"]),
                " / ".join(f"{v['mean']:.2f}" for v in a["level_compute"].values()),
                f"{a['hard_over_easy_compute']:.2f}",
                pm(a["gap_to_oracle"], 4),
                pm(a["oracle_compute_fraction"]),
            ]
            for key, a in t.items()
            if key.startswith("agent_")
        ]
        rows += [
            [f"λ-conditioned PPO at λ = {p['lam']:g}", pm(p["accuracy"], 4), pm(p["compute_fraction"]), pm(p["time_ratio"]), "", "", "", ""]
            for p in t["lambda_agent"]
        ]
        fo = t["fixed_path_oracle"]
        rows.append(["oracle over Model 0-3", pm(fo["accuracy"], 4), pm(fo["compute_fraction"]), "", "", "", "", ""])
        lines += [
            f"#### {dataset} ({len(t.get('seeds', []))} seeds)",
            "",
            *harness.markdown_table(
                [
                    "method",
                    "test accuracy",
                    "compute (fraction of Model 3)",
                    "wall / FPI-all",
                    "compute per level, easy → hard (plain passes)",
                    "hard / easy",
                    "accuracy gap to oracle",
                    "oracle's compute",
                ],
                rows,
            ),
            "",
        ]
    return "\n".join(lines)


def _write(result: dict, out_dir: Path) -> None:
    """JSON written atomically, so an interrupted run never leaves a torn file, and the figure."""
    write_json(out_dir / "adaptive_vs_fixed.json", result)
    pareto_figure(result["summary"], out_dir / "pareto.png")


def retime(entries: list[dict], runs_dir: Path, repeats: int) -> None:
    """Re-measure every agent's wall time from its saved run under ``runs_dir`` (median of
    ``repeats`` interleaved rollouts), e.g. on a quiet machine after seeds ran side by side.
    Accuracy and compute are deterministic given the saved run, so they must come out as
    recorded: that is checked, which also shows the saved runs reproduce the table."""
    for entry in entries:
        dataset, seed = entry["dataset"], entry["seed"]
        jobs = [(runs_dir / f"{dataset}-{algo}-s{seed}", [entry["settings"]["lam"]], [agent]) for algo, agent in entry["agents"].items()]
        if entry["lambda_agent"]:
            jobs.append((runs_dir / f"{dataset}-lambda-ppo-s{seed}", [p["lam"] for p in entry["lambda_agent"]], entry["lambda_agent"]))
        for run_dir, lams, targets in jobs:
            if not run_dir.is_dir():
                raise SystemExit(f"error: --retime needs the saved run {run_dir} (it looks next to the result file)")
            results = evaluate_run(run_dir, lams, device="cpu", figures=False, timing_repeats=repeats)["results"]
            for target, result in zip(targets, results):
                for key in ("accuracy", "compute_fraction"):
                    if abs(result[key] - target[key]) > 1e-9:
                        raise SystemExit(f"error: {run_dir} now gives {key} {result[key]} instead of the recorded {target[key]}")
                target["time_ratio_recorded"] = target["time_ratio"]
                target["time_ratio"] = result["seconds"] / result["fpi_all_seconds"]
            print(f"retimed {run_dir}: " + ", ".join(f"{t['time_ratio']:.3f}" for t in targets), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, quick="one dataset, one seed, tiny budgets")
    parser.add_argument("--datasets", nargs="+", help="override the plan's datasets")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the plan's seeds")
    parser.add_argument("--budget", type=int, help="override the agents' environment-step budget")
    parser.add_argument("--algos", nargs="+", choices=["ppo", "a2c", "dqn", "reinforce"], help="override the plan's algorithms")
    parser.add_argument("--pretrain-epochs", type=int, help="override the agents' warm-up epochs")
    parser.add_argument("--baseline-epochs", type=int, help="override the Model 0-3 training epochs")
    parser.add_argument("--oracle-limit", type=int, help="run the action-sequence oracle on the first N test samples")
    parser.add_argument("--lam", type=float, help="override the agents' training lambda")
    parser.add_argument("--lam-range", help="override the lambda-conditioned agent's 'low,high' range")
    parser.add_argument("--no-lambda-agent", action="store_true", help="skip the lambda-conditioned agent")
    parser.add_argument(
        "--merge", nargs="+", type=Path, metavar="JSON", help="aggregate the per-seed entries of earlier result files instead of running"
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument(
        "--retime",
        action="store_true",
        help="with --merge: re-measure each agent's wall time from its saved run (checks accuracy and compute reproduce)",
    )
    parser.add_argument("--timing-repeats", type=int, default=5, help="with --retime: timed rollouts per policy (median)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/adaptive_vs_fixed"), help="where runs, JSON and the figure go")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.retime and not args.merge:
        raise SystemExit("error: --retime works on result files given with --merge")
    jobs, extra = [], {"retimed": bool(args.retime)}
    if not args.merge:
        plan = replace(QUICK if args.quick else FULL)
        overrides = {
            name: getattr(args, name)
            for name in ("datasets", "seeds", "budget", "algos", "pretrain_epochs", "baseline_epochs", "oracle_limit", "lam", "lam_range")
            if getattr(args, name) is not None
        }
        plan = replace(
            plan,
            **overrides,
            lambda_agent=not args.no_lambda_agent,
            # explicit flags beat the per-dataset defaults
            per_dataset={d: {k: v for k, v in o.items() if k not in overrides} for d, o in plan.per_dataset.items()},
        )
        jobs = [
            harness.Job(_job_key(plan, d, seed), partial(run_seed, plan, d, seed, args.out_dir))
            for d in plan.datasets
            for seed in plan.seeds
        ]
        extra = {"plan": dict(vars(plan))}

    def retime_each(found: list[tuple[Path, dict]]) -> None:
        for path in args.merge if args.retime else []:
            retime([entry for source, entry in found if source == Path(path)], Path(path).parent, args.timing_repeats)

    result = harness.collect(
        "adaptive_vs_fixed",
        args.out_dir,
        aggregate,
        lambda r: _write(r, args.out_dir),
        merge=args.merge,
        jobs=jobs,
        extra=extra,
        before_merge=retime_each,
    )

    def text(r: dict) -> list[str]:
        if args.markdown:
            return [markdown_tables(r["summary"])]
        return _table(r) + [f"\nresults: {args.out_dir / 'adaptive_vs_fixed.json'}, figure: {args.out_dir / 'pareto.png'}"]

    return harness.show(result, args.json, text)


if __name__ == "__main__":
    main()
