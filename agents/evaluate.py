"""Evaluate a trained DynaLay run on the test split, with the main model frozen.

    python agents/evaluate.py runs/<run-name>                      # at the run's lambda
    python agents/evaluate.py runs/<run-name> --lam 0 0.005 0.02   # accuracy/compute trade-off
    python agents/evaluate.py runs/<run-name> --json               # one JSON object

    python agents/evaluate.py runs/<run-name> --baselines          # against fixed paths, exit rules, ceiling
    python agents/evaluate.py runs/<grid-run> --test-dataset-options size=10   # on another test set, no retraining

Reports accuracy, compute as a fraction of "FPI on every layer", per-action frequency, mean
episode length and, on datasets with known difficulty levels, compute per level. Writes
layer_selection_lam<λ>.png for each lambda (and tradeoff_lam<λ1>-<λ2>-....png for several) into the
run directory, and adds them to TensorBoard under eval/lam<...>/ (replacing that folder's earlier
events, so evaluating again does not duplicate points).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from agents.algorithms import ALGORITHMS, Agent, make_agent
from agents.checkpoint import CheckpointError, load_checkpoint
from agents.compare import compare_to_baselines, comparison_table
from agents.metrics import decisions_figure, layer_selection_figure, tradeoff_figure
from agents.settings import ResolvedSettings, settings_from_json
from dynalay_env import DynaLayEngine, EnvConfig, evaluate_policy, make_engine
from dynalay_env.evaluation import time_policy
from main_models import DatasetSplits, add_runtime_flags, load_dataset, resolve_device, set_threads


@dataclass
class LoadedRun:
    """A saved run as it was trained: its settings, its engine with the co-trained main model
    (frozen: no warm-up, no co-training) and its agent."""

    settings: ResolvedSettings
    engine: DynaLayEngine
    agent: Agent
    checkpoint: dict[str, Any]


def load_run(run_dir: Path, device: str | torch.device = "cpu", data: DatasetSplits | None = None) -> LoadedRun:
    """Rebuild the run in ``run_dir`` from its checkpoint; refused with :class:`CheckpointError`
    when the checkpoint is missing, corrupt or does not fit its own configuration.

    ``data`` replaces the run's dataset (its test split is what an evaluation runs on), e.g. the
    same task at another difficulty (:func:`load_test_data`). The main model is built for ``data``'s
    input shape and given the trained weights, so a grid-LSTM trained on 6x6 grids runs on 8x8
    ones and an FPI-LSTM trained on strings of 15 runs on 30: their weights do not depend on the
    size, while their FLOPs (the cost model) and their solver's iteration cap do, and both follow
    the new size. Data the weights do not fit (another vocabulary or class count) is refused."""
    dev = resolve_device(device)
    checkpoint = load_checkpoint(run_dir, map_location=dev)
    try:
        settings = settings_from_json(checkpoint["config"], ALGORITHMS)
        env = replace(settings.env, pretrain_epochs=0, cotrain=False)
        engine = make_engine(EnvConfig(**asdict(env)), settings.run.num_envs, device=dev, data=data)
        agent = make_agent(
            settings.run.algo,
            settings.agent,
            engine,
            reward_weight=settings.run.reward_weight,
            seed=settings.run.seed,
            device=dev,
            total_timesteps=settings.run.total_timesteps,
        )
        engine.load_state_dict(checkpoint["engine"])
    except (ValueError, TypeError) as err:
        if data is not None:
            raise CheckpointError(f"the run in {run_dir} does not fit the test data {data.name!r} ({data.meta}): {err}") from None
        raise CheckpointError(f"checkpoint in {run_dir} does not fit its own configuration: {err}") from None
    agent.load_state(checkpoint["agent"])
    return LoadedRun(settings, engine, agent, checkpoint)


def load_test_data(dataset: str, options: dict[str, Any], data_dir: str | None = None) -> DatasetSplits:
    """The run's dataset with loader ``options`` (e.g. ``{"size": 10}`` for grid-lookup, ``{"min_len":
    16, "max_len": 30}`` for parity), from the same seed the run's own data comes from (0)."""
    return load_dataset(dataset, data_dir, seed=0, **options)


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as loader options; a value is read as JSON where it parses (10, 0.5,
    true, [1, 2]) and kept as a string otherwise."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"a dataset option is KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def evaluate_run(
    run_dir: Path,
    lams: Sequence[float] | None = None,
    device: str = "auto",
    figures: bool = True,
    timing_repeats: int = 1,
    baselines: bool = False,
    ceiling_train_limit: int | None = 4000,
    baseline_test_limit: int | None = None,
    residual_rule: bool = False,
    data: DatasetSplits | None = None,
) -> dict:
    """Evaluate the run in ``run_dir`` at each of ``lams`` (default: its own lambda) on its test split,
    or on ``data``'s (see :func:`load_run`), with no retraining; the module docstring says what it
    reports."""
    loaded = load_run(run_dir, device, data)
    settings, engine = loaded.settings, loaded.engine
    lams = list(lams) if lams else [settings.env.lam]
    if any(lam < 0 for lam in lams):
        raise ValueError(f"lambda values must be >= 0, got {lams}")
    policy = loaded.agent.policy()
    rollout = dict(max_steps=engine.max_steps, observation=engine.layout.groups, device=engine.device)
    # FPI on every layer does not read lambda: one reference serves every lambda
    reference = evaluate_policy(engine.model, engine.splits, list(range(1, engine.num_layers + 1)), **rollout)
    results = []
    for lam in lams:
        reward = engine.reward.fixed(float(lam))
        report = evaluate_policy(engine.model, engine.splits, policy, reward=reward, reference=reference, **rollout)
        timing = time_policy(engine.model, engine.splits, policy, reward=reward, repeats=timing_repeats, **rollout)
        results.append(report.timed(timing).as_dict())
    algo, timesteps = settings.run.algo, int(loaded.checkpoint["timesteps"])
    out = {
        "run_dir": str(run_dir),
        "algo": algo,
        "timesteps": timesteps,
        "dataset": settings.env.dataset,
        **({"test_data": engine.splits.meta} if data is not None else {}),
        "trained_lam": settings.env.lam,
        "trained_lam_range": settings.env.lam_range,
        "results": results,
    }
    if baselines:
        out["comparison"] = [
            compare_to_baselines(
                engine.model,
                engine.splits,
                policy,
                reward=engine.reward.fixed(float(lam)),
                max_steps=engine.max_steps,
                observation=engine.layout.groups,
                device=engine.device,
                ceiling_train_limit=ceiling_train_limit,
                test_limit=baseline_test_limit,
                seed=settings.run.seed,
                residual_rule=residual_rule,
            )
            for lam in lams
        ]
    if figures:
        out["figures"] = _write_figures(run_dir, results, algo, timesteps)
    return out


