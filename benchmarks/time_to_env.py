"""Time to an environment: gym.make's first and later calls, and the cnn's warm-up epoch on a user's images.

Each gym.make is timed in a fresh Python process (the way a user meets it), with the warm-up cache in
a new directory: the first call warms the main model up and stores it, the second loads it. Import
time is reported apart. The cnn's warm-up epoch is timed on a generated file of 28x28 grey images in
the real .npz format (the label is the quadrant that holds a bright square, under noise), in CPU
seconds (what the epoch itself costs, whatever else runs on the machine) and wall seconds.

``--grads implicit phantom`` times the epoch with each training gradient, and ``--accuracy-seeds N``
trains the cnn for 10 epochs with each of them on the bundled digits as 1x8x8 images (an image task
that file's easy quadrants cannot tell apart) and reports every fixed path's test accuracy, seed by
seed: what the cheaper gradient costs in accuracy.

    python benchmarks/time_to_env.py --json > benchmarks/results/time_to_env.json
    python benchmarks/time_to_env.py --quick          # digits and 1,000 images only
    python benchmarks/time_to_env.py --skip-make --grads implicit phantom --accuracy-seeds 5 --json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
from solver import digits_as_images

from main_models import TRAINING_GRADS, DatasetSplits, evaluate_fixed_paths, load_dataset, set_threads
from main_models.fpi import GRAD_MODES

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys, time
start = time.perf_counter()
import gymnasium as gym, dynalay_env
imported = time.perf_counter()
env = gym.make("DynaLay-v0", **json.loads(sys.argv[1]))
print(json.dumps({"import_seconds": imported - start, "make_seconds": time.perf_counter() - imported}))
"""


