"""Your own task in DynaLay: a dataset and a main model of yours, without editing DynaLay's files.

    python examples/own_task.py                          # under a minute on two CPU cores
    python examples/own_task.py --total-timesteps 20000 --pretrain-epochs 10

Two calls make them known by name, after which everything that takes a dataset or model name
takes yours: ``gym.make("DynaLay-v0", dataset=name, model=name)``, every other face of the env,
``agents.train.main(["--dataset", name, "--model", name, ...])``, the evaluation and baselines:

* ``main_models.register_dataset(name, loader)``: ``loader(data_dir, seed=seed)`` returns a
  :class:`main_models.DatasetSplits` (train and test tensors, the number of classes and, if the
  task has one, a known difficulty level per sample, which the evaluation reports per level).
* ``main_models.register_model(name, builder, input_kind=..., training_grad=...)``:
  ``builder(splits)`` returns a fresh :class:`main_models.FPINetwork`, a stem, FPI layers (each an
  ``FPILayer`` around a block ``f(z, u)`` that is a contraction in z) and a head. The network's
  FLOP counts are the environment's cost model, so the blocks report ``flops_per_sample()`` and
  the network gets ``stem_flops`` and ``head_flops``; its pooled layer activations are the agent's
  observation. A model that cannot report FLOPs or activations is refused when it is built.

The task here is noisy parity: the label is the parity of the signs of the first k of eight noisy
features, with k (1, 2 or 3) given as a one-hot beside them and kept as the sample's difficulty.
k = 1 is linear and the plain pass does it; parity of three signs needs more computation, which
FPI on a layer provides (the plain pass is the less accurate of the two at the default budget). The
tables at the end show what the agent made of that against the baselines on the same main model.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any, Sequence

import numpy as np
from torch import nn

from agents.train import main as train_agent
from main_models import (
    ContractiveTanhBlock,
    DatasetSplits,
    FPILayer,
    FPINetwork,
    SolverSettings,
    register_dataset,
    register_model,
    split_indices,
)

DATASET, MODEL = "noisy-parity", "tiny-fpi"
BITS, MAX_K = 8, 3


def load_noisy_parity(data_dir: str | None = None, *, seed: int = 0, samples: int = 3000, noise: float = 0.35) -> DatasetSplits:
    """Generated, so ``data_dir`` is unused; the same ``seed`` gives the same data in every run."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(samples, BITS))
    k = rng.integers(1, MAX_K + 1, size=samples)
    features = signs + noise * rng.standard_normal((samples, BITS))
    x = np.concatenate([features, np.eye(MAX_K)[k - 1]], axis=1).astype(np.float32)
    positive = np.cumsum(signs > 0, axis=1)[np.arange(samples), k - 1]  # positive signs among the first k
    y = (positive % 2).astype(np.int64)
    train, test = split_indices(samples, 0.25, seed)
    return DatasetSplits.from_arrays(DATASET, x, y, train, test, num_classes=2, meta={"input_kind": "flat"}, difficulty=k - 1)


def build_tiny_fpi(splits: DatasetSplits, *, hidden: int = 32, num_layers: int = 2) -> FPINetwork:
    """Linear stem, ``num_layers`` contractive tanh FPI layers, linear head."""
    features, classes = splits.input_shape[0], splits.num_classes
    layers = [
        FPILayer(ContractiveTanhBlock(hidden, hidden, contraction=0.9), SolverSettings(tol=1e-3, max_iter=20)) for _ in range(num_layers)
    ]
    return FPINetwork(
        nn.Sequential(nn.Linear(features, hidden), nn.ReLU()),
        layers,
        nn.Linear(hidden, classes),
        # multiply-adds count 2 FLOPs, as the blocks' flops_per_sample() does
        stem_flops=2 * features * hidden + 2 * hidden,
        head_flops=2 * hidden * classes + classes,
        summary_bins=8,
    )


def register() -> None:
    """Name both; ``replace=True`` lets a notebook run this twice."""
    register_dataset(DATASET, load_noisy_parity, offline=True, replace=True)
    register_model(MODEL, build_tiny_fpi, input_kind="flat", training_grad="implicit", replace=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Register the task, train PPO on it, print the comparison and return train.py's result (its eval.json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-timesteps", type=int, default=6144, help="PPO's environment steps")
    parser.add_argument("--pretrain-epochs", type=int, default=6, help="warm-up epochs of the main model before the agent starts")
    parser.add_argument("--imitation-samples", type=int, default=500, help="train samples of the imitation warm-start (0: none)")
    parser.add_argument("--lam", type=float, default=0.01, help="compute penalty weight lambda")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--logdir", default=None, help="parent of the run directory (default: a new temporary directory)")
    args = parser.parse_args(argv)
    register()

    # From here on the names work wherever a built-in one does, e.g.
    #   env = gym.make("DynaLay-v0", dataset="noisy-parity", model="tiny-fpi")
    # Here the normal training entry point trains PPO on them; it ends with the baselines table.
    logdir = args.logdir or tempfile.mkdtemp(prefix="dynalay-own-task-")
    result = train_agent(
        [
            "--algo",
            "ppo",
            "--dataset",
            DATASET,
            "--model",
            MODEL,
            "--lam",
            str(args.lam),
            "--seed",
            str(args.seed),
            "--total-timesteps",
            str(args.total_timesteps),
            "--pretrain-epochs",
            str(args.pretrain_epochs),
            "--imitation-samples",
            str(args.imitation_samples),
            "--imitation-epochs",
            "10",
            "--imitation-every",
            "0",
            "--num-envs",
            "16",
            "--n-steps",
            "64",
            "--batch-size",
            "256",
            "--cotrain-every",
            "32",
            "--log-every",
            "1024",
            "--detail-every",
            str(max(args.total_timesteps, 1)),
            "--checkpoint-freq",
            "0",
            "--logdir",
            logdir,
            "--no-progress",
            "--device",
            "cpu",
            "--threads",
            "1",
        ]
    )
    print(accuracy_by_k(result))
    return result


def accuracy_by_k(result: dict[str, Any]) -> str:
    """Test accuracy per k of the agent and of the two fixed extremes: where iterating pays."""
    rows = {
        "ppo agent": result["per_difficulty"],
        "FPI on every layer": result["baselines"]["fpi_all"]["per_difficulty"],
        "plain pass (NOP)": result["baselines"]["plain"]["per_difficulty"],
    }
    lines = [f"  {'test accuracy by k (parity of k signs)':<44}" + "".join(f"{f'k={k}':>8}" for k in range(1, MAX_K + 1))]
    for name, levels in rows.items():
        lines.append(f"  {name:<44}" + "".join(f"{levels[level]['accuracy']:>8.4f}" for level in sorted(levels)))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
