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
it finished) and plotted as an accuracy-versus-compute Pareto figure.

    python benchmarks/adaptive_vs_fixed.py                   # full: 2 datasets x 3 seeds
    python benchmarks/adaptive_vs_fixed.py --quick --json    # CPU smoke size
    python benchmarks/adaptive_vs_fixed.py --datasets parity --seeds 1 --out-dir runs/avf-p1   # one piece
    python benchmarks/adaptive_vs_fixed.py --merge runs/avf-*/adaptive_vs_fixed.json --out-dir runs/avf  # pieces -> table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agents import train
from agents.evaluate import evaluate_run, load_run
from dynalay_env import oracle
from main_models import add_runtime_flags, fixed_path_oracle, run_baseline, set_threads, write_json

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
    ["digits-graded", "parity"], [0, 1, 2], ["ppo", "a2c", "dqn", "reinforce"], 40_000, 20, 10, 0.005, "0,0.02",
    [0.0, 0.0025, 0.005, 0.01, 0.02],
    # Parity: Model 1-3 reach 1.000 within 10 epochs, and the LSTM's solves make its epochs and
    # its exact oracle dear on a CPU, hence fewer baseline epochs and an oracle on 400 samples. Its
    # lambda is larger because an L1 solve there costs several plain passes: at 0.005 repeating a
    # converged layer was nearly free and PPO never stopped (benchmarks/README.md).
    per_dataset={"parity": dict(baseline_epochs=10, oracle_limit=400, lam=0.05, lam_range="0,0.1",
                                lam_grid=[0.0, 0.025, 0.05, 0.1])},
)
QUICK = Plan(["digits-graded"], [0], ["ppo", "reinforce"], 512, 1, 1, 0.005, "0,0.02", [0.0, 0.01], num_envs=8, oracle_limit=48)


SMALL_BUDGET_FLAGS = {
    "ppo": ["--n-steps", "32", "--batch-size", "64"],
    "a2c": ["--n-steps", "2"],
    "dqn": ["--batch-size", "64", "--learning-starts", "64"],
    "reinforce": ["--n-steps", "4"],
}
"""Each algorithm's settings for budgets under 2048 steps, so that a quick run still updates."""


def _level_compute(per_difficulty: dict) -> dict[str, float]:
    return {str(k): float(v["compute"]) for k, v in sorted(per_difficulty.items(), key=lambda kv: int(kv[0]))}


def _train_agent(plan: Plan, dataset: str, algo: str, seed: int, run_dir: Path, lam_range: str = "") -> dict:
    argv = [
        "--algo", algo, "--dataset", dataset, "--seed", str(seed), "--total-timesteps", str(plan.budget),
        "--num-envs", str(plan.num_envs), "--pretrain-epochs", str(plan.pretrain_epochs), "--lam", str(plan.lam),
        "--logdir", str(run_dir.parent), "--run-name", run_dir.name, "--no-progress", "--checkpoint-freq", "0",
        # every agent of a seed starts from the same warmed-up main model; warm it up once
        "--warmup-cache", str(run_dir.parent / "warmup"),
    ]
    if lam_range:
        argv += ["--lam-range", lam_range]
    if plan.budget < 2048:
        argv += SMALL_BUDGET_FLAGS[algo]
    return train.main(argv)


def _agent_oracle(run_dir: Path, limit: int | None) -> dict:
    engine = load_run(run_dir, "cpu").engine
    model, splits = engine.model, engine.splits
    if limit is not None:
        splits = splits.head(1, limit)
    return oracle(model, splits, max_steps=engine.max_steps).as_dict()


def run_seed(plan: Plan, dataset: str, seed: int, work_dir: Path) -> dict:
    plan = plan.for_dataset(dataset)
    entry: dict[str, Any] = {
        "dataset": dataset, "seed": seed, "baselines": {}, "agents": {},
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
        {"lam": r["lam"], "accuracy": r["accuracy"], "compute_fraction": r["compute_fraction"],
         "time_ratio": r["seconds"] / r["fpi_all_seconds"], "level_compute": _level_compute(r["per_difficulty"])}
        for r in sweep["results"]
    ]
    return entry


def _mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size)}