def write_images(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` 28x28 grey images whose class (0-3) is the quadrant holding a bright 6x6 square."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, size=(n, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 4, n)
    rows, cols = np.divmod(y, 2)
    for quadrant in range(4):
        r, c = divmod(quadrant, 2)
        x[(rows == r) & (cols == c), 0, r * 14 + 4 : r * 14 + 10, c * 14 + 4 : c * 14 + 10] += 1.0
    np.savez(path, x=x, y=y)
    return path


def make_twice(settings: dict, cache: Path, threads: int) -> dict:
    """gym.make(**settings) in two fresh processes sharing a new cache directory."""
    env = {"DYNALAY_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(threads or 1), "PATH": "/usr/bin:/bin"}
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps(settings)], capture_output=True, text=True, env=env, cwd=ROOT, check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"settings": settings, "first": runs[0], "second": runs[1]}


def cnn_epoch_seconds(data: Path | DatasetSplits, epochs: int, seed: int = 0, grad: str | None = None) -> dict:
    """Seconds per warm-up epoch of the cnn on ``data`` (the warm-up gym.make runs), with its default
    training gradient or ``grad``; and every fixed path's test accuracy after them."""
    from dynalay_env import EnvConfig, make_engine, make_trainer

    name = data.name if isinstance(data, DatasetSplits) else str(data)
    config = EnvConfig(name, pretrain_epochs=0, warmup_cache="off", seed=seed, main_grad=grad)
    engine = make_engine(config, data=data if isinstance(data, DatasetSplits) else None)
    trainer = make_trainer(config, engine.model, engine.splits, max_steps=engine.max_steps)
    cpu, wall = time.process_time(), time.perf_counter()
    losses = trainer.warm_up(epochs, max_steps=engine.max_steps, stop_prob=config.warmup_stop_prob, seed=seed)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    s, layers = engine.splits, engine.model.num_layers
    paths = {"plain": [], **{f"L{i}": [i] for i in range(1, layers + 1)}, "FPI on every layer": list(range(1, layers + 1))}
    # one pass over the paths: the plain pass and L1, which several paths share, computed once (the
    # same figures as evaluating each path alone)
    evaluated = evaluate_fixed_paths(engine.model, s.x_test, s.y_test, list(paths.values()))
    accuracy = {k: float(ev["correct"].float().mean()) for k, ev in zip(paths, evaluated)}
    return {
        "train_samples": int(engine.splits.y_train.shape[0]),
        "epochs": epochs,
        "grad": grad or TRAINING_GRADS[engine.model_name],
        "seconds_per_epoch": wall / epochs,
        "cpu_seconds_per_epoch": cpu / epochs,
        "losses": losses,
        "test_accuracy": accuracy,
        "model": engine.model_name,
    }


def grad_accuracy(grads: list[str], seeds: int, epochs: int, quick: bool = False) -> dict:
    """The cnn trained ``epochs`` warm-up epochs with each gradient on the digits as images, per seed
    (``quick``: on 64 of them, one update, tested on 100)."""
    digits = digits_as_images(load_dataset("digits", None, seed=0))
    if quick:
        digits = digits.head(64, 100)
    runs = {g: [cnn_epoch_seconds(digits, epochs, seed, g) for seed in range(seeds)] for g in grads}
    return {
        grad: {
            "per_seed": [r["test_accuracy"] for r in rows],
            "fpi_all_accuracy": harness.mean_std([r["test_accuracy"]["FPI on every layer"] for r in rows]),
            "cpu_seconds_per_epoch": harness.mean_std([r["cpu_seconds_per_epoch"] for r in rows]),
        }
        for grad, rows in runs.items()
    }


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, quick="digits and at most 1,000 images only, one epoch on 64 digits in the accuracy comparison")
    parser.add_argument("--images", type=int, default=5000, help="images in the generated file (80%% train)")
    parser.add_argument("--epochs", type=int, default=1, help="cnn warm-up epochs to time")
    parser.add_argument("--skip-make", action="store_true", help="time only the cnn's warm-up epoch")
    parser.add_argument(
        "--grads", nargs="+", choices=GRAD_MODES, help="time the cnn's epoch with each of these training gradients (default: its own)"
    )
    parser.add_argument("--accuracy-seeds", type=int, default=0, help="seeds of the gradients' accuracy comparison on digits as images")
    args = parser.parse_args(argv)
    if args.accuracy_seeds < 0 or args.epochs < 1 or args.images < 10:
        parser.error("--accuracy-seeds must be >= 0, --epochs >= 1 and --images >= 10")
    set_threads(args.threads)
    threads = args.threads
    images = min(args.images, 1000) if args.quick else args.images
    with tempfile.TemporaryDirectory() as tmp:
        data = write_images(Path(tmp) / "images.npz", images)
        grads = args.grads or [None]
        result: dict = {"cnn_warmup": [cnn_epoch_seconds(data, args.epochs, grad=g) for g in grads], "threads": threads}
        if args.accuracy_seeds:
            result["cnn_grad_accuracy"] = grad_accuracy(
                args.grads or ["implicit", "phantom"], args.accuracy_seeds, 1 if args.quick else 10, args.quick
            )
        if not args.skip_make:
            tasks = (
                {"digits": {"dataset": "digits"}}
                if args.quick
                else {"grid-lookup (bare gym.make)": {}, "digits": {"dataset": "digits"}, f"{images} images": {"dataset": str(data)}}
            )
            result["gym_make"] = {
                name: make_twice(settings, Path(tmp) / f"cache-{i}", threads) for i, (name, settings) in enumerate(tasks.items())
            }
    return harness.show(result, args.json, _text)


def _text(result: dict) -> list[str]:
    lines = [
        f"cnn warm-up on {cnn['train_samples']} train images, {cnn['grad']} gradient: {cnn['cpu_seconds_per_epoch']:.1f} CPU s "
        f"({cnn['seconds_per_epoch']:.1f} s wall) per epoch"
        for cnn in result["cnn_warmup"]
    ]
    for grad, row in result.get("cnn_grad_accuracy", {}).items():
        acc = row["fpi_all_accuracy"]
        lines.append(f"cnn on digits as images, {grad}: FPI on every layer {acc['mean']:.4f} ± {acc['std']:.4f} over {acc['n']} seeds")
    for name, row in result.get("gym_make", {}).items():
        lines.append(
            f"gym.make {name}: first {row['first']['make_seconds']:.2f} s, second {row['second']['make_seconds']:.2f} s "
            f"(imports {row['second']['import_seconds']:.2f} s)"
        )
    return lines


if __name__ == "__main__":
    main()
