"""How warm-up path sampling decides whether FPI is worth anything to the agent.

For each per-step stop probability p of the warm-up sampler (p = 0: every warm-up path is a full
budget of random FPI steps; p = 1: only the plain one-application path), pretrain a fresh main
model, then report the test accuracy and compute of fixed paths: plain (Model 0), FPI on L1,
L1+L2, and every layer (Model 3).

    python benchmarks/warmup_paths.py            # 20 epochs, p in 0, 0.3, 0.6, 1
    python benchmarks/warmup_paths.py --quick --json
"""

from __future__ import annotations

import time

import harness

from dynalay_env import build_engine, evaluate_policy
from main_models import MainModelTrainer, set_threads

PATHS = {"plain": [], "fpi_L1": [1], "fpi_L1_L2": [1, 2], "fpi_all": [1, 2, 3]}


def run(epochs: int, stop_probs: list[float], seed: int, train_limit: int | None = None) -> dict:
    """Each row's model is warmed up on the first ``train_limit`` training samples (None: all)."""
    rows = []
    for p in stop_probs:
        start = time.perf_counter()
        engine = build_engine(1, dataset="digits", cotrain=False, seed=seed, pretrain_epochs=0)
        trainer = MainModelTrainer(engine.model, engine.splits.x_train[:train_limit], engine.splits.y_train[:train_limit])
        losses = trainer.warm_up(epochs, max_steps=engine.max_steps, stop_prob=p, seed=seed)
        seconds = time.perf_counter() - start
        row = {"stop_prob": p, "warmup_seconds": round(seconds, 2), "final_loss": losses[-1]}
        for name, path in PATHS.items():
            report = evaluate_policy(engine.model, engine.splits, path, max_steps=engine.max_steps)
            row[f"{name}_accuracy"] = report.accuracy
            row[f"{name}_compute"] = report.compute
        rows.append(row)
    return {"epochs": epochs, "seed": seed, "dataset": "digits", "rows": rows}


def _table(result: dict) -> list[str]:
    lines = [
        f"warm-up {result['epochs']} epochs on digits, seed {result['seed']}; test accuracy (compute in plain passes)",
        f"{'stop p':>7} | " + " | ".join(f"{n:>16}" for n in PATHS) + " | seconds",
    ]
    for r in result["rows"]:
        cells = " | ".join(f"{r[f'{n}_accuracy']:.3f} ({r[f'{n}_compute']:4.1f})".rjust(16) for n in PATHS)
        lines.append(f"{r['stop_prob']:>7} | {cells} | {r['warmup_seconds']}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, quick="2 epochs on 512 training samples, p in 0 and 1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    result = run(2, [0.0, 1.0], args.seed, train_limit=512) if args.quick else run(20, [0.0, 0.3, 0.6, 1.0], args.seed)
    return harness.show(result, args.json, _table)


if __name__ == "__main__":
    main()
