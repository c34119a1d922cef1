"""PPO in one file, CleanRL style, on DynaLay's natively batched vector env.

    python examples/cleanrl_ppo.py --total-timesteps 20000
    tensorboard --logdir runs

The loop is CleanRL's ppo.py reduced to a discrete-action MLP agent: no DynaLay code beyond
``gym.make_vec("DynaLay-v0", ...)``, so it shows the environment working under a hand-written
trainer. It uses Gymnasium's next-step autoreset and ``RecordEpisodeStatistics``, and logs
``charts/episodic_return``, ``charts/accuracy`` and ``losses/*`` to runs/<run-name>.
"""

from __future__ import annotations

import argparse
import time
import typing
from dataclasses import dataclass, fields

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical
from torch.utils.tensorboard import SummaryWriter

import dynalay_env  # noqa: F401  (registers DynaLay-v0)


@dataclass
class Args:
    total_timesteps: int = 20_000
    """environment steps to train for"""
    num_envs: int = 16
    """episodes in flight in the batched engine"""
    num_steps: int = 64
    """rollout length per env"""
    learning_rate: float = 3e-4
    gamma: float = 1.0
    """episodes last at most T steps, so no discount"""
    gae_lambda: float = 0.95
    update_epochs: int = 4
    num_minibatches: int = 4
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    dataset: str = "grid-lookup"
    """DynaLay's task (the environment's default)"""
    pretrain_epochs: int | None = None
    """warm-up epochs of DynaLay's main model (default: the task's own)"""
    lam: float | None = None
    """DynaLay's compute penalty weight (default: the task's own)"""
    seed: int = 1
    threads: int = 1
    """torch CPU threads: more only oversubscribe the small tensors here"""
    run_name: str = ""


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim: int, num_actions: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(), layer_init(nn.Linear(64, 64)), nn.Tanh(), layer_init(nn.Linear(64, 1), std=1.0)
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, num_actions), std=0.01),
        )

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        probs = Categorical(logits=self.actor(x))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    hints = typing.get_type_hints(Args)
    for f in fields(Args):
        kind = [t for t in typing.get_args(hints[f.name]) if t is not type(None)] or [hints[f.name]]  # X | None -> X
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind[0], default=f.default)
    args = Args(**vars(parser.parse_args(argv)))
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = max(1, args.total_timesteps // batch_size)
    run_name = args.run_name or f"cleanrl-ppo-s{args.seed}-{int(time.time())}"
    writer = SummaryWriter(f"runs/{run_name}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    envs = gym.make_vec(
        "DynaLay-v0",
        num_envs=args.num_envs,
        vectorization_mode="vector_entry_point",
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
        dataset=args.dataset,
        pretrain_epochs=args.pretrain_epochs,
        lam=args.lam,
        seed=args.seed,
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    obs_dim = envs.single_observation_space.shape[0]
    agent = Agent(obs_dim, int(envs.single_action_space.n))
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    obs = torch.zeros((args.num_steps, args.num_envs, obs_dim))
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long)
    logprobs = torch.zeros((args.num_steps, args.num_envs))
    rewards = torch.zeros((args.num_steps, args.num_envs))
    dones = torch.zeros((args.num_steps, args.num_envs))
    values = torch.zeros((args.num_steps, args.num_envs))
    # next-step autoreset: the step after an episode's last one only resets that row, so it is not
    # a transition of the agent's and is masked out of the loss
    valid = torch.ones((args.num_steps, args.num_envs))

    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(next_obs)
    next_done = torch.zeros(args.num_envs)
    correct, finished = 0, 0
    for iteration in range(1, num_iterations + 1):
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            valid[step] = 1.0 - next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            actions[step], logprobs[step], values[step] = action, logprob, value.flatten()
            next_obs, reward, terminations, truncations, infos = envs.step(action.numpy())
            next_done = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32)
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
            dones[step] = next_done
            next_obs = torch.as_tensor(next_obs)
            if "episode" in infos:
                ended = infos["_episode"]
                writer.add_scalar("charts/episodic_return", float(infos["episode"]["r"][ended].mean()), global_step)
                correct += int(infos["correct"][ended].sum())
                finished += int(ended.sum())

        # generalized advantage estimation, bootstrapping only inside an episode
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(args.num_steps)):
                nextnonterminal = 1.0 - dones[t]
                nextvalues = next_value if t == args.num_steps - 1 else values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values

        keep = valid.reshape(-1).bool()
        b_obs, b_logprobs, b_actions = obs.reshape(-1, obs_dim)[keep], logprobs.reshape(-1)[keep], actions.reshape(-1)[keep]
        b_advantages, b_returns = advantages.reshape(-1)[keep], returns.reshape(-1)[keep]
        # normalised over the whole batch: masking reset steps can leave a minibatch of one
        b_advantages = (b_advantages - b_advantages.mean()) / (b_advantages.std() + 1e-8)
        n = int(keep.sum())
        for _ in range(args.update_epochs):
            order = torch.randperm(n)
            for start in range(0, n, minibatch_size):
                mb = order[start : start + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb], b_actions[mb])
                ratio = (newlogprob - b_logprobs[mb]).exp()
                mb_adv = b_advantages[mb]
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
                v_loss = 0.5 * ((newvalue.view(-1) - b_returns[mb]) ** 2).mean()
                loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("charts/accuracy", correct / max(1, finished), global_step)
        writer.add_scalar("charts/SPS", int(global_step / (time.time() - start_time)), global_step)

    accuracy = correct / max(1, finished)
    print(
        f"cleanrl ppo: {global_step} steps, {finished} episodes, training accuracy {accuracy:.3f}, "
        f"{int(global_step / (time.time() - start_time))} steps/s, runs/{run_name}"
    )
    envs.close()
    writer.close()
    return {"steps": global_step, "episodes": finished, "accuracy": accuracy}


if __name__ == "__main__":
    main()