def _lam_label(lams: Sequence[float]) -> str:
    return "lam" + "-".join(f"{lam:g}" for lam in lams)


def _write_figures(run_dir: Path, results: list[dict], algo: str, step: int) -> list[str]:
    """One layer-selection figure per lambda and, for several, the trade-off figure, each named by
    the lambdas it shows (layer_selection_lam0.005.png, tradeoff_lam0-0.005-0.02.png). TensorBoard
    gets them in eval/<the same name>/, whose earlier event files are replaced, so evaluating a run
    again does not repeat its points."""
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    label = _lam_label([r["lam"] for r in results])
    events = run_dir / "eval" / label
    events.mkdir(parents=True, exist_ok=True)
    for old in events.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(str(events))
    written = []

    def save(fig, name: str, tag: str) -> None:
        path = run_dir / f"{name}.png"
        fig.savefig(path)
        written.append(str(path))
        writer.add_figure(tag, fig, step)
        plt.close(fig)

    for result in results:
        one = _lam_label([result["lam"]])
        title = f"{algo}, lambda {result['lam']:g}"
        save(layer_selection_figure(result["action_frequency"], title=title), f"layer_selection_{one}", f"eval/layer_selection/{one}")
        save(
            decisions_figure({int(k): v for k, v in result["actions_per_step"].items()}, title=title),
            f"decisions_{one}",
            f"eval/decisions/{one}",
        )
    if len(results) > 1:
        save(tradeoff_figure(results, reference=results[0], title=f"{algo}: one agent across lambda"), f"tradeoff_{label}", "eval/tradeoff")
    writer.close()
    return written


