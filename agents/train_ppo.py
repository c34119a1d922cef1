"""Train a DynaLay agent with PPO (stable-baselines3) against the co-trained main model.

    python agents/train_ppo.py                      # defaults: digits, ~3 minutes on 2 CPU cores
    python agents/train_ppo.py --lam 0.05 --total-timesteps 200000 --run-name ppo-lam005
    tensorboard --logdir runs

The run directory runs/<run-name>/ receives the TensorBoard events, config.json, the agent
(agent.zip), the main model (main_model.pt) and eval.json with the final test evaluation.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecMonitor

from agents.common import DynaLayMetricsCallback, RewardWeight, parse_args, write_json
from dynalay_env import DynaLaySB3VecEnv, resolve_device


def _lam_range(text: str) -> tuple[float, float] | None:
    if text in ("", "none", "None"):
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as err:
        raise ValueError(f"--lam-range must be 'low,high', got {text!r}") from err
    return lo, hi


@dataclass
class Args:
    total_timesteps: int = field(default=40_000, metadata={"help": "environment steps the agent trains for"})
    num_envs: int = field(default=16, metadata={"help": "episodes in flight in the batched engine"})
    lam: float = field(default=0.02, metadata={"help": "compute penalty weight lambda (training, unless --lam-range; and evaluation)"})
    lam_range: str = field(default="", metadata={"help": "'low,high': draw lambda per episode from this range while training"})
    alpha: float = field(default=0.5, metadata={"help": "Eq. 2 weight of a correct answer"})
    beta: float = field(default=0.3, metadata={"help": "Eq. 2 weight of compute cost x consecutive-layer count"})
    gamma: float = field(default=0.2, metadata={"help": "paper's gamma: weight of the reward in the agent's loss (Eq. 3); rewards are scaled by it"})
    discount: float = field(default=1.0, metadata={"help": "RL discount factor (episodes are at most T steps long)"})
    dataset: str = field(default="digits", metadata={"help": "dataset name"})
    data_dir: str = field(default="", metadata={"help": "where dataset files live (datasets that need files)"})
    max_steps: int = field(default=0, metadata={"help": "step budget T per episode (0: 2L)"})
    pretrain_epochs: int = field(default=10, metadata={"help": "warm-up epochs of the main model on random paths"})
    cotrain_every: int = field(default=64, metadata={"help": "finished episodes per main-model update"})
    learning_rate: float = field(default=3e-4, metadata={"help": "PPO learning rate"})
    n_steps: int = field(default=128, metadata={"help": "PPO rollout length per env"})
    batch_size: int = field(default=256, metadata={"help": "PPO minibatch size"})
    n_epochs: int = field(default=4, metadata={"help": "PPO epochs per rollout"})
    ent_coef: float = field(default=0.01, metadata={"help": "PPO entropy bonus"})
    seed: int = field(default=1, metadata={"help": "seed of the main model, sampler and agent"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    run_name: str = field(default="", metadata={"help": "run directory name under --logdir (default: ppo-<dataset>-s<seed>-<time>)"})
    logdir: str = field(default="runs", metadata={"help": "parent directory of run directories"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(Args, argv, description=__doc__.splitlines()[0])
    try:
        lam_range = _lam_range(args.lam_range)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if args.total_timesteps < 1 or args.num_envs < 1:
        raise SystemExit("error: --total-timesteps and --num-envs must be >= 1")
    device = resolve_device(args.device)
    run_name = args.run_name or f"ppo-{args.dataset}-s{args.seed}-{int(time.time())}"
    run_dir = Path(args.logdir) / run_name
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    try:
        env = DynaLaySB3VecEnv(
            args.num_envs,
            dataset=args.dataset,
            data_dir=args.data_dir or None,
            lam=args.lam,
            lam_range=lam_range,
            alpha=args.alpha,
            beta=args.beta,
            max_steps=args.max_steps or None,
            cotrain_every=args.cotrain_every,
            seed=args.seed,
            device=device,
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the configuration is known to be valid
    config = {**asdict(args), "run_name": run_name, "device": str(device), "algo": "ppo"}
    write_json(run_dir / "config.json", config)

    if args.pretrain_epochs:
        env.env_method("pretrain", args.pretrain_epochs, seed=args.seed, progress=args.progress)
    num_layers = env.get_attr("num_layers")[0]
    max_steps = env.get_attr("max_steps")[0]
    venv = RewardWeight(VecMonitor(env), args.gamma)

    agent = PPO(
        "MlpPolicy",
        venv,
        learning_rate=args.learning_rate,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        gamma=args.discount,
        ent_coef=args.ent_coef,
        policy_kwargs={"net_arch": [64, 64]},
        seed=args.seed,
        device=device,
        verbose=0,
    )
    agent.set_logger(configure(str(run_dir), ["tensorboard", "csv"]))
    start = time.perf_counter()
    agent.learn(args.total_timesteps, callback=DynaLayMetricsCallback(num_layers, max_steps), progress_bar=args.progress)
    train_seconds = time.perf_counter() - start

    agent.save(run_dir / "agent.zip")
    main_model = env.get_attr("model")[0]
    torch.save({"state_dict": main_model.state_dict(), "config": config}, run_dir / "main_model.pt")

    def policy(obs: torch.Tensor) -> torch.Tensor:
        actions, _ = agent.predict(obs.cpu().numpy(), deterministic=True)
        return torch.as_tensor(actions)

    report = env.env_method("evaluate", policy, lam=args.lam)[0]
    result = {**report.as_dict(), "train_seconds": train_seconds, "total_timesteps": args.total_timesteps}
    write_json(run_dir / "eval.json", result)
    agent.logger.record("eval/accuracy", report.accuracy)
    agent.logger.record("eval/compute_fraction", report.compute_fraction)
    agent.logger.dump(agent.num_timesteps)
    freq = ", ".join(f"{name} {share:.2f}" for name, share in zip(["NOP"] + [f"L{i}" for i in range(1, num_layers + 1)], report.action_frequency))
    print(
        f"test accuracy {report.accuracy:.4f} (FPI on every layer: {report.fpi_all_accuracy:.4f}) | "
        f"compute {report.compute_fraction:.3f} of FPI on every layer | actions: {freq} | "
        f"lambda {args.lam} | {report.num_samples} test samples | run dir {run_dir}"
    )
    return result


if __name__ == "__main__":
    main()
