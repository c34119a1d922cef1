"""Fixed action paths through a main model: evaluation, the per-level table and the fixed-path oracle.

A fixed path is the action sequence every sample follows (Model 0 = [], Model 3 = [1, 2, 3]; paper
App. D.1), replayed through :meth:`FPINetwork.run_paths`, so a baseline uses exactly the network and
cost model an agent does. Compute is counted in straightforward passes: 1 for the plain pass plus
the path's FLOPs over the FLOPs of one plain pass, with each step's actual iteration count.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils import parametrize

from .build import build_main_model, default_model
from .data import load_dataset
from .device import resolve_device
from .network import FPINetwork, PathState
from .trainer import MainModelTrainer, fixed_paths


def parse_fpi_layers(text: str, num_layers: int | None = None) -> list[int]:
    """'' or 'none' -> [] (Model 0); '1,2' -> [1, 2]. Each entry is a layer number in 1..L."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    upper = f"1..{num_layers}" if num_layers is not None else "1..L"
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--fpi-layers must be a comma-separated list of layer numbers in {upper} (e.g. '', '1', '1,2', '1,2,3'), got {text!r}"
        ) from None
    if any(layer < 1 or (num_layers is not None and layer > num_layers) for layer in layers):
        raise ValueError(f"--fpi-layers entries must be layer numbers in {upper}, got {text!r}")
    return layers


def per_level(correct: Tensor, compute: Tensor, difficulty: Tensor | None) -> dict[int, dict[str, float]]:
    """Accuracy, mean compute and count per known difficulty level; empty where the levels are
    unknown (``None``, or every level -1)."""
    if difficulty is None:
        return {}
    levels = torch.unique(difficulty).tolist()
    if levels == [-1]:
        return {}
    table = {}
    for level in levels:
        mask = difficulty == level
        table[int(level)] = {
            "accuracy": float(correct[mask].float().mean()),
            "compute": float(compute[mask].float().mean()),
            "count": int(mask.sum()),
        }
    return table


def evaluate_fixed_path(
    model: FPINetwork, x: Tensor, y: Tensor, path: Sequence[int], *, batch_size: int = 256, observation_cost: float = 0.0
) -> dict[str, Tensor]:
    """Per-sample correctness, compute (straightforward passes), FPI iterations and loss of the
    fixed ``path`` (actions 1..L) on (x, y), with the model in eval mode.

    The one evaluator of a fixed path: training baselines, the environment's evaluation of a fixed
    action sequence and the per-path curves all come here (through :func:`evaluate_fixed_paths`).
    Compute is counted as the environment counts an episode's, to the bit: 1 for the plain pass,
    then each step's cost added in float32; ``observation_cost`` (straightforward passes) is
    charged with the plain pass and with every step, as the environment charges an observation
    that costs something (the residual probe)."""
    return evaluate_fixed_paths(model, x, y, [path], batch_size=batch_size, observation_cost=observation_cost)[0]


@torch.no_grad()
def evaluate_fixed_paths(
    model: FPINetwork, x: Tensor, y: Tensor, paths: Sequence[Sequence[int]], *, batch_size: int = 256, observation_cost: float = 0.0
) -> list[dict[str, Tensor]]:
    """:func:`evaluate_fixed_path` of each of ``paths``, in their order, computing every shared
    prefix once: the plain pass once per batch, and e.g. L1 once for L1, "L1,L2" and "L1,L2,L3".
    Each path's results are those of evaluating it alone: its batches hold the same samples, and
    every step is the same computation from the same state (a branch steps a copy)."""
    steps_of = [[int(a) for a in path] for path in paths]
    was_training = model.training
    model.eval()
    full = float(model.straightforward_flops)
    columns: list[dict[str, list[Tensor]]] = [{k: [] for k in ("correct", "compute", "iterations", "loss")} for _ in steps_of]
    try:
        with parametrize.cached():
            for start in range(0, y.shape[0], batch_size):
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]
                rows = yb.shape[0]
                plain_cost = torch.full((rows,), 1.0 + observation_cost, dtype=torch.float32, device=xb.device)
                no_iterations = torch.zeros(rows, dtype=torch.long, device=xb.device)
                # prefix -> (state after it, compute so far, iterations so far); a step of a row whose
                # action is 0 leaves it as it is, as run_paths does
                reached: dict[tuple[int, ...], tuple[PathState, Tensor, Tensor]] = {
                    (): (model.straightforward(xb), plain_cost, no_iterations)
                }
                for i, (steps, out) in enumerate(zip(steps_of, columns)):
                    # keep only the states a path still to come starts from (a batch of grids' states is large)
                    ahead = {tuple(later[:t]) for later in steps_of[i:] for t in range(len(later) + 1)}
                    reached = {prefix: value for prefix, value in reached.items() if prefix in ahead}
                    known = max(t for t in range(len(steps) + 1) if tuple(steps[:t]) in reached)
                    state, cost, iterations = reached[tuple(steps[:known])]
                    for t in range(known, len(steps)):
                        action = steps[t]
                        if action > 0:
                            choice = torch.full((rows,), action, dtype=torch.long, device=xb.device)
                            # fpi_step writes the state's layer tensors in place: step a copy, the prefix's state stays
                            state, step_iterations = model.fpi_step(PathState(state.u, [z.clone() for z in state.z]), choice)
                            cost = cost + (model.fpi_step_flops(choice - 1, step_iterations) / full + observation_cost).float()
                            iterations = iterations + step_iterations
                        reached[tuple(steps[: t + 1])] = (state, cost, iterations)
                    logits = model.readout(state)
                    out["correct"].append(logits.argmax(dim=1) == yb)
                    out["compute"].append(cost)
                    out["iterations"].append(iterations)
                    out["loss"].append(F.cross_entropy(logits, yb, reduction="none"))
    finally:
        model.train(was_training)
    return [{k: torch.cat(v).cpu() for k, v in out.items()} for out in columns]


