"""Distributed co-training throughput: agents/train_distributed.py on 1, 2, ... ranks.

Each world size trains REINFORCE with co-training on for the same global budget and number of
episodes in flight (torchrun, gloo on CPU, nccl on cuda), and reports the training phase's
environment steps per second over all ranks, the co-training updates, whether the replicas ended
equal, and the test accuracy.

    python benchmarks/distributed.py                 # 1 and 2 ranks on this machine
    python benchmarks/distributed.py --ranks 1 2 4 8 --device cuda
    python benchmarks/distributed.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_world(ranks: int, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    num_envs = args.per_rank * ranks if args.per_rank else args.num_envs
    total = args.total_timesteps * ranks if args.per_rank else args.total_timesteps
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        raise SystemExit("error: torchrun not found (it comes with torch)")
    command = [
        torchrun,
        "--standalone",
        "--nproc-per-node",
        str(ranks),
        str(ROOT / "agents" / "train_distributed.py"),
        "--dataset",
        args.dataset,
        "--total-timesteps",
        str(total),
        "--num-envs",
        str(num_envs),
        "--pretrain-epochs",
        str(args.pretrain_epochs),
        "--device",
        args.device,
        "--threads",
        "1",
        "--no-progress",
        "--logdir",
        str(logdir),
        "--run-name",
        f"ranks{ranks}",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"error: {ranks} ranks failed:\n{proc.stderr[-3000:]}")
    result = json.loads((logdir / f"ranks{ranks}" / "eval.json").read_text())
    return {
        "ranks": ranks,
        "num_envs": num_envs,
        "train_sps": result["train_sps"],
        "train_seconds": result["train_seconds"],
        "timesteps": result["timesteps"],
        "cotrain_updates": result["cotrain_updates"],
        "replicas_equal": result["replicas_equal"] and result["agent_replicas_equal"],
        "accuracy": result["accuracy"],
        "compute_fraction": result["compute_fraction"],
        "time_breakdown_rank0_seconds": result["train_time_breakdown_seconds_rank0"],
        "backend": result["backend"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="2,048 steps, 1 warm-up epoch, 1 and 2 ranks")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="world sizes to measure")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--total-timesteps", type=int, default=40960)
    parser.add_argument("--num-envs", type=int, default=64, help="episodes in flight over all ranks (strong scaling)")
    parser.add_argument(
        "--per-rank",
        type=int,
        default=None,
        help="episodes in flight per rank instead (weak scaling: --num-envs and --total-timesteps grow with the ranks)",
    )
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    if args.per_rank is not None and args.per_rank < 1:
        parser.error(f"--per-rank must be >= 1, got {args.per_rank}")
    if any(r < 1 for r in args.ranks) or (args.per_rank is None and any(args.num_envs % r for r in args.ranks)):
        parser.error(f"--ranks must be >= 1 and divide --num-envs {args.num_envs}, got {args.ranks}")
    if args.quick:
        args.total_timesteps, args.pretrain_epochs, args.ranks = 2048, 1, [1, 2]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_world(r, args, Path(tmp)) for r in args.ranks]
    base = rows[0]["train_sps"]
    for r in rows:
        r["sps_vs_first"] = r["train_sps"] / base
    result = {
        "benchmark": "distributed",
        "dataset": args.dataset,
        "device": args.device,
        "num_envs": args.num_envs,
        "per_rank": args.per_rank,
        "total_timesteps": args.total_timesteps,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
    else:
        scaling = f"{args.per_rank} episodes in flight per rank" if args.per_rank else f"{args.num_envs} episodes in flight over all ranks"
        print(f"REINFORCE + co-training on {args.dataset}, {scaling}, {args.device}, {os.cpu_count()} CPU cores")
        print(f"{'ranks':>5} | {'steps/s':>8} | {'vs first':>8} | {'updates':>7} | {'replicas equal':>14} | {'accuracy':>8}")
        for r in rows:
            print(
                f"{r['ranks']:>5} | {r['train_sps']:8.0f} | {r['sps_vs_first']:8.2f} | {r['cotrain_updates']:>7} | "
                f"{str(r['replicas_equal']):>14} | {r['accuracy']:8.4f}"
            )
    return result


if __name__ == "__main__":
    main()