def aggregate(entries: list[dict]) -> dict:
    out: dict[str, Any] = {}
    for dataset in sorted({e["dataset"] for e in entries}):
        rows = [e for e in entries if e["dataset"] == dataset]
        settings = [r.get("settings") for r in rows]
        if any(s != settings[0] for s in settings):
            raise SystemExit(f"error: the {dataset} seeds were run with different settings, refusing to average them: {settings}")
        table: dict[str, Any] = {"settings": settings[0], "seeds": [r["seed"] for r in rows]}
        for name in BASELINES:
            table[name] = {k: _mean_std([r["baselines"][name][k] for r in rows]) for k in ("accuracy", "compute_fraction", "compute")}
        table["fixed_path_oracle"] = {k: _mean_std([r["fixed_path_oracle"][k] for r in rows]) for k in ("accuracy", "compute_fraction")}
        m3_acc = table["model3"]["accuracy"]["mean"]
        for algo in rows[0]["agents"]:
            agent = {k: _mean_std([r["agents"][algo][k] for r in rows]) for k in
                     ("accuracy", "compute_fraction", "time_ratio", "gap_to_model3", "oracle_accuracy", "gap_to_oracle",
                      "oracle_compute_fraction")}
            levels = sorted(rows[0]["agents"][algo]["level_compute"], key=int)
            agent["level_compute"] = {lv: _mean_std([r["agents"][algo]["level_compute"][lv] for r in rows]) for lv in levels}
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
            {"lam": lam, **{k: _mean_std([r["lambda_agent"][i][k] for r in rows]) for k in ("accuracy", "compute_fraction", "time_ratio")}}
            for i, lam in enumerate(lams)
        ]
        out[dataset] = table
    return out


def pareto_figure(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(summary)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4), dpi=130, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        t = summary[dataset]
        xs = [t[m]["compute_fraction"]["mean"] for m in BASELINES]
        ys = [t[m]["accuracy"]["mean"] for m in BASELINES]
        ax.plot(xs, ys, "s--", color="#777777", label="Model 0-3 (fixed paths)")
        for m, x, y in zip(BASELINES, xs, ys):
            ax.annotate(m.replace("model", "M"), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        for key, value in t.items():
            if key.startswith("agent_"):
                ax.errorbar(value["compute_fraction"]["mean"], value["accuracy"]["mean"], xerr=value["compute_fraction"]["std"],
                            yerr=value["accuracy"]["std"], fmt="o", capsize=2, label=key.replace("agent_", "").upper())
        lam = t["lambda_agent"]
        if lam:
            ax.plot([p["compute_fraction"]["mean"] for p in lam], [p["accuracy"]["mean"] for p in lam], "^-", color="#8c564b", label="PPO, one agent across λ")
        fo = t["fixed_path_oracle"]
        ax.plot(fo["compute_fraction"]["mean"], fo["accuracy"]["mean"], "*", markersize=11, color="#d62728", label="oracle over Model 0-3")
        ax.axvline(0.4, linestyle=":", color="black", alpha=0.6, label="target: compute ≤ 0.4")
        ax.set_xlabel("compute (fraction of FPI on every layer)")
        ax.set_ylabel("test accuracy")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _print_table(result: dict) -> None:
    for dataset, t in result["summary"].items():
        n = t["model3"]["accuracy"]["n"]
        print(f"\n{dataset}  (mean ± std over {n} seed(s); compute = fraction of FPI on every layer)")
        print(f"{'method':>22} | {'accuracy':>15} | {'compute':>15} | {'wall/FPI-all':>12} | compute per level (easy..hard)")
        for m in BASELINES:
            print(f"{m:>22} | {t[m]['accuracy']['mean']:.4f}±{t[m]['accuracy']['std']:.4f} | {t[m]['compute_fraction']['mean']:.3f}±{t[m]['compute_fraction']['std']:.3f} | {'':>12} |")
        for key, a in t.items():
            if key.startswith("agent_"):
                lv = " ".join(f"{v['mean']:.2f}" for v in a["level_compute"].values())
                print(f"{key:>22} | {a['accuracy']['mean']:.4f}±{a['accuracy']['std']:.4f} | {a['compute_fraction']['mean']:.3f}±{a['compute_fraction']['std']:.3f} | "
                      f"{a['time_ratio']['mean']:12.3f} | {lv} | oracle gap {a['gap_to_oracle']['mean']:+.4f} | targets {'met' if a['target']['all'] else 'missed'}")
        for p in t["lambda_agent"]:
            print(f"{'λ-agent @ ' + format(p['lam'], 'g'):>22} | {p['accuracy']['mean']:.4f}±{p['accuracy']['std']:.4f} | {p['compute_fraction']['mean']:.3f}±{p['compute_fraction']['std']:.3f} | {p['time_ratio']['mean']:12.3f} |")
        fo = t["fixed_path_oracle"]
        print(f"{'oracle over Model 0-3':>22} | {fo['accuracy']['mean']:.4f} | {fo['compute_fraction']['mean']:.3f} |")


def _pm(stat: dict, digits: int) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}" if stat["n"] > 1 else f"{stat['mean']:.{digits}f}"


