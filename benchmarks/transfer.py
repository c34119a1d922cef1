"""Harder than training: an agent, its co-trained main model and a tuned confidence rule, fitted on one
difficulty range and evaluated on a harder one with no retraining.

For each task and seed it trains one PPO run with agents/train.py on the training range (the task's
usual flags), then, on the same frozen weights:

* tunes the confidence rule on the training range: over tau and the two layer orders the agent
  comparison uses (bottom-up, and the order of the cheapest fixed path within 0.5 points of FPI
  on every layer), the point of least compute whose accuracy is within 0.5 points of FPI on every
  layer; where none is, the most accurate. It is tuned on the training range's test split, which
  the harder sets never touch;
* evaluates, on the training range and on each harder set: the agent, the tuned rule (its tau and
  order kept), FPI on every layer and the plain path: accuracy, compute (in plain passes of that
  set's inputs, and as a fraction of FPI on every layer on the same set), FPI steps per episode,
  the action distribution, and all of it per difficulty level; and the rule's whole tau curve on
  that set, for the rule's accuracy at the agent's compute (a rule re-tuned on the test set: an
  upper bound on any deployable tau).

The main model is rebuilt for each set's input size and given the trained weights
(``agents.evaluate.load_run(data=...)``): the grid-LSTM's and the FPI-LSTM's weights do not depend
on the grid's size or the string's length; their cost model and their solver's iteration cap do,
and follow the set.

Tasks: grid-lookup trained on 6x6 grids, tested on 8x8 and 10x10; parity trained on lengths 1-15,
tested on 16-30 (front-padded to 30).

Writes ``transfer.json`` (every seed, then the mean +- std summary and the targets) into
``--out-dir`` after each seed; the same command run again continues after the seeds the file
holds, and a run directory that holds a finished run (its eval.json) is evaluated, not trained
again.

    python benchmarks/transfer.py --tasks grid-lookup parity --seeds 0 1 2 --out-dir runs/transfer
    python benchmarks/transfer.py --quick                        # CPU smoke size (tests use it)
    python benchmarks/transfer.py --merge runs/a/transfer.json runs/b/transfer.json --out-dir runs/t

It prints the summary as Markdown tables (``--json``: the whole result as one line).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import harness
import torch

from agents import train
from agents.compare import CONFIDENCE_RULE_OBSERVATION, TOLERANCE, fixed_path_points
from agents.evaluate import LoadedRun, load_run, load_test_data
from dynalay_env import EvalReport, evaluate_policy
from dynalay_env.baselines import accuracy_at_compute, confidence_threshold, rule_orders, sweep
from dynalay_env.engine import ObservationLayout
from main_models import write_json
from main_models.data.grid_lookup import GRID_KINDS

TRAIN_SET = "train range"
"""The name of the training range's own test split among each seed's sets."""
WITHIN = 0.02
"""The bar: the agent within 2 points of FPI on every layer on each harder set."""


@dataclass
class TransferPlan:
    dataset: str
    train_range: str
    """What the run trains on, in words (the dataset's defaults)."""
    test_sets: dict[str, dict[str, Any]]
    """Harder sets, easiest first: name -> the dataset loader's options."""
    flags: list[str] = field(default_factory=list)
    """train.py flags beyond the dataset, the seed and where the run goes."""
    test_limit: int | None = None
    """Evaluate on the first N test samples of every set (None: all)."""
    train_options: dict[str, Any] = field(default_factory=dict)
    """Loader options of the training range's evaluation set (empty: the run's own test split)."""


TASKS: dict[str, TransferPlan] = {
    # the grid-lookup flags of benchmarks/introspection.py (the task's defaults, spelled out)
    "grid-lookup": TransferPlan(
        "grid-lookup",
        "6x6 grids",
        {"8x8": {"size": 8}, "10x10": {"size": 10}},
        flags=["--lam", "0.05", "--warmup-stop-prob", "0.3", "--train-alternatives", "plain"],
    ),
    "parity": TransferPlan(
        "parity",
        "lengths 1-15",
        {"lengths 16-30": {"min_len": 16, "max_len": 30}},
        flags=["--lam", "0.05", "--train-alternatives", "plain"],
    ),
}
# quick: no warm-up (one epoch of grid-lookup's 10000 training grids was a third of the smoke run), the agent
# and its co-trained main model straight from their initial weights; a smoke test, not a measurement
QUICK_FLAGS = ["--total-timesteps", "256", "--pretrain-epochs", "0", "--imitation-samples", "64", "--imitation-every", "0"]
QUICK_FLAGS += ["--n-steps", "32", "--batch-size", "64"]
QUICK_LIMIT = 96


def run_dir(out_dir: Path, plan: TransferPlan, seed: int) -> Path:
    return out_dir / f"{plan.dataset}-s{seed}"


def train_argv(plan: TransferPlan, seed: int, out_dir: Path) -> list[str]:
    """What train.py is run with (recorded in each seed's entry)."""
    run = run_dir(out_dir, plan, seed)
    return [
        "--algo",
        "ppo",
        "--dataset",
        plan.dataset,
        "--seed",
        str(seed),
        "--logdir",
        str(run.parent),
        "--run-name",
        run.name,
        "--no-progress",
        "--overwrite",
        "--checkpoint-freq",
        "0",
        "--warmup-cache",
        str(run.parent / "warmup"),
        *plan.flags,
    ]


def level_names(dataset: str, options: dict[str, Any], levels: list[int]) -> dict[int, str]:
    """What each difficulty level of a set is, for the tables: the query kind on grid-lookup, the
    lengths it holds on parity."""
    if dataset == "grid-lookup":
        return {lv: GRID_KINDS[lv] for lv in levels}
    if dataset == "parity":
        lo, hi, n = int(options.get("min_len", 1)), int(options.get("max_len", 15)), int(options.get("levels", 5))
        names = {}
        for lv in levels:
            lengths = [k for k in range(lo, hi + 1) if ((k - lo) * n) // (hi - lo + 1) == lv]
            names[lv] = f"lengths {lengths[0]}-{lengths[-1]}" if lengths else str(lv)
        return names
    return {lv: str(lv) for lv in levels}


def _brief(report: EvalReport, reference: EvalReport, names: dict[int, str]) -> dict[str, Any]:
    """What the tables need of one policy on one set; per level, compute is also given as a fraction
    of FPI on every layer on that level's samples."""
    per_level = {}
    for lv, row in sorted(report.per_difficulty.items()):
        ref = reference.per_difficulty[lv]["compute"]
        per_level[str(lv)] = {
            "name": names.get(int(lv), str(lv)),
            "accuracy": row["accuracy"],
            "compute": row["compute"],
            "compute_fraction": row["compute"] / ref,
            "count": row["count"],
            "sequences": report.sequences_per_level.get(lv, {}),
        }
    return {
        "accuracy": report.accuracy,
        "compute": report.compute,
        "compute_fraction": report.compute_fraction,
        "fpi_steps": report.mean_episode_length,
        "action_frequency": report.action_frequency,
        "per_level": per_level,
    }


def tune_rule(curve: list[dict], fpi_all_accuracy: float) -> dict[str, Any]:
    """The confidence rule's point of least compute within :data:`TOLERANCE` of FPI on every layer;
    where no point is, the most accurate (then the cheapest)."""
    reaching = [p for p in curve if p["accuracy"] >= fpi_all_accuracy - TOLERANCE]
    pick = min(reaching, key=lambda p: p["compute_fraction"]) if reaching else max(curve, key=lambda p: (p["accuracy"], -p["compute"]))
    return {"tau": pick["tau"], "order": list(pick["order"]), "reaches_fpi_all_accuracy": bool(reaching)}


def evaluate_set(loaded: LoadedRun, rule: dict[str, Any], orders: list[list[int]], names: dict[int, str]) -> dict[str, Any]:
    """The agent, the rule at its tuned tau and order, FPI on every layer and the plain path on the
    loaded run's test split, and the rule's tau curve there."""
    engine = loaded.engine
    model, splits, T = engine.model, engine.splits, engine.max_steps
    reward = engine.reward.fixed(float(loaded.settings.env.lam))
    every = list(range(1, engine.num_layers + 1))
    common = dict(reward=reward, max_steps=T, device=engine.device)
    reference = evaluate_policy(model, splits, every, observation=engine.layout.groups, **common)
    agent = evaluate_policy(model, splits, loaded.agent.policy(), observation=engine.layout.groups, reference=reference, **common)
    plain = evaluate_policy(model, splits, [], observation=engine.layout.groups, reference=reference, **common)
    layout = ObservationLayout(engine.num_layers, model.summary_dim, CONFIDENCE_RULE_OBSERVATION)
    tuned = confidence_threshold(layout, T, rule["tau"], rule["order"])
    ruled = evaluate_policy(model, splits, tuned, observation=CONFIDENCE_RULE_OBSERVATION, reference=reference, **common)
    curve = [
        point
        for order in orders
        for point in sweep("confidence", model, splits, observation=CONFIDENCE_RULE_OBSERVATION, reference=reference, order=order, **common)
    ]
    at_agent = accuracy_at_compute(curve, agent.compute_fraction)
    return {
        "num_samples": agent.num_samples,
        "input_shape": list(splits.input_shape),
        "agent": _brief(agent, reference, names),
        "rule": _brief(ruled, reference, names),
        "fpi_all": _brief(reference, reference, names),
        "plain": _brief(plain, reference, names),
        "rule_curve": curve,
        # NaN where the curve does not reach down to the agent's compute: no rule point to compare with
        "rule_accuracy_at_agent_compute": None if at_agent != at_agent else at_agent,
    }


def _data(plan: TransferPlan, options: dict[str, Any]):  # noqa: ANN202 (a DatasetSplits)
    data = load_test_data(plan.dataset, options)
    return data.head(None, plan.test_limit) if plan.test_limit is not None else data


def run_seed(plan: TransferPlan, seed: int, out_dir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    run = run_dir(out_dir, plan, seed)
    argv = train_argv(plan, seed, out_dir)
    trained = (run / "eval.json").is_file()
    if not trained:
        train.main(argv)
    torch.manual_seed(seed)
    # the rule is tuned on the training range, where its orders come from too
    home = load_run(run, "cpu", _data(plan, plan.train_options))
    engine = home.engine
    model, T = engine.model, engine.max_steps
    reward = engine.reward.fixed(float(home.settings.env.lam))
    every = list(range(1, engine.num_layers + 1))
    reference = evaluate_policy(model, engine.splits, every, reward=reward, max_steps=T, device=engine.device)
    fixed = fixed_path_points(model, engine.splits, reference, reward=reward, max_steps=T, device=engine.device)
    reaching = [p for p in fixed.values() if p["accuracy"] >= reference.fpi_all_accuracy - TOLERANCE]
    cheapest = min(reaching, key=lambda p: p["compute_fraction"])["path"] if reaching else None
    orders = rule_orders(engine.num_layers, cheapest)
    curve = [
        point
        for order in orders
        for point in sweep(
            "confidence",
            model,
            engine.splits,
            observation=CONFIDENCE_RULE_OBSERVATION,
            reward=reward,
            max_steps=T,
            device=engine.device,
            reference=reference,
            order=order,
        )
    ]
    rule = tune_rule(curve, reference.fpi_all_accuracy)
    sets = {}
    for name, options in [(TRAIN_SET, plan.train_options), *plan.test_sets.items()]:
        loaded = home if name == TRAIN_SET else load_run(run, "cpu", _data(plan, options))
        levels = sorted(int(lv) for lv in loaded.engine.splits.difficulty_test.unique().tolist())
        sets[name] = {"options": options, **evaluate_set(loaded, rule, orders, level_names(plan.dataset, options, levels))}
    rule["fixed_paths_on_train_range"] = {
        k: {"accuracy": v["accuracy"], "compute_fraction": v["compute_fraction"]} for k, v in fixed.items()
    }
    return {
        "dataset": plan.dataset,
        "seed": seed,
        "plan": asdict(plan),
        "run": str(run),
        "train_argv": argv,
        "trained_here": not trained,
        "rule": rule,
        "sets": sets,
        "seconds": time.perf_counter() - start,
    }


POLICIES = ("agent", "rule", "fpi_all", "plain")
NUMBERS = ("accuracy", "compute", "compute_fraction", "fpi_steps")


def _policy_stats(rows: list[dict]) -> dict[str, Any]:
    """Mean +- std over seeds of one policy on one set: the numbers, each action's share, and per
    level the numbers and each sequence's share (a sequence a seed never chose counts as 0)."""
    out: dict[str, Any] = harness.stats(rows, NUMBERS)
    out["action_frequency"] = [harness.mean_std([r["action_frequency"][a] for r in rows]) for a in range(len(rows[0]["action_frequency"]))]
    levels: dict[str, Any] = {}
    for lv, first in rows[0]["per_level"].items():
        per = [r["per_level"][lv] for r in rows]
        names = sorted({s for p in per for s in p["sequences"]})
        sequences = {s: harness.mean_std([p["sequences"].get(s, 0.0) for p in per]) for s in names}
        levels[lv] = {
            "name": first["name"],
            "count": first["count"],
            **harness.stats(per, ("accuracy", "compute", "compute_fraction")),
            "sequences": dict(sorted(sequences.items(), key=lambda kv: -kv[1]["mean"])),
        }
    out["per_level"] = levels
    return out


def set_order(sets: dict[str, dict[str, Any]]) -> list[str]:
    """The sets from easiest to hardest: the training range, then by input size (a bigger grid, a
    longer string). Not their order in the file: result files are written with sorted keys."""
    return sorted(sets, key=lambda n: (n != TRAIN_SET, math.prod(sets[n]["input_shape"]), n))


def summarise(entries: list[dict]) -> dict[str, Any]:
    """Mean +- std over seeds per task and set, and the targets."""
    out: dict[str, Any] = {}
    for dataset, rows in harness.by_task(entries, "plan").items():
        t: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "plan": rows[0]["plan"]}
        t["rule"] = [{"seed": r["seed"], **{k: r["rule"][k] for k in ("tau", "order", "reaches_fpi_all_accuracy")}} for r in rows]
        t["set_order"] = set_order(rows[0]["sets"])
        t["sets"] = {}
        for name in t["set_order"]:
            per = [r["sets"][name] for r in rows]
            t["sets"][name] = {
                "options": per[0]["options"],
                "num_samples": per[0]["num_samples"],
                "input_shape": per[0]["input_shape"],
                **{p: _policy_stats([s[p] for s in per]) for p in POLICIES},
                "rule_accuracy_at_agent_compute": harness.mean_std([s["rule_accuracy_at_agent_compute"] for s in per]),
            }
        t["per_seed_targets"] = [{"seed": r["seed"], **targets({n: r["sets"][n] for n in t["set_order"]})} for r in rows]
        t["targets"] = targets({name: _means(t["sets"][name]) for name in t["set_order"]})
        out[dataset] = t
    return out


def _means(s: dict[str, Any]) -> dict[str, Any]:
    """A summarised set with each number replaced by its mean (what :func:`targets` reads)."""
    return {
        **{p: {k: s[p][k]["mean"] for k in NUMBERS} for p in POLICIES},
        "rule_accuracy_at_agent_compute": s["rule_accuracy_at_agent_compute"]["mean"],
    }


def targets(sets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The targets on one seed's sets (or on the means), in :func:`set_order`:

    * the agent's compute, in plain passes of each set's inputs, rises from set to set (and, apart,
      whether the FPI steps it chooses per input do: the solver alone makes compute rise, since a
      solve on a bigger input takes more iterations);
    * on each harder set, the agent's accuracy is within 2 points of FPI on every layer's there;
    * on each harder set it beats the tuned rule: more accurate than the rule's tau curve at the
      agent's compute (None where the curve does not reach down to it), and, apart, more accurate
      at no more compute than the rule at its tuned tau;
    * how much FPI on every layer itself loses from the training range to each harder set."""
    names = list(sets)
    home, harder = sets[names[0]], names[1:]
    computes = [sets[n]["agent"]["compute"] for n in names]
    steps = [sets[n]["agent"]["fpi_steps"] for n in names]
    out: dict[str, Any] = {
        "agent_compute_rises": all(b > a for a, b in zip(computes, computes[1:])),
        # apart from the solver: a solve of a bigger input takes more iterations whatever the agent chose
        "agent_fpi_steps_rise": all(b > a for a, b in zip(steps, steps[1:])),
    }
    for n in harder:
        s = sets[n]
        agent, rule, fpi = s["agent"], s["rule"], s["fpi_all"]
        at = s["rule_accuracy_at_agent_compute"]
        out[n] = {
            "agent_within_2_points_of_fpi_all": agent["accuracy"] >= fpi["accuracy"] - WITHIN,
            "agent_above_rule_curve_at_its_compute": None if at is None else agent["accuracy"] > at,
            "agent_dominates_tuned_rule": agent["accuracy"] >= rule["accuracy"] and agent["compute_fraction"] <= rule["compute_fraction"],
            "fpi_all_accuracy_drop": home["fpi_all"]["accuracy"] - fpi["accuracy"],
            "agent_compute_ratio_to_train_range": agent["compute"] / home["agent"]["compute"],
        }
    return out


def _action_cell(stat: list[dict]) -> str:
    labels = ["NOP"] + [f"L{i}" for i in range(1, len(stat))]
    return " / ".join(f"{lab} {s['mean']:.2f}" for lab, s in zip(labels, stat))


def _sequences_cell(seqs: dict[str, dict], top: int = 3) -> str:
    return ", ".join(f"{name} {s['mean']:.2f}" for name, s in list(seqs.items())[:top])


LABELS = {
    "agent": "**PPO agent**",
    "rule": "confidence rule, tuned on the training range",
    "fpi_all": "FPI on every layer",
    "plain": "plain path",
}


def markdown(summary: dict) -> str:
    pm = harness.pm
    lines: list[str] = []
    for task, t in summary.items():
        taus = ", ".join(f"τ {r['tau']:g} order {','.join(map(str, r['order']))}" for r in t["rule"])
        lines += [f"#### {task}: trained on {t['plan']['train_range']} (seeds {', '.join(map(str, t['seeds']))})", ""]
        lines += [f"Tuned rule per seed: {taus}.", ""]
        for name in t["set_order"]:
            s = t["sets"][name]
            shape = "x".join(map(str, s["input_shape"]))
            lines += [f"**{name}** (inputs {shape}, {s['num_samples']} test samples)", ""]
            rows = [
                [
                    LABELS[p],
                    pm(s[p]["accuracy"], 4),
                    pm(s[p]["compute_fraction"]),
                    pm(s[p]["compute"], 2),
                    pm(s[p]["fpi_steps"], 2),
                    _action_cell(s[p]["action_frequency"]),
                ]
                for p in POLICIES
            ]
            lines += harness.markdown_table(
                ["policy", "accuracy", "compute (fraction of FPI on every layer)", "compute (plain passes)", "FPI steps", "actions"], rows
            )
            lines += ["", f"Rule's τ curve on this set, at the agent's compute: accuracy {pm(s['rule_accuracy_at_agent_compute'], 4)}.", ""]
            level_rows = []
            for lv, a in s["agent"]["per_level"].items():
                r, f = s["rule"]["per_level"][lv], s["fpi_all"]["per_level"][lv]
                level_rows.append(
                    [
                        f"{lv} {a['name']} ({a['count']})",
                        pm(a["accuracy"], 4),
                        pm(a["compute_fraction"]),
                        pm(a["compute"], 2),
                        pm(r["accuracy"], 4),
                        pm(r["compute_fraction"]),
                        pm(f["accuracy"], 4),
                        _sequences_cell(a["sequences"]),
                        _sequences_cell(r["sequences"]),
                    ]
                )
            lines += harness.markdown_table(
                [
                    "level (samples)",
                    "agent accuracy",
                    "agent compute",
                    "agent compute (plain passes)",
                    "rule accuracy",
                    "rule compute",
                    "FPI-all accuracy",
                    "agent's sequences",
                    "rule's sequences",
                ],
                level_rows,
            )
            lines.append("")
        lines += ["Targets (on the means): " + _targets_text(t["targets"]), ""]
        for per in t["per_seed_targets"]:
            lines += [f"- seed {per['seed']}: " + _targets_text({k: v for k, v in per.items() if k != "seed"})]
        lines.append("")
    return "\n".join(lines)


def _targets_text(targets: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    parts = []
    for key, value in targets.items():
        if isinstance(value, dict):
            parts.append(f"{key}: " + ", ".join(f"{k} {show(v)}" for k, v in value.items()))
        else:
            parts.append(f"{key}: {show(value)}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> dict:
    quick = "a tiny run with no warm-up, 96 test samples per set (a smoke test, not a measurement)"
    parser = harness.seeds_parser(__doc__, quick=quick, tasks=TASKS, default_tasks=["grid-lookup", "parity"], out_dir="runs/transfer")
    args = harness.parse_seeds_args(parser, argv)
    jobs = []
    for task in [] if args.merge else args.tasks:
        plan = TASKS[task]
        if args.quick:
            plan = replace(plan, flags=plan.flags + QUICK_FLAGS, test_limit=QUICK_LIMIT)
        jobs += [harness.Job({"seed": seed, **asdict(plan)}, partial(run_seed, plan, seed, args.out_dir)) for seed in args.seeds]
    result = harness.collect(
        "transfer", args.out_dir, summarise, lambda r: write_json(args.out_dir / "transfer.json", r), merge=args.merge, jobs=jobs
    )
    return harness.show(result, args.json, lambda r: [markdown(r["summary"]), f"results: {args.out_dir / 'transfer.json'}"])


if __name__ == "__main__":
    main()
