"""Environment steps per second: the batched engine against Gymnasium's SyncVectorEnv.

Both setups are timed in the same process on the same data and main model (digits and its mlp, the
setting of the figures recorded in benchmarks/README.md), with random actions:

* batched: ``gym.make_vec("DynaLay-v0", num_envs=N, vectorization_mode="vector_entry_point")``;
* sync:    ``gym.make_vec("DynaLay-v0", num_envs=N, vectorization_mode="sync")`` (N single-sample
  envs stepped one after another).

Co-training is off in both, so the figure is the environment's own cost (set
``--cotrain`` to include the main model's updates, which every K=64 finished episodes replay
and back-propagate 64 paths). Runs on cpu and, when present, cuda.

    python benchmarks/env_throughput.py            # N = 1, 64, 256, 1024
    python benchmarks/env_throughput.py --quick --json
"""

from __future__ import annotations

import importlib
import platform
import time

import gymnasium as gym
import harness
import numpy as np
import torch

import dynalay_env  # noqa: F401  (registers DynaLay-v0)
from main_models import resolve_device, set_threads


def _time_steps(env: gym.vector.VectorEnv, min_steps: int, min_seconds: float, seed: int) -> tuple[float, int]:
    """Steps per second (env steps = vector steps x N) over at least min_steps vector steps and
    min_seconds of wall time, after a short warm-up."""
    rng = np.random.default_rng(seed)
    n = env.num_envs
    num_actions = int(env.single_action_space.n)
    env.reset(seed=seed)
    for _ in range(3):
        env.step(rng.integers(0, num_actions, size=n))
    steps = 0
    start = time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < min_seconds:
        env.step(rng.integers(0, num_actions, size=n))
        steps += 1
    seconds = time.perf_counter() - start
    return steps * n / seconds, steps


def run(
    sizes: list[int], devices: list[str], cotrain: bool, min_steps: int, min_seconds: float, sync_max: int, fpi_solver: str | None = None
) -> dict:
    if cotrain:
        # A process's first optimizer imports torch._dynamo (about 2.6 s on a CPU); without this the
        # first side timed, the batched one at the first N, would pay it inside its window.
        importlib.import_module("torch._dynamo")
    rows = []
    for device in devices:
        for n in sizes:
            kwargs = dict(dataset="digits", device=device, cotrain=cotrain, seed=0, pretrain_epochs=0, fpi_solver=fpi_solver)
            batched = gym.make_vec("DynaLay-v0", num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
            batched_sps, batched_steps = _time_steps(batched, min_steps, min_seconds, seed=0)
            row = {"device": device, "num_envs": n, "batched_sps": batched_sps, "batched_vector_steps": batched_steps}
            if n <= sync_max:
                sync = gym.make_vec("DynaLay-v0", num_envs=n, vectorization_mode="sync", **kwargs)
                sync_sps, sync_steps = _time_steps(sync, max(2, min_steps // 4), min_seconds, seed=0)
                sync.close()
                row.update(sync_sps=sync_sps, sync_vector_steps=sync_steps, speedup=batched_sps / sync_sps)
            else:
                row.update(sync_sps=None, sync_vector_steps=0, speedup=None)
            batched.close()
            rows.append(row)
    return {
        "benchmark": "env_throughput",
        "cotrain": cotrain,
        "fpi_solver": fpi_solver or "the main model's default",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "rows": rows,
    }


def _table(result: dict) -> list[str]:
    lines = [
        f"env steps/s, random actions, co-training {'on' if result['cotrain'] else 'off'}, solver: {result['fpi_solver']}",
        f"{'device':>6} | {'N':>5} | {'batched':>10} | {'sync':>10} | {'ratio':>7}",
    ]
    for r in result["rows"]:
        sync = f"{r['sync_sps']:10.0f}" if r["sync_sps"] else f"{'-':>10}"
        ratio = f"{r['speedup']:7.1f}" if r["speedup"] else f"{'-':>7}"
        lines.append(f"{r['device']:>6} | {r['num_envs']:>5} | {r['batched_sps']:10.0f} | {sync} | {ratio}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, quick="N = 1 and 64, short timing")
    parser.add_argument("--cotrain", action="store_true", help="include the main model's co-training updates")
    parser.add_argument("--device", default="all", help="cpu, cuda, cuda:N, auto or all (cpu and, when present, cuda)")
    parser.add_argument("--fpi-solver", choices=["picard", "anderson"], default=None, help="override the main model's solver")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of envs N to measure (default 1 64 256 1024)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "all":
        try:
            devices = [str(resolve_device(args.device, "--device"))]
        except ValueError as err:
            parser.error(str(err))
    if args.sizes is not None and any(n < 1 for n in args.sizes):
        parser.error(f"--sizes must be >= 1, got {args.sizes}")
    if args.quick:
        result = run(args.sizes or [1, 64], devices, args.cotrain, min_steps=5, min_seconds=0.05, sync_max=64, fpi_solver=args.fpi_solver)
    else:
        result = run(
            args.sizes or [1, 64, 256, 1024],
            devices,
            args.cotrain,
            min_steps=50,
            min_seconds=3.0,
            sync_max=1024,
            fpi_solver=args.fpi_solver,
        )
    return harness.show(result, args.json, _table)


if __name__ == "__main__":
    main()