def markdown_tables(summary: dict) -> str:
    """The summary as Markdown tables (mean ± std over seeds), ready for a results page."""
    lines = []
    for dataset, t in summary.items():
        lines += [f"#### {dataset} ({len(t.get('seeds', []))} seeds)", "",
                  "| method | test accuracy | compute (fraction of Model 3) | wall / FPI-all | compute per level, easy → hard (plain passes) | hard / easy | accuracy gap to oracle | oracle's compute |",
                  "|---|---|---|---|---|---|---|---|"]
        names = {"model0": "Model 0 (plain)", "model1": "Model 1", "model2": "Model 2", "model3": "Model 3 (FPI everywhere)"}
        for m, label in names.items():
            lines.append(f"| {label} | {_pm(t[m]['accuracy'], 4)} | {_pm(t[m]['compute_fraction'], 3)} | | | | | |")
        for key, a in t.items():
            if key.startswith("agent_"):
                levels = " / ".join(f"{v['mean']:.2f}" for v in a["level_compute"].values())
                lines.append(f"| {key[6:].upper()} | {_pm(a['accuracy'], 4)} | {_pm(a['compute_fraction'], 3)} | {_pm(a['time_ratio'], 3)} | "
                             f"{levels} | {a['hard_over_easy_compute']:.2f} | {_pm(a['gap_to_oracle'], 4)} | {_pm(a['oracle_compute_fraction'], 3)} |")
        for p in t["lambda_agent"]:
            lines.append(f"| λ-conditioned PPO at λ = {p['lam']:g} | {_pm(p['accuracy'], 4)} | {_pm(p['compute_fraction'], 3)} | {_pm(p['time_ratio'], 3)} | | | | |")
        fo = t["fixed_path_oracle"]
        lines += [f"| oracle over Model 0-3 | {_pm(fo['accuracy'], 4)} | {_pm(fo['compute_fraction'], 3)} | | | | | |", ""]
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


def merge(paths: list[Path]) -> list[dict]:
    """Per-seed entries of several result files (e.g. seeds run as separate processes), refusing
    files that are not this benchmark's output and duplicate (dataset, seed) pairs."""
    entries: list[dict] = []
    seen: dict[tuple[str, int], Path] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"error: cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("benchmark") != "adaptive_vs_fixed" or not isinstance(data.get("per_seed"), list):
            raise SystemExit(f"error: {path} is not an adaptive_vs_fixed result (no 'per_seed' list)")
        for entry in data["per_seed"]:
            key = (entry["dataset"], int(entry["seed"]))
            if key in seen:
                raise SystemExit(f"error: {key[0]} seed {key[1]} appears in both {seen[key]} and {path}")
            seen[key] = path
            if "settings" not in entry and isinstance(data.get("plan"), dict):  # files written before settings were recorded per seed
                entry = {**entry, "settings": {k: data["plan"].get(k) for k in SETTINGS}}
            entries.append({**entry, "_source": str(path)})
    return entries


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="one dataset, one seed, tiny budgets")
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
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="aggregate the per-seed entries of earlier result files instead of running")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--retime", action="store_true",
                        help="with --merge: re-measure each agent's wall time from its saved run (checks accuracy and compute reproduce)")
    parser.add_argument("--timing-repeats", type=int, default=5, help="with --retime: timed rollouts per policy (median)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/adaptive_vs_fixed"), help="where runs, JSON and the figure go")
    add_runtime_flags(parser, device=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.retime and not args.merge:
        raise SystemExit("error: --retime works on result files given with --merge")
    if args.merge:
        entries = merge(args.merge)
        if args.retime:
            for path in args.merge:
                own = [e for e in entries if e.get("_source") == str(path)]
                retime(own, Path(path).parent, args.timing_repeats)
        for entry in entries:
            entry.pop("_source", None)
        result = {"benchmark": "adaptive_vs_fixed", "merged_from": [str(p) for p in args.merge],
                  "retimed": bool(args.retime), "summary": aggregate(entries), "per_seed": entries}
        _write(result, args.out_dir)
    else:
        plan = replace(QUICK if args.quick else FULL)
        overrides = {name: getattr(args, name) for name in
                     ("datasets", "seeds", "budget", "algos", "pretrain_epochs", "baseline_epochs", "oracle_limit", "lam", "lam_range")
                     if getattr(args, name) is not None}
        plan = replace(plan, **overrides, lambda_agent=not args.no_lambda_agent,
                       # explicit flags beat the per-dataset defaults
                       per_dataset={d: {k: v for k, v in o.items() if k not in overrides} for d, o in plan.per_dataset.items()})
        entries = []
        start = time.perf_counter()
        for dataset in plan.datasets:
            for seed in plan.seeds:
                entries.append(run_seed(plan, dataset, seed, args.out_dir))
                result = {"benchmark": "adaptive_vs_fixed", "plan": {k: v for k, v in vars(plan).items()},
                          "seconds": time.perf_counter() - start, "summary": aggregate(entries), "per_seed": entries}
                _write(result, args.out_dir)
    if args.json:
        print(json.dumps(result))
    elif args.markdown:
        print(markdown_tables(result["summary"]))
    else:
        _print_table(result)
        print(f"\nresults: {args.out_dir / 'adaptive_vs_fixed.json'}, figure: {args.out_dir / 'pareto.png'}")
    return result


if __name__ == "__main__":
    main()
