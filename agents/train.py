"""Train a DynaLay agent (PPO, A2C, DQN or REINFORCE) against the co-trained main model.

    python agents/train.py --algo ppo                       # or dqn, a2c, reinforce
    python agents/train.py --algo dqn --help                # the flags, with dqn's own settings
    python agents/train.py --config my_run.yaml --seed 3    # YAML with the same keys; flags win
    python agents/train.py --resume runs/<run-name>         # continue a killed run
    tensorboard --logdir runs

Each run writes runs/<run-name>/: TensorBoard events, config.json (the resolved configuration),
checkpoint.pt (agent, main model, both optimizers, co-training state; written atomically every
--checkpoint-freq steps and at the end) and eval.json (the final test evaluation).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from agents.algorithms import ALGORITHMS, make_agent
from agents.checkpoint import CheckpointError, load_checkpoint
from agents.compare import simple_baselines, simple_baselines_table
from agents.imitation import imitation_warm_start
from agents.run import RunDirectory, TrainingRun, warm_up
from agents.settings import resolve
from dynalay_env import action_names, make_engine
from main_models import resolve_device, set_threads, write_json


def main(argv: Sequence[str] | None = None, forced: dict[str, Any] | None = None) -> dict:
    held: list[RunDirectory] = []  # the run directory, locked from its claim until the run returns or fails
    try:
        return _train(argv, forced, held)
    finally:
        for directory in held:
            directory.release()


def _train(argv: Sequence[str] | None, forced: dict[str, Any] | None, held: list[RunDirectory]) -> dict:
    # 1. settings: defaults < resumed config < YAML < flags
    settings = resolve(argv, ALGORITHMS, forced, description=__doc__.splitlines()[0])
    run, env = settings.run, settings.env
    try:
        set_threads(run.threads)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if run.total_timesteps < 1 or run.num_envs < 1:
        raise SystemExit("error: --total-timesteps and --num-envs must be >= 1")
    if run.imitation_samples < 0 or run.imitation_epochs < 1 or run.imitation_every < 0:
        raise SystemExit("error: --imitation-samples and --imitation-every must be >= 0 and --imitation-epochs >= 1")
    try:
        device = resolve_device(run.device, "--device")
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None

    # 2. the run directory: a resumed run is locked before its checkpoint is read
    checkpoint = None
    if settings.resume is not None:
        held.append(RunDirectory.claim(settings.resume, "resume"))
        run_dir = held[-1].path
        try:
            checkpoint = load_checkpoint(run_dir, map_location=device)
        except CheckpointError as err:
            raise SystemExit(f"error: cannot resume: {err}") from None
        if checkpoint["algo"] != run.algo:
            raise SystemExit(f"error: cannot resume: the checkpoint is a {checkpoint['algo']} run, not {run.algo}")
    else:
        run_dir = Path(run.logdir) / (run.run_name or f"{run.algo}-{Path(env.dataset).name}-s{run.seed}-{int(time.time())}")
    torch.manual_seed(run.seed)
    np.random.seed(run.seed)

    # 3. the environment's engine (main model and its trainer) and the agent on the face it speaks
    try:
        engine = make_engine(env, run.num_envs, device=device, warm_up=False)
        agent = make_agent(
            run.algo,
            settings.agent,
            engine,
            reward_weight=run.reward_weight,
            seed=run.seed,
            device=device,
            total_timesteps=run.total_timesteps,
        )
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None

    # 4. a new run claims its directory only now that its configuration is known to be valid; it warms
    #    up the main model (checkpointing every epoch), and a resumed run restores both models
    if checkpoint is None:
        held.append(RunDirectory.claim(run_dir, "overwrite" if settings.overwrite else "new"))
    write_json(run_dir / "config.json", {**settings.to_json(), "effective_agent": agent.effective_settings()})
    warm_start = None
    if checkpoint is None or checkpoint["phase"] == "warmup":
        if env.pretrain_epochs:
            warm_up(engine, settings, run_dir, resume=checkpoint)
        if run.imitation_samples:
            warm_start = imitation_warm_start(engine, agent, samples=run.imitation_samples, epochs=run.imitation_epochs, seed=run.seed)
            print(
                f"[{run.algo}] imitation warm-start: the oracle's sequences for {warm_start.samples} train samples, "
                f"{warm_start.demonstrations} decisions, agreement {warm_start.agreement:.3f} ({warm_start.seconds:.1f} s)",
                flush=True,
            )
    else:
        try:
            engine.load_state_dict(checkpoint["engine"])
            agent.load_state(checkpoint["agent"])
        except (ValueError, CheckpointError) as err:
            raise SystemExit(f"error: cannot resume: {err}") from None
        print(f"resumed {run.algo} run {run_dir} at step {agent.num_timesteps} of {run.total_timesteps}", flush=True)

    # 5. learn, with logging, evaluation and checkpoints as the agent goes
    agent.attach_run(run_dir)
    training = TrainingRun(settings, run_dir, engine, agent)
    if checkpoint is not None and checkpoint["phase"] == "train":
        training.resume_counters(checkpoint)
    start, start_step, engine_before = time.perf_counter(), agent.num_timesteps, dict(engine.seconds)
    remaining = run.total_timesteps - agent.num_timesteps
    if remaining > 0:
        agent.learn(remaining, training)
    train_seconds = time.perf_counter() - start
    breakdown = training.time_breakdown(train_seconds, engine_before)
    sps = (agent.num_timesteps - start_step) / max(train_seconds, 1e-9)
    training.log(agent.num_timesteps, detail=True)
    training.checkpoint()

    # 6. the final evaluation on the test split
    report = training.evaluate(agent.num_timesteps)
    baselines = simple_baselines(
        engine.model, engine.splits, report, reward=engine.reward.fixed(env.lam), max_steps=engine.max_steps, device=engine.device
    )
    result = {
        **report.as_dict(),
        "algo": run.algo,
        "timesteps": agent.num_timesteps,
        "train_seconds": train_seconds,
        "eval_lam": env.lam,
        "train_sps": sps,
        "train_time_breakdown_seconds": breakdown,
        "imitation": warm_start.as_dict() if warm_start else None,
        "baselines": baselines,
    }
    write_json(run_dir / "eval.json", result)
    training.logger.close()
    freq = ", ".join(f"{n} {share:.2f}" for n, share in zip(action_names(engine.num_layers), report.action_frequency))
    print(
        f"[{run.algo}] test accuracy {report.accuracy:.4f} (FPI on every layer: {report.fpi_all_accuracy:.4f}) | "
        f"compute {report.compute_fraction:.3f} of FPI on every layer | actions: {freq} | "
        f"lambda {env.lam} | {report.num_samples} test samples | run dir {run_dir}"
    )
    print(simple_baselines_table(baselines, agent_name=f"{run.algo} agent"))
    shares = ", ".join(f"{name.replace('_', ' ')} {seconds / max(train_seconds, 1e-9):.0%}" for name, seconds in breakdown.items())
    print(f"[{run.algo}] training: {agent.num_timesteps - start_step} steps in {train_seconds:.1f} s = {sps:.0f} steps/s | time: {shares}")
    return result


if __name__ == "__main__":
    main()
