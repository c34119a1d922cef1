"""Which observation features make the oracle's decisions learnable? The learnable ceiling with and
without each feature group, on one saved run's co-trained main model.

The ceiling (agents/imitation.py) imitates the oracle's action sequences from the observation
alone (train split in, test split out). A feature group that matters raises its accuracy or lowers
its compute; the residual probe's cost is charged in the compute of every variant that observes
residuals.

    python benchmarks/observation_ablation.py runs/<run-name>            # a table
    python benchmarks/observation_ablation.py runs/<run-name> --json     # one JSON line
    python benchmarks/observation_ablation.py --quick --json             # smoke size (tests)
"""

from __future__ import annotations

import time
from pathlib import Path

import harness

from agents.evaluate import load_run
from agents.imitation import learnable_ceiling
from dynalay_env import DEFAULT_OBSERVATION, RewardConfig, build_engine
from main_models import DatasetSplits, FPINetwork, set_threads, write_json

VARIANTS: dict[str, tuple[str, ...]] = {
    "default (activations, lam, progress, confidence)": DEFAULT_OBSERVATION,
    "without activations": tuple(g for g in DEFAULT_OBSERVATION if g != "activations"),
    "without confidence": tuple(g for g in DEFAULT_OBSERVATION if g != "confidence"),
    "with margin/entropy": DEFAULT_OBSERVATION + ("margin",),
    "with iterated flags": DEFAULT_OBSERVATION + ("iterated",),
    "with residuals (probe charged)": DEFAULT_OBSERVATION + ("residuals",),
    "everything": DEFAULT_OBSERVATION + ("margin", "iterated", "residuals"),
}


def ablate(
    model: FPINetwork, splits: DatasetSplits, *, max_steps: int, lam: float, train_limit: int | None, epochs: int, seed: int
) -> list[dict]:
    """The learnable ceiling for each of :data:`VARIANTS` of the observation."""
    rows = []
    for name, groups in VARIANTS.items():
        start = time.perf_counter()
        ceiling = learnable_ceiling(
            model,
            splits,
            max_steps=max_steps,
            observation=groups,
            reward=RewardConfig(lam=lam),
            train_limit=train_limit,
            epochs=epochs,
            seed=seed,
        )
        rows.append(
            {
                "variant": name,
                "observation": list(groups),
                "accuracy": ceiling.report.accuracy,
                "compute_fraction": ceiling.report.compute_fraction,
                "train_action_accuracy": ceiling.train_action_accuracy,
                "demonstrations": ceiling.demonstrations,
                "seconds": time.perf_counter() - start,
                "per_difficulty": {str(k): v for k, v in ceiling.report.per_difficulty.items()},
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, quick="a briefly warmed-up digits model instead of a run (smoke test)")
    parser.add_argument("run_dir", nargs="?", type=Path, help="a saved run (its co-trained main model and data)")
    parser.add_argument("--train-limit", type=int, default=4000, help="train samples the oracle is imitated on")
    parser.add_argument("--epochs", type=int, default=30, help="imitation epochs")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        engine = build_engine(1, dataset="digits", pretrain_epochs=1, progress=False, cotrain=False, seed=0, train_alternatives=("plain",))
        source, lam, train_limit, epochs, seed = "quick digits model", engine.reward.lam, 200, 5, 0
    elif args.run_dir is not None:
        loaded = load_run(args.run_dir, "cpu")
        engine, source = loaded.engine, str(args.run_dir)
        lam, train_limit, epochs, seed = loaded.settings.env.lam, args.train_limit, args.epochs, loaded.settings.run.seed
    else:
        parser.error("give a run directory, or --quick")
    if args.out is not None and args.out.exists():
        parser.error(f"{args.out} exists; choose another --out")
    rows = ablate(engine.model, engine.splits, max_steps=engine.max_steps, lam=lam, train_limit=train_limit, epochs=epochs, seed=seed)
    result = {
        "benchmark": "observation_ablation",
        "source": source,
        "dataset": engine.splits.name,
        "lam": lam,
        "train_limit": train_limit,
        "rows": rows,
    }
    if args.out is not None:
        write_json(args.out, result)
    return harness.show(result, args.json, _table)


def _table(result: dict) -> list[str]:
    return [
        f"learnable ceiling on {result['source']} ({result['dataset']}, lambda {result['lam']:g}, {result['train_limit']} train samples imitated)",
        f"{'observation':>50} | accuracy | compute | agreement on train",
        *(
            f"{r['variant']:>50} | {r['accuracy']:.4f}   | {r['compute_fraction']:.3f}   | {r['train_action_accuracy']:.3f}"
            for r in result["rows"]
        ),
    ]


if __name__ == "__main__":
    main()
