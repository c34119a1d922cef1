"""Train and evaluate a fixed-path baseline (paper App. D.1: Model 0..3) on any dataset.

    python main_models/train_baseline.py --dataset parity --fpi-layers ""      # Model 0: no FPI
    python main_models/train_baseline.py --dataset parity --fpi-layers 1,2,3 --out m3.json
    python main_models/train_baseline.py --oracle m0.json m1.json m2.json m3.json

A fixed path is the action sequence every sample follows (``--fpi-layers 1,2`` = FPI on layer 1,
then FPI on layer 2, each followed by re-applying the layers above once), replayed through
:meth:`FPINetwork.run_paths`, so a baseline uses exactly the network, data pipeline and cost
model the agent does. The result (printed, and saved with ``--out``) holds the test accuracy, the
compute per sample in straightforward passes (1 for the plain pass plus the path's FLOPs over the
FLOPs of one plain pass, with each step's actual iteration count), wall times, accuracy and compute
per difficulty level where the dataset has levels, and per-sample correctness and compute.
``--oracle`` combines saved runs: for each test sample, the cheapest run that answers it correctly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from main_models.data import MAIN_MODELS, DatasetSplits, build_main_model, default_model, load_dataset
from main_models.network import FPINetwork


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
            f"--fpi-layers must be a comma-separated list of layer numbers in {upper} "
            f"(e.g. '', '1', '1,2', '1,2,3'), got {text!r}"
        ) from None
    if any(layer < 1 or (num_layers is not None and layer > num_layers) for layer in layers):
        raise ValueError(f"--fpi-layers entries must be layer numbers in {upper}, got {text!r}")
    return layers


def parse_option(text: str) -> tuple[str, Any]:
    """'key=value' with value read as int, float or string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--data-option must be KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key.replace("-", "_"), cast(value)
        except ValueError:
            pass
    return key.replace("-", "_"), value


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a device that does not exist here is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device must be cpu, cuda[:N] or auto, got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return dev


def per_level(correct: torch.Tensor, compute: torch.Tensor, difficulty: torch.Tensor | None) -> dict[str, dict[str, float]]:
    """Accuracy, mean compute and count per difficulty level (empty when levels are unknown)."""
    if difficulty is None:
        return {}
    table = {}
    for level in torch.unique(difficulty).tolist():
        mask = difficulty == level
        table[str(int(level))] = {
            "accuracy": float(correct[mask].float().mean()),
            "compute": float(compute[mask].mean()),
            "count": int(mask.sum()),
        }
    return table