def _table(out: dict) -> str:
    lines = [f"{out['algo']} run {out['run_dir']} after {out['timesteps']} steps, dataset {out['dataset']}"]
    if "test_data" in out:
        lines.append(f"tested on: {out['test_data']}")
    lines.append(f"{'lambda':>8} | {'accuracy':>8} | {'compute':>8} | {'fraction':>8} | {'ep.len':>6} | actions (NOP, L1..)")
    for r in out["results"]:
        freq = " ".join(f"{v:.2f}" for v in r["action_frequency"])
        lines.append(
            f"{r['lam']:>8g} | {r['accuracy']:>8.4f} | {r['compute']:>8.3f} | {r['compute_fraction']:>8.3f} | "
            f"{r['mean_episode_length']:>6.2f} | {freq}"
        )
        for level, row in sorted(r["per_difficulty"].items()):
            lines.append(
                f"{'':>8}   difficulty {level}: accuracy {row['accuracy']:.4f}, compute {row['compute']:.3f} ({row['count']} samples)"
            )
        for level, shares in sorted(r["sequences_per_level"].items()):
            chosen = ", ".join(f"{name} {share:.2f}" for name, share in shares.items())
            lines.append(f"{'':>8}   sequences{'' if int(level) == -1 else f' at difficulty {level}'}: {chosen}")
    ref = out["results"][0]
    lines.append(f"FPI on every layer: accuracy {ref['fpi_all_accuracy']:.4f}, compute {ref['fpi_all_compute']:.3f} straightforward passes")
    for comparison in out.get("comparison", []):
        lines.append(comparison_table(comparison))
    if out.get("figures"):
        lines.append("figures: " + ", ".join(out["figures"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory under runs/")
    parser.add_argument("--lam", type=float, nargs="+", help="lambda values to evaluate at (default: the run's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-figures", action="store_true", help="do not write PNG figures")
    add_runtime_flags(parser)
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also evaluate every fixed path, the confidence exit rule, the oracle and the learnable "
        "ceiling on the same main model, with the headroom and the target checks",
    )
    parser.add_argument(
        "--residual-rule",
        action="store_true",
        help="with --baselines: also sweep the residual-threshold exit rule (it pays for a residual probe every step, "
        "and is the slowest part of the comparison)",
    )
    parser.add_argument(
        "--ceiling-train-limit", type=int, default=4000, help="with --baselines: train samples the learnable ceiling imitates the oracle on"
    )
    parser.add_argument("--baseline-test-limit", type=int, help="with --baselines: compare on the first N test samples (default: all)")
    parser.add_argument(
        "--timing-repeats",
        type=int,
        default=1,
        help="timed rollouts of the agent and of FPI on every layer; wall "
        "times are their median, 0 times nothing (benchmarks/inference_time.py measures wall time properly)",
    )
    parser.add_argument(
        "--test-dataset-options",
        nargs="+",
        metavar="KEY=VALUE",
        help="evaluate on the run's dataset loaded with these options instead of its own test split, e.g. size=10 (grid-lookup) "
        "or min_len=16 max_len=30 (parity): a harder test set, with no retraining",
    )
    args = parser.parse_args(argv)
    try:
        set_threads(args.threads)
        data = None
        if args.test_dataset_options:
            options = parse_options(args.test_dataset_options)
            env = load_checkpoint(args.run_dir)["config"]["env"]
            data = load_test_data(env["dataset"], options, env.get("data_dir"))
        out = evaluate_run(
            args.run_dir,
            args.lam,
            args.device,
            figures=not args.no_figures,
            timing_repeats=args.timing_repeats,
            baselines=args.baselines,
            ceiling_train_limit=args.ceiling_train_limit,
            baseline_test_limit=args.baseline_test_limit,
            residual_rule=args.residual_rule,
            data=data,
        )
    except (CheckpointError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(out) if args.json else _table(out))
    return out


if __name__ == "__main__":
    main()
