"""Train REINFORCE against a main model co-trained across processes (DistributedDataParallel).

    torchrun --standalone --nproc-per-node 2 agents/train_distributed.py                     # 2 CPU ranks (gloo)
    torchrun --standalone --nproc-per-node 8 agents/train_distributed.py --device cuda ...   # 8 GPUs, one per rank (nccl)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 agents/train_distributed.py ...

The flags are agents/train.py's (``--algo`` is reinforce). ``--num-envs`` and ``--total-timesteps``
are global: each rank runs ``num_envs / world`` episodes in flight, on its own engine (its shard of
the episodes, drawn with its own seed) and its own replica of the main model.

* **Main model:** :class:`main_models.DistributedMainModelTrainer` all-reduces every co-training
  update; the ranks agree after each environment step on when to update (their episodes finish
  at different rates), and the update is the mean over all their finished episodes.
* **Agent:** replicated. Every rank acts on its own episodes with the same policy; they update
  together (when every rank has ``--n-steps`` steps of finished episodes) on gradients averaged
  over the ranks, so the replicas stay equal. Each rank's batch weighs the same.
* **Warm-up:** replicated, not sharded: every rank runs the same epochs on the same data, or loads
  the identical warm-up from the warm-up cache (ranks on one machine share one warm-up).
* Rank 0 alone writes the run directory (TensorBoard with global step counts, config.json,
  eval.json, main_model.pt, agent.pt), shows the progress bar and evaluates on the test split.

Not supported here yet, and refused: ``--resume`` (a checkpoint would have to hold every rank's
engine and sampler); the periodic checkpoint.pt of agents/train.py is not written.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from agents.algorithms import ALGORITHMS
from agents.reinforce import ReinforceLearner
from agents.run import RunDirectory, TrainingRun
from agents.settings import resolve
from dynalay_env import EpisodeRecord, export_main_model, make_engine, make_trainer, prepare_main_model
from main_models import DistributedMainModelTrainer, local_device, replicas_equal, set_threads, write_json


class ProcessGroupReplicas:
    """:class:`agents.reinforce.Replicas` over the default process group."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.world_size = dist.get_world_size()

    def all_ready(self, ready: bool) -> bool:
        flag = torch.tensor([int(ready)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag)

    def average_gradients(self, module: nn.Module) -> None:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


class GlobalSteps:
    """Rank 0's hooks, with its step counts scaled to the global number of environment steps."""

    def __init__(self, hooks: TrainingRun, world_size: int) -> None:
        self.hooks, self.world_size, self.progress = hooks, world_size, hooks.progress

    def on_infos(self, infos: Sequence[Mapping[str, Any]]) -> None:
        self.hooks.on_infos(infos)

    def on_episodes(self, record: EpisodeRecord) -> None:
        self.hooks.on_episodes(record)

    def on_losses(self, losses: Mapping[str, float], step: int) -> None:
        self.hooks.on_losses(losses, step * self.world_size)

    def after_step(self, step: int) -> None:
        self.hooks.after_step(step * self.world_size)

    def between_updates(self, step: int) -> None:
        pass  # no imitation refresh: every replica would have to refit identically


class Silent:
    """The hooks of ranks other than 0: they log nothing."""

    progress = False

    def on_infos(self, infos: Sequence[Mapping[str, Any]]) -> None:
        pass

    def on_episodes(self, record: EpisodeRecord) -> None:
        pass

    def on_losses(self, losses: Mapping[str, float], step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def between_updates(self, step: int) -> None:
        pass


def _agree(ok: bool, device: torch.device) -> bool:
    """True on every rank only if ``ok`` is true on every rank (so that all stop together)."""
    flag = torch.tensor([int(ok)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


def main(argv: Sequence[str] | None = None) -> dict | None:
    settings = resolve(
        argv, ALGORITHMS, {"algo": "reinforce", "imitation_samples": 0, "imitation_every": 0}, description=__doc__.splitlines()[0]
    )
    run = settings.run
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise SystemExit(
            "error: launch this script with torchrun, e.g. torchrun --standalone --nproc-per-node 2 agents/train_distributed.py"
        )
    if settings.resume is not None:
        raise SystemExit("error: --resume is not supported for distributed runs yet (use agents/train.py for resumable runs)")
    try:
        set_threads(run.threads)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        device = local_device(run.device, int(os.environ.get("LOCAL_RANK", 0)), "--device")
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    held: list[RunDirectory] = []  # rank 0's run directory, locked from its claim until the run returns or fails
    try:
        return _train(settings, device, held)
    finally:
        for directory in held:
            directory.release()
        # The co-training DDP wrapper sits in a reference cycle (its loss module holds the trainer),
        # so only the cyclic collector frees it and its reducer: do that while their process group
        # is alive, not at interpreter exit after the group is gone
        gc.collect()
        dist.destroy_process_group()


def _train(settings: Any, device: torch.device, held: list[RunDirectory]) -> dict | None:
    run, env = settings.run, settings.env
    rank, world = dist.get_rank(), dist.get_world_size()
    if run.num_envs % world or run.num_envs < world:
        raise SystemExit(f"error: --num-envs {run.num_envs} must be a multiple of the {world} ranks")
    if run.total_timesteps < run.num_envs:
        raise SystemExit(f"error: --total-timesteps must be at least --num-envs ({run.num_envs})")

    # the main model: every rank builds it from the same seed; the trainer broadcasts rank 0's anyway
    torch.manual_seed(run.seed)
    try:
        engine = make_engine(env, run.num_envs // world, device=device, warm_up=False, trainer_type=DistributedMainModelTrainer)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    trainer = engine.trainer or make_trainer(
        env, engine.model, engine.splits, max_steps=engine.max_steps, trainer_type=DistributedMainModelTrainer
    )

    # rank 0 claims the run directory; if it cannot, every rank stops
    run_dir = Path(run.logdir) / (run.run_name or f"ddp-reinforce-{Path(env.dataset).name}-s{run.seed}-{int(time.time())}")
    claimed, message = True, ""
    if rank == 0:
        try:
            held.append(RunDirectory.claim(run_dir, "overwrite" if settings.overwrite else "new"))
            write_json(run_dir / "config.json", {**settings.to_json(), "world_size": world, "backend": dist.get_backend()})
        except SystemExit as err:
            claimed, message = False, str(err)
    if not _agree(claimed, device):
        raise SystemExit(message or "error: rank 0 could not claim the run directory")

    if env.pretrain_epochs:
        if rank == 0:
            print(f"warm-up: {env.pretrain_epochs} epochs, replicated on {world} ranks", flush=True)
        try:
            prepare_main_model(
                trainer,
                env,
                engine.splits,
                max_steps=engine.max_steps,
                progress=rank == 0,
                replicas=lambda ok: _agree(ok, device),
                store=rank == 0,
            )
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    engine.seed(run.seed + 7919 * rank)  # each rank its own episodes

    agent = ReinforceLearner(
        settings.agent,
        engine,
        reward_weight=run.reward_weight,
        seed=run.seed,
        device=device,
        total_timesteps=run.total_timesteps // world,
        replicas=ProcessGroupReplicas(device),
    )
    agent.generator.manual_seed(run.seed + 7919 * rank)  # its own exploration draws; the same initial policy
    training = TrainingRun(replace(settings, run=replace(run, checkpoint_freq=0)), run_dir, engine, agent) if rank == 0 else None
    hooks = GlobalSteps(training, world) if training is not None else Silent()

    start, engine_before = time.perf_counter(), dict(engine.seconds)
    agent.learn(run.total_timesteps // world, hooks)
    train_seconds = time.perf_counter() - start
    main_models_equal, agents_equal = trainer.replicas_equal(), replicas_equal(agent.agent)
    steps = agent.num_timesteps * world
    if training is None:
        dist.barrier()
        return None

    training.log(steps, detail=True)
    export_main_model(engine, run_dir / "main_model.pt")
    agent.export(run_dir)
    report = training.evaluate(steps)
    breakdown = training.time_breakdown(train_seconds, engine_before)
    result = {
        **report.as_dict(),
        "algo": "reinforce",
        "timesteps": steps,
        "train_seconds": train_seconds,
        "eval_lam": env.lam,
        "train_sps": steps / max(train_seconds, 1e-9),
        "train_time_breakdown_seconds_rank0": breakdown,
        "world_size": world,
        "backend": dist.get_backend(),
        "cotrain_updates": trainer.updates,
        "replicas_equal": main_models_equal,
        "agent_replicas_equal": agents_equal,
    }
    write_json(run_dir / "eval.json", result)
    training.logger.close()
    print(
        f"[reinforce, ranks {world}] test accuracy {report.accuracy:.4f} (FPI on every layer: {report.fpi_all_accuracy:.4f}) | "
        f"compute {report.compute_fraction:.3f} of FPI on every layer | {steps} steps in {train_seconds:.1f} s = "
        f"{result['train_sps']:.0f} steps/s over all ranks | {trainer.updates} co-training updates | replicas equal: main model {main_models_equal}, agent {agents_equal} | "
        f"run dir {run_dir}",
        flush=True,
    )
    dist.barrier()
    return result


if __name__ == "__main__":
    main()