@torch.no_grad()
def evaluate_fixed_path(
    model: FPINetwork, x: torch.Tensor, y: torch.Tensor, path: Sequence[int], *, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Per-sample correctness, compute (straightforward passes), FPI iterations and loss of the
    fixed ``path`` on (x, y), with the model in eval mode."""
    was_training = model.training
    model.eval()
    full = float(model.straightforward_flops)
    correct, compute, iterations, losses = [], [], [], []
    try:
        with parametrize.cached():
            for start in range(0, y.shape[0], batch_size):
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]
                paths = torch.tensor(list(path), dtype=torch.long, device=xb.device).expand(yb.shape[0], len(path))
                logits, step_iters = model.run_paths(xb, paths, per_step=True)
                correct.append(logits.argmax(dim=1) == yb)
                compute.append(1.0 + model.path_flops(paths, step_iters) / full)
                iterations.append(step_iters.sum(dim=1))
                losses.append(F.cross_entropy(logits, yb, reduction="none"))
    finally:
        model.train(was_training)
    return {
        "correct": torch.cat(correct).cpu(),
        "compute": torch.cat(compute).float().cpu(),
        "iterations": torch.cat(iterations).cpu(),
        "loss": torch.cat(losses).cpu(),
    }


def train_fixed_path(
    model: FPINetwork,
    splits: DatasetSplits,
    path: Sequence[int],
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Adam on cross-entropy along the fixed path (the paper's optimizer and batch size).
    Returns the mean training loss of each epoch."""
    from tqdm.auto import tqdm

    device = splits.x_train.device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    n = splits.y_train.shape[0]
    path_row = torch.tensor(list(path), dtype=torch.long, device=device)
    losses: list[float] = []
    bar = tqdm(range(epochs), desc=f"train path {list(path) or 'plain'}", unit="epoch", disable=not progress)
    model.train()
    for _ in bar:
        order = torch.randperm(n, device=device, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits, _ = model.run_paths(splits.x_train[idx], path_row.expand(idx.numel(), len(path)))
            loss = F.cross_entropy(logits, splits.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * idx.numel()
        losses.append(total / n)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


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
    model_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load, build, train along the fixed path, evaluate on the test split; returns the result."""
    wall_start = time.perf_counter()
    splits = load_dataset(dataset, data_dir, seed=seed, **(data_options or {}))
    dev = resolve_device(device)
    splits = splits.to(dev)
    torch.manual_seed(seed)
    model = build_main_model(splits, model=model_name, **(model_options or {})).to(dev)
    path = parse_fpi_layers(fpi_layers, model.num_layers)

    train_start = time.perf_counter()
    losses = train_fixed_path(model, splits, path, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
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


def oracle(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """For each test sample, the cheapest of ``results`` (runs on the same test split) that answers
    it correctly; a sample no run gets right costs the cheapest run's compute and counts wrong."""
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
    levels = None if difficulty is None else torch.tensor(difficulty)
    names = [f"path {r['path']}" for r in results]
    return {
        "dataset": first["dataset"],
        "runs": names,
        "run_accuracy": [r["test_accuracy"] for r in results],
        "run_compute": [r["compute"] for r in results],
        "oracle_accuracy": float(any_correct.float().mean()),
        "oracle_compute": float(cost.mean()),
        "choice_frequency": {name: float((chosen == i).float().mean()) for i, name in enumerate(names)},
        "per_difficulty": per_level(any_correct, cost.float(), levels),
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: a temporary file renamed into place, so a killed run leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def _summary(result: dict[str, Any]) -> str:
    lines = [
        f"{result['dataset']} | {result['model']} | path {result['path'] or '[] (plain)'} | "
        f"test accuracy {result['test_accuracy']:.4f} | compute {result['compute']:.3f} straightforward passes | "
        f"{result['mean_fpi_iterations']:.1f} FPI iterations | train {result['train_seconds']:.1f}s, "
        f"wall {result['wall_seconds']:.1f}s"
    ]
    for level, row in result["per_difficulty"].items():
        lines.append(f"  level {level}: accuracy {row['accuracy']:.4f}  compute {row['compute']:.3f}  (n={row['count']})")
    return "\n".join(lines)


def _oracle_summary(result: dict[str, Any]) -> str:
    lines = [f"{result['dataset']} oracle over {len(result['runs'])} runs"]
    for name, acc, comp in zip(result["runs"], result["run_accuracy"], result["run_compute"]):
        lines.append(f"  {name}: accuracy {acc:.4f}  compute {comp:.3f}")
    lines.append(f"  oracle: accuracy {result['oracle_accuracy']:.4f}  compute {result['oracle_compute']:.3f}")
    for level, row in result["per_difficulty"].items():
        lines.append(f"  level {level}: oracle accuracy {row['accuracy']:.4f}  compute {row['compute']:.3f}  (n={row['count']})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--dataset", default="digits", help="dataset name, or a path to an .npz file")
    parser.add_argument("--model", default=None, choices=sorted(MAIN_MODELS), help="main model (default: the one for the data)")
    parser.add_argument("--data-dir", default=None, help="where dataset files live (default $DYNALAY_DATA_DIR or ./data)")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE", help="loader option, e.g. max_len=64 (repeatable)")
    parser.add_argument("--fpi-layers", default=None, help="the fixed path: '' (Model 0), '1', '1,2', '1,2,3' (Model 3)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="minibatch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split, model init and shuffling")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default); the small models here run fastest on 1")
    parser.add_argument("--out", default=None, help="write the result as JSON to this file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    parser.add_argument("--oracle", nargs="+", default=None, metavar="RUN.json", help="combine saved runs into the oracle instead of training")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.oracle is not None:
        if args.fpi_layers is not None:
            parser.error("--oracle combines saved runs; it does not train, so it takes no --fpi-layers")
        try:
            runs = [json.loads(Path(p).read_text()) for p in args.oracle]
            result = oracle(runs)
        except (OSError, json.JSONDecodeError, KeyError, ValueError) as err:
            parser.exit(2, f"error: --oracle: {err}\n")
    else:
        if args.fpi_layers is None:
            parser.error("--fpi-layers is required: '' (Model 0), '1', '1,2' or '1,2,3'")
        if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.threads < 0:
            parser.error("--epochs and --batch-size must be >= 1, --lr > 0 and --threads >= 0")
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            parse_fpi_layers(args.fpi_layers)
            options = dict(parse_option(o) for o in args.data_option)
            result = run_baseline(
                args.dataset,
                fpi_layers=args.fpi_layers,
                model_name=args.model,
                data_dir=args.data_dir,
                data_options=options,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                device=args.device,
                progress=args.progress,
            )
        except (ValueError, FileNotFoundError) as err:
            parser.exit(2, f"error: {err}\n")
    if args.out:
        _write_json(Path(args.out), result)
    if args.json:
        print(json.dumps(result))
    else:
        print(_oracle_summary(result) if args.oracle is not None else _summary(result))
    return result


if __name__ == "__main__":
    main()
