"""FPI solvers side by side: plain (Picard) iteration against Anderson acceleration, per main model.

For each main model (mlp on digits, cnn on digits as 1x8x8 images, lstm on parity, grid-lstm on
grid-lookup) a model is trained once with the engine's warm-up (random FPI paths, plain iteration,
tol 1e-3; on the first 2,000 training samples, ``--train-limit``), then its test split is evaluated along the FPI-on-every-layer path (Model 3: FPI on
layer 1, then 2, then 3) with each solver at tol 1e-2 ... 1e-5 and the layer's usual iteration
cap. Reported per (model, solver, tol):

* function evaluations per solve (mean over rows and the three solves) and the most any row took;
* the fraction of row-solves that met the tolerance before the cap;
* wall time of the evaluation (batches of 256, one thread);
* test accuracy, and the compute charged by the cost model in straightforward passes (1 = the
  plain pass): function evaluations plus, for Anderson, its Gram rows, small solves and mixes.

The same weights serve every solver, so the rows differ only in how each fixed point is found.

    python benchmarks/solver.py                      # all models, full test splits
    python benchmarks/solver.py --quick --json
"""

from __future__ import annotations

import platform
import time
from typing import Any

import harness
import torch

from main_models import DatasetSplits, FPINetwork, MainModelTrainer, build_main_model, default_model, load_dataset, set_threads

TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5)
SOLVERS: dict[str, dict[str, Any]] = {
    "picard": {"solver": "picard"},
    "anderson-m3": {"solver": "anderson", "anderson_memory": 3, "anderson_start": 1},
    "anderson-m5": {"solver": "anderson", "anderson_memory": 5, "anderson_start": 1},
}
"""The solvers compared: name -> :meth:`FPINetwork.configure_solver` arguments. Anderson from the
first iteration, as the published table measured it (the mlp's own default starts at the fourth)."""


def digits_as_images(splits: DatasetSplits) -> DatasetSplits:
    """The bundled digits as 1x8x8 images, so that the cnn main model can be measured offline."""
    return DatasetSplits(
        "digits-images",
        splits.x_train.view(-1, 1, 8, 8),
        splits.y_train,
        splits.x_test.view(-1, 1, 8, 8),
        splits.y_test,
        splits.num_classes,
    )


def tasks(quick: bool) -> dict[str, DatasetSplits]:
    digits = load_dataset("digits", None, seed=0)
    found = {
        "mlp": digits,
        "cnn": digits_as_images(digits),
        "lstm": load_dataset("parity", None, seed=0),
        "grid-lstm": load_dataset("grid-lookup", None, seed=0),
    }
    if quick:
        found = {"mlp": found["mlp"].head(128, 64), "lstm": found["lstm"].head(128, 64)}
    return found


def trained_model(splits: DatasetSplits, epochs: int, train_limit: int, seed: int = 0) -> FPINetwork:
    """A main model after the engine's warm-up (full-length random FPI paths, plain iteration) on
    the first ``train_limit`` training samples."""
    torch.manual_seed(seed)
    model = build_main_model(splits)
    trainer = MainModelTrainer(model, splits.x_train[:train_limit], splits.y_train[:train_limit])
    trainer.warm_up(epochs, max_steps=2 * model.num_layers, seed=seed)
    return model.eval()