def fixed_path_oracle(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """For each test sample, the cheapest of ``results`` (fixed-path runs on the same test split,
    each with ``per_sample`` correctness and compute) that answers it correctly; a sample no run gets
    right costs the cheapest run's compute and counts wrong."""
    if len(results) < 2:
        raise ValueError("the oracle needs at least two runs")
    first = results[0]
    for r in results[1:]:
        if r["dataset"] != first["dataset"] or r["per_sample"]["label"] != first["per_sample"]["label"]:
            raise ValueError(
                f"runs are on different test sets: {first['dataset']!r} ({first['num_test']} samples) vs "
                f"{r['dataset']!r} ({r['num_test']} samples); use runs of one dataset, seed and options"
            )
    correct = torch.tensor([r["per_sample"]["correct"] for r in results], dtype=torch.bool)  # (R, N)
    compute = torch.tensor([r["per_sample"]["compute"] for r in results], dtype=torch.float64)
    masked = torch.where(correct, compute, torch.full_like(compute, math.inf))
    best_cost, best_run = masked.min(dim=0)
    any_correct = correct.any(dim=0)
    cheapest_cost, cheapest_run = compute.min(dim=0)
    chosen = torch.where(any_correct, best_run, cheapest_run)
    cost = torch.where(any_correct, best_cost, cheapest_cost)
    difficulty = first["per_sample"]["difficulty"]
    names = [f"path {r['path']}" for r in results]
    return {
        "dataset": first["dataset"],
        "runs": names,
        "run_accuracy": [r["test_accuracy"] for r in results],
        "run_compute": [r["compute"] for r in results],
        "oracle_accuracy": float(any_correct.float().mean()),
        "oracle_compute": float(cost.mean()),
        "choice_frequency": {name: float((chosen == i).float().mean()) for i, name in enumerate(names)},
        "per_difficulty": per_level(any_correct, cost.float(), None if difficulty is None else torch.tensor(difficulty)),
    }


def run_baseline(
    dataset: str,
    *,
    fpi_layers: str,
    model_name: str | None = None,
    data_dir: str | None = None,
    data_options: dict[str, Any] | None = None,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Load ``dataset``, build its main model, train it along the fixed path ``fpi_layers`` (e.g.
    "1,2") and evaluate it on the test split. Returns the result as a JSON-ready dict: accuracy,
    compute, wall times, per-level accuracy and compute, and per-sample results for
    :func:`fixed_path_oracle`."""
    wall_start = time.perf_counter()
    splits = load_dataset(dataset, data_dir, seed=seed, **(data_options or {}))
    dev = resolve_device(device, "--device")
    splits = splits.to(dev)
    torch.manual_seed(seed)
    model = build_main_model(splits, model=model_name).to(dev)
    path = parse_fpi_layers(fpi_layers, model.num_layers)

    train_start = time.perf_counter()
    generator = torch.Generator(device=dev)
    generator.manual_seed(seed)
    trainer = MainModelTrainer(model, splits.x_train, splits.y_train, lr=lr)
    losses = trainer.train_epochs(
        epochs, fixed_paths(path, dev), generator=generator, batch_size=batch_size, progress=progress, desc=f"train path {path or 'plain'}"
    )
    train_seconds = time.perf_counter() - train_start

    eval_start = time.perf_counter()
    ev = evaluate_fixed_path(model, splits.x_test, splits.y_test, path)
    eval_seconds = time.perf_counter() - eval_start
    difficulty = None if splits.difficulty_test is None else splits.difficulty_test.cpu()
    return {
        "dataset": splits.name,
        "model": model_name or default_model(splits),
        "fpi_layers": fpi_layers,
        "path": path,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "device": str(dev),
        "num_train": int(splits.y_train.shape[0]),
        "num_test": int(splits.y_test.shape[0]),
        "num_layers": model.num_layers,
        "straightforward_flops": model.straightforward_flops,
        "layer_flops": model.layer_flops.tolist(),
        "train_loss": losses,
        "test_loss": float(ev["loss"].mean()),
        "test_accuracy": float(ev["correct"].float().mean()),
        "compute": float(ev["compute"].mean()),
        "compute_unit": "straightforward passes (1 = the plain pass)",
        "mean_fpi_iterations": float(ev["iterations"].float().mean()),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "per_difficulty": per_level(ev["correct"], ev["compute"], difficulty),
        "per_sample": {
            "correct": ev["correct"].int().tolist(),
            "compute": [round(c, 6) for c in ev["compute"].tolist()],
            "iterations": ev["iterations"].tolist(),
            "label": splits.y_test.cpu().tolist(),
            "difficulty": None if difficulty is None else difficulty.tolist(),
        },
    }
