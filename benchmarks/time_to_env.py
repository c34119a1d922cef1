"""Time to an environment: gym.make's first and later calls, and the cnn's warm-up epoch on a user's images.

Each gym.make is timed in a fresh Python process (the way a user meets it), with the warm-up cache in
a new directory: the first call warms the main model up and stores it, the second loads it. Import
time is reported apart. The cnn's warm-up epoch is timed on a generated file of 28x28 grey images in
the real .npz format (the label is the quadrant that holds a bright square, under noise).

    python benchmarks/time_to_env.py --json > benchmarks/results/time_to_env.json
    python benchmarks/time_to_env.py --quick          # digits and 1,000 images only
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

from main_models import set_threads

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


def cnn_epoch_seconds(data: Path, epochs: int, seed: int = 0) -> dict:
    """Seconds per warm-up epoch of the default cnn on ``data`` (the warm-up gym.make runs)."""
    from dynalay_env import EnvConfig, make_engine, make_trainer

    config = EnvConfig(str(data), pretrain_epochs=0, warmup_cache="off", seed=seed)
    engine = make_engine(config)
    trainer = make_trainer(config, engine.model, engine.splits, max_steps=engine.max_steps)
    start = time.perf_counter()
    losses = trainer.warm_up(epochs, max_steps=engine.max_steps, stop_prob=config.warmup_stop_prob, seed=seed)
    seconds = time.perf_counter() - start
    return {
        "train_samples": int(engine.splits.y_train.shape[0]),
        "epochs": epochs,
        "seconds_per_epoch": seconds / epochs,
        "losses": losses,
        "model": engine.model_name,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, quick="digits and 1,000 images only")
    parser.add_argument("--images", type=int, default=5000, help="images in the generated file (80%% train)")
    parser.add_argument("--epochs", type=int, default=1, help="cnn warm-up epochs to time")
    parser.add_argument("--skip-make", action="store_true", help="time only the cnn's warm-up epoch")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    threads = args.threads
    images = 1000 if args.quick else args.images
    with tempfile.TemporaryDirectory() as tmp:
        data = write_images(Path(tmp) / "images.npz", images)
        result: dict = {"cnn_warmup": cnn_epoch_seconds(data, args.epochs), "threads": threads}
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
    cnn = result["cnn_warmup"]
    lines = [f"cnn warm-up on {cnn['train_samples']} train images: {cnn['seconds_per_epoch']:.1f} s per epoch"]
    for name, row in result.get("gym_make", {}).items():
        lines.append(
            f"gym.make {name}: first {row['first']['make_seconds']:.2f} s, second {row['second']['make_seconds']:.2f} s "
            f"(imports {row['second']['import_seconds']:.2f} s)"
        )
    return lines


if __name__ == "__main__":
    main()