@torch.no_grad()
def evaluate_fpi_all(model: FPINetwork, splits: DatasetSplits, batch_size: int = 256) -> dict[str, float]:
    """Accuracy, charged compute, evaluations per solve and convergence of the FPI-on-every-layer
    path on the test split, timed."""
    converged: list[torch.Tensor] = []
    evaluations: list[torch.Tensor] = []
    full = float(model.straightforward_flops)
    correct = compute = 0.0
    n = int(splits.y_test.shape[0])
    start = time.perf_counter()
    with model.rollout_weights():
        for begin in range(0, n, batch_size):
            x, y = splits.x_test[begin : begin + batch_size], splits.y_test[begin : begin + batch_size]
            state = model.straightforward(x)
            cost = torch.ones(y.shape[0], dtype=torch.float64)
            for layer in range(1, model.num_layers + 1):
                choice = torch.full_like(y, layer)
                state, iterations = model.fpi_step(state, choice)
                cost += model.fpi_step_flops(choice - 1, iterations) / full
                for solved in model.last_solves.values():
                    converged.append(solved.converged)
                    evaluations.append(solved.iterations)
            correct += float((model.readout(state).argmax(dim=1) == y).sum())
            compute += float(cost.sum())
    seconds = time.perf_counter() - start
    evals = torch.cat(evaluations).double()
    return {
        "accuracy": correct / n,
        "compute": compute / n,
        "evaluations_per_solve": float(evals.mean()),
        "max_evaluations": int(evals.max()),
        "converged_fraction": float(torch.cat(converged).double().mean()),
        "seconds": seconds,
    }


def run(quick: bool, epochs: int, repeats: int, train_limit: int) -> dict[str, Any]:
    rows = []
    for model_name, splits in tasks(quick).items():
        assert default_model(splits) == model_name
        model = trained_model(splits, epochs, train_limit)
        for tol in TOLERANCES:
            for solver_name, options in SOLVERS.items():
                model.configure_solver(tol=tol, **options)
                # the median of a few timed passes; the first pass warms up the allocator (not with
                # --quick, whose times are a smoke test rather than a measurement)
                warm = 0 if quick else 1
                results = [evaluate_fpi_all(model, splits) for _ in range(repeats + warm)][warm:]
                result = dict(results[0])
                result["seconds"] = sorted(r["seconds"] for r in results)[len(results) // 2]
                rows.append(
                    {
                        "model": model_name,
                        "dataset": splits.name,
                        "solver": solver_name,
                        "tol": tol,
                        "max_iter": model.layers[0].max_iter,
                        **result,
                    }
                )
        model.configure_solver(**SOLVERS["picard"], tol=1e-3)
    return {
        "benchmark": "solver",
        "path": "FPI on every layer (Model 3)",
        "warmup_epochs": epochs,
        "warmup_train_limit": train_limit,
        "compute_unit": "straightforward passes (1 = the plain pass), charged by the cost model",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
        "rows": rows,
    }


def _table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"{result['path']}, models warmed up for {result['warmup_epochs']} epochs on {result['warmup_train_limit']} samples; "
        f"compute in {result['compute_unit']}",
        f"{'model':>9} | {'tol':>6} | {'solver':>11} | {'evals/solve':>11} | {'max':>4} | {'converged':>9} | {'ms':>8} | "
        f"{'accuracy':>8} | {'compute':>7}",
    ]
    lines += [
        f"{r['model']:>9} | {r['tol']:6.0e} | {r['solver']:>11} | {r['evaluations_per_solve']:11.2f} | {r['max_evaluations']:>4} | "
        f"{r['converged_fraction']:9.3f} | {1000 * r['seconds']:8.1f} | {r['accuracy']:8.4f} | {r['compute']:7.3f}"
        for r in result["rows"]
    ]
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = harness.parser(__doc__, quick="mlp and lstm on 128 train and 64 test samples, 1 warm-up epoch, no untimed first pass")
    parser.add_argument("--epochs", type=int, default=None, help="warm-up epochs of each model (default 10, 1 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per row, median reported (default 3, 1 with --quick)")
    parser.add_argument("--train-limit", type=int, default=2000, help="warm up each model on this many training samples")
    args = parser.parse_args(argv)
    for flag in ("epochs", "repeats", "train_limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    set_threads(args.threads)
    epochs = args.epochs or (1 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    return harness.show(run(args.quick, epochs, repeats, args.train_limit), args.json, _table)


if __name__ == "__main__":
    main()
