"""PPO with torchrl on DynaLay's batched vector env.

    pip install -e ".[clients]"
    python examples/torchrl_ppo.py --frames 8192

torchrl's ``GymWrapper`` takes the natively batched env in Gymnasium's DISABLED autoreset mode
(the mode torchrl prefers: it resets finished rows itself through ``reset_mask``). Its ``Collector``
steps the env under ``torch.no_grad()``; DynaLay's co-training enables gradients for itself, so the
main model keeps learning while torchrl collects.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import GymWrapper
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

import dynalay_env  # noqa: F401  (registers DynaLay-v0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8192, help="environment steps to train for")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--dataset", default="grid-lookup", help="DynaLay's task (the environment's default)")
    parser.add_argument(
        "--pretrain-epochs", type=int, default=None, help="warm-up epochs of DynaLay's main model (default: the task's own)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    task = {"dataset": args.dataset, "pretrain_epochs": args.pretrain_epochs, "seed": args.seed}
    # autoreset off: torchrl resets the finished envs itself, by a mask
    venv = gym.make_vec("DynaLay-v0", args.num_envs, "vector_entry_point", autoreset_mode=gym.vector.AutoresetMode.DISABLED, **task)
    env = GymWrapper(venv, categorical_action_encoding=True)  # actions as indices, as a Categorical policy samples them
    obs_dim = env.observation_spec["observation"].shape[-1]
    num_actions = env.action_spec.space.n

    def mlp(out: int) -> nn.Module:
        return nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, out))

    policy_net = mlp(num_actions)
    actor = ProbabilisticActor(
        TensorDictModule(policy_net, in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        spec=env.action_spec,
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    critic = ValueOperator(mlp(1), in_keys=["observation"])
    advantage = GAE(gamma=1.0, lmbda=0.95, value_network=critic, average_gae=True)
    loss = ClipPPOLoss(actor, critic, entropy_coeff=0.01)
    optimizer = torch.optim.Adam(loss.parameters(), lr=3e-4)

    frames_per_batch = args.num_envs * 64
    collector = Collector(env, actor, frames_per_batch=frames_per_batch, total_frames=args.frames, auto_register_policy_transforms=False)
    frames = episodes = 0
    for batch in collector:
        frames += batch.numel()
        episodes += int(batch["next", "done"].sum())
        with torch.no_grad():
            advantage(batch)
        data = batch.reshape(-1)
        for _ in range(4):
            for index in torch.randperm(data.numel()).split(256):
                losses = loss(data[index])
                total = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                optimizer.zero_grad()
                total.backward()
                nn.utils.clip_grad_norm_(loss.parameters(), 0.5)
                optimizer.step()
        collector.update_policy_weights_()
    collector.shutdown()

    # the greedy policy on the test split, with DynaLay's evaluation (the co-trained main model frozen)
    engine = venv.engine
    with torch.no_grad():
        report = dynalay_env.evaluate_policy(
            engine.model,
            engine.splits,
            lambda obs: policy_net(obs).argmax(-1),
            max_steps=engine.max_steps,
            observation=engine.layout.groups,
        )
    print(
        f"torchrl ppo: {frames} frames, {episodes} episodes, {engine.trainer.updates} main-model updates while torchrl "
        f"collected, test accuracy {report.accuracy:.4f}, compute {report.compute_fraction:.3f} of FPI on every layer"
    )
    return {"frames": frames, "episodes": episodes, "cotrain_updates": engine.trainer.updates, "accuracy": report.accuracy}


if __name__ == "__main__":
    main()
