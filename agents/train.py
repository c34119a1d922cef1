"""Train a DynaLay agent (PPO, A2C, DQN or REINFORCE) against the co-trained main model.

    python agents/train.py --algo ppo                       # or dqn, a2c, reinforce
    python agents/train.py --config my_run.yaml --seed 3    # YAML with the same keys; flags win
    python agents/train.py --resume runs/<run-name>         # continue a killed run
    tensorboard --logdir runs

Each run writes runs/<run-name>/: TensorBoard events, config.json (the resolved configuration),
checkpoint.pt (agent, main model, both optimizers, co-training state; written atomically every
--checkpoint-freq steps and at the end) and eval.json (the final test evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from agents.checkpoint import CheckpointError, load_checkpoint, load_warmup, save_checkpoint
from agents.common import write_json
from agents.metrics import RunLogger
from agents.nets import sb3_policy_kwargs
from dynalay_env import DynaLaySB3VecEnv, DynaLayVectorEnv, resolve_device

ALGOS = ("ppo", "a2c", "dqn", "reinforce")


@dataclass
class Args:
    algo: str = field(default="ppo", metadata={"help": f"learning algorithm: {', '.join(ALGOS)}"})
    total_timesteps: int = field(default=40_000, metadata={"help": "environment steps to train for"})
    num_envs: int = field(default=16, metadata={"help": "episodes in flight in the batched engine"})
    lam: float = field(default=0.005, metadata={"help": "compute penalty weight lambda (training unless --lam-range; evaluation)"})
    lam_range: str = field(default="", metadata={"help": "'low,high': draw lambda per episode from this range while training"})
    alpha: float = field(default=0.5, metadata={"help": "Eq. 2 weight of a correct answer"})
    beta: float = field(default=0.3, metadata={"help": "Eq. 2 weight of compute cost x consecutive-layer count"})
    gamma: float = field(default=0.2, metadata={"help": "paper's gamma: weight of the reward in the agent's loss (Eq. 3)"})
    discount: float = field(default=1.0, metadata={"help": "RL discount factor (episodes last at most T steps)"})
    dataset: str = field(default="digits", metadata={"help": "dataset name (or path to a .npz where supported)"})
    data_dir: str = field(default="", metadata={"help": "where dataset files live"})
    model: str = field(default="", metadata={"help": "main model name (default: the dataset's)"})
    max_steps: int = field(default=0, metadata={"help": "step budget T per episode (0: 2L)"})
    pretrain_epochs: int = field(default=10, metadata={"help": "warm-up epochs of the main model on random paths"})
    warmup_cache: str = field(default="", metadata={
        "help": "directory of warmed-up main models keyed by dataset, model, seed, epochs and budget: a run finding its "
                "key there skips the warm-up and continues exactly as if it had run it (benchmarks train several agents per seed)"})
    cotrain_every: int = field(default=64, metadata={"help": "finished episodes per main-model update"})
    learning_rate: float = field(default=0.0, metadata={"help": "agent learning rate (0: the algorithm's default)"})
    n_steps: int = field(default=128, metadata={"help": "PPO/A2C rollout length per env"})
    batch_size: int = field(default=256, metadata={"help": "PPO/DQN minibatch size"})
    n_epochs: int = field(default=4, metadata={"help": "PPO epochs per rollout"})
    ent_coef: float = field(default=0.01, metadata={"help": "entropy bonus (PPO, A2C, REINFORCE)"})
    exploration_fraction: float = field(default=0.3, metadata={"help": "share of training over which epsilon decays (DQN, REINFORCE)"})
    exploration_initial_eps: float = field(default=0.0, metadata={"help": "initial epsilon (0: algorithm default, 1.0 DQN / 0.2 REINFORCE)"})
    exploration_final_eps: float = field(default=0.02, metadata={"help": "final epsilon (DQN, REINFORCE)"})
    buffer_size: int = field(default=50_000, metadata={"help": "DQN replay buffer size"})
    learning_starts: int = field(default=1_000, metadata={"help": "DQN steps before learning starts"})
    target_update_interval: int = field(default=1_000, metadata={"help": "DQN target network update interval (steps)"})
    eval_freq: int = field(default=0, metadata={"help": "evaluate on the test split every this many steps (0: only at the end)"})
    checkpoint_freq: int = field(default=10_000, metadata={"help": "write checkpoint.pt every this many steps (always at the end)"})
    log_every: int = field(default=2048, metadata={"help": "log training charts every this many steps"})
    resume: str = field(default="", metadata={"help": "run directory to resume from its checkpoint"})
    config: str = field(default="", metadata={"help": "YAML file with the same keys as these flags; explicit flags override it"})
    seed: int = field(default=1, metadata={"help": "seed of the main model, sampler and agent"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (0: torch's default); the small models here run fastest on 1"})
    run_name: str = field(default="", metadata={"help": "run directory name under --logdir (default <algo>-<dataset>-s<seed>-<time>)"})
    logdir: str = field(default="runs", metadata={"help": "parent directory of run directories"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


FIELDS = {f.name: f for f in dataclasses.fields(Args)}


def _parser(defaults: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, default=defaults[name], action=argparse.BooleanOptionalAction, help=help_text)
        elif name == "algo":
            parser.add_argument(flag, default=defaults[name], choices=ALGOS, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            parser.add_argument(flag, default=defaults[name], type=kind, help=help_text)
    return parser


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SystemExit(f"error: cannot read --config {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SystemExit(f"error: --config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: --config {path} must hold a mapping of flag names to values")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS or name in ("config", "resume"):
            raise SystemExit(f"error: --config {path}: unknown key {key!r}")
        out[name] = value
    return out


def resolve_args(argv: Sequence[str] | None = None, forced: dict[str, Any] | None = None) -> Args:
    """Defaults < saved config of --resume < YAML --config < explicit flags < ``forced``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = {name: f.default for name, f in FIELDS.items()}
    first = _parser(defaults).parse_args(argv)
    layered = dict(defaults)
    if first.resume:
        saved = Path(first.resume) / "config.json"
        if not saved.is_file():
            raise SystemExit(f"error: --resume {first.resume}: no config.json there (is it a run directory?)")
        layered.update({k: v for k, v in json.loads(saved.read_text()).items() if k in FIELDS})
    if first.config:
        layered.update(_read_yaml(first.config))
    layered.update(forced or {})
    args = _parser(layered).parse_args(argv)
    for key, value in (forced or {}).items():
        setattr(args, key, value)
    return Args(**vars(args))


def set_threads(threads: int) -> None:
    """Intra-op threads cost more than they give on these small tensors, and oversubscribe badly
    when anything else shares the cores (measured: a warm-up epoch 9.5 s with 2 threads next to
    one busy process, 2.0 s with 1)."""
    if threads < 0:
        raise SystemExit(f"error: --threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def _lam_range(text: str) -> tuple[float, float] | None:
    if text in ("", "none", "None", None):
        return None
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise SystemExit(f"error: --lam-range must be 'low,high', got {text!r}") from None
    return lo, hi


# ---- the algorithms ----------------------------------------------------------------------------
class Trainer(Protocol):
    """What train.py needs of an algorithm: learn for some steps with hooks, save, load, act, and
    reach the environment's engine through the env's own interface (SB3 ``env_method`` /
    ``get_attr``, or the Gymnasium vector env)."""

    algo: str
    num_timesteps: int

    def learn(self, steps: int, hooks: "Hooks") -> None:
        """Train for ``steps`` more environment steps, calling ``hooks`` as episodes finish."""

    def state(self) -> dict[str, Any]:
        """Agent weights, optimizer state and anything else needed to resume."""

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; raise :class:`CheckpointError` when it does not fit."""

    def policy(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The deterministic evaluation policy: observations -> actions."""

    def attach_run(self, run_dir: Path) -> None:
        """Point the algorithm's own logging (if any) at the run directory."""

    def engine_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a method of the environment's engine."""

    def engine_attr(self, name: str) -> Any:
        """Read an attribute of the environment's engine."""


class SB3Trainer:
    def __init__(self, args: Args, env_kwargs: dict[str, Any], device: torch.device) -> None:
        from stable_baselines3 import A2C, DQN, PPO
        from stable_baselines3.common.vec_env import VecMonitor

        from agents.common import RewardWeight

        self.algo = args.algo
        self.env = DynaLaySB3VecEnv(args.num_envs, **env_kwargs)
        self.venv = RewardWeight(VecMonitor(self.env), args.gamma)
        self.cls = {"ppo": PPO, "a2c": A2C, "dqn": DQN}[args.algo]
        kwargs: dict[str, Any] = {
            "gamma": args.discount,
            "policy_kwargs": sb3_policy_kwargs(args.algo),
            "seed": args.seed,
            "device": device,
            "verbose": 0,
        }
        if args.learning_rate:
            kwargs["learning_rate"] = args.learning_rate
        if args.algo == "ppo":
            kwargs.update(n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs, ent_coef=args.ent_coef)
        elif args.algo == "a2c":
            kwargs.update(n_steps=max(1, args.n_steps // 16), ent_coef=args.ent_coef)
        else:
            kwargs.update(
                batch_size=args.batch_size,
                buffer_size=args.buffer_size,
                learning_starts=args.learning_starts,
                target_update_interval=max(1, args.target_update_interval // args.num_envs),
                exploration_fraction=args.exploration_fraction,
                exploration_initial_eps=args.exploration_initial_eps or 1.0,
                exploration_final_eps=args.exploration_final_eps,
                train_freq=1,
                gradient_steps=max(1, args.num_envs // 4),
            )
        self.kwargs = kwargs
        self.model = self.cls("MlpPolicy", self.venv, **kwargs)
        self.device = device

    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    def learn(self, steps: int, hooks: "Hooks") -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        class Callback(BaseCallback):
            def _on_step(inner) -> bool:  # noqa: N805
                hooks.on_infos(inner.locals.get("infos", ()))
                hooks.after_step(self.num_timesteps)
                return True

        self.model.learn(steps, callback=Callback(), reset_num_timesteps=False, progress_bar=hooks.progress)

    def state(self) -> dict[str, Any]:
        buf = io.BytesIO()
        self.model.save(buf)
        out: dict[str, Any] = {"zip": buf.getvalue(), "replay_buffer": None}
        if self.algo == "dqn":
            rb = io.BytesIO()
            self.model.save_replay_buffer(rb)
            out["replay_buffer"] = rb.getvalue()
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            self.model = self.cls.load(io.BytesIO(state["zip"]), env=self.venv, device=self.device)
        except Exception as err:
            raise CheckpointError(f"the checkpoint's agent cannot be loaded for this environment: {err}") from None
        if state.get("replay_buffer"):
            self.model.load_replay_buffer(io.BytesIO(state["replay_buffer"]))

    def policy(self) -> Callable[[torch.Tensor], torch.Tensor]:
        model = self.model

        def act(obs: torch.Tensor) -> torch.Tensor:
            actions, _ = model.predict(obs.cpu().numpy(), deterministic=True)
            return torch.as_tensor(actions)

        return act

    def attach_run(self, run_dir: Path) -> None:
        from stable_baselines3.common.logger import configure

        # SB3's own tags (rollout/ep_rew_mean, train/*, time/fps) go into the same run directory
        self.model.set_logger(configure(str(run_dir), ["tensorboard"]))

    def engine_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.env.env_method(method, *args, **kwargs)[0]

    def engine_attr(self, name: str) -> Any:
        return self.env.get_attr(name)[0]


class ReinforceTrainer:
    def __init__(self, args: Args, env_kwargs: dict[str, Any], device: torch.device) -> None:
        from agents.reinforce import EpisodeBuffer, ReinforceAgent, ReinforceConfig

        self.algo = "reinforce"
        self.env = DynaLayVectorEnv(args.num_envs, torch_arrays=True, **env_kwargs)
        config = ReinforceConfig(
            discount=args.discount,
            reward_weight=args.gamma,
            ent_coef=args.ent_coef,
            exploration_final_eps=args.exploration_final_eps,
            exploration_fraction=args.exploration_fraction,
            n_steps=max(1, args.n_steps // 8),
        )
        if args.learning_rate:
            config.learning_rate = args.learning_rate
        if args.exploration_initial_eps:
            config.exploration_initial_eps = args.exploration_initial_eps
        obs_dim = self.env.single_observation_space.shape[0]
        self.agent = ReinforceAgent(obs_dim, int(self.env.single_action_space.n), config).to(device)
        self.buffer = EpisodeBuffer(args.num_envs, self.env.engine.max_steps, obs_dim, args.discount, device)
        self.total = args.total_timesteps
        self.num_timesteps = 0
        self.seed = args.seed
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(args.seed)
        self.device = device

    def learn(self, steps: int, hooks: "Hooks") -> None:
        from tqdm.auto import tqdm

        n = self.env.num_envs
        obs, _ = self.env.reset(seed=self.seed + self.num_timesteps)
        target = self.num_timesteps + steps
        pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        bar = tqdm(total=steps, disable=not hooks.progress, unit="step", desc="reinforce")
        while self.num_timesteps < target:
            eps = self.agent.epsilon(self.num_timesteps / max(1, self.total))
            actions = self.agent.act(obs, eps, self.generator)
            next_obs, rewards, terminated, truncated, infos = self.env.step(actions)
            done = terminated | truncated
            finished = self.buffer.add(obs, actions, rewards, done)
            if finished[0].shape[0]:
                pending.append(finished)
            if "final_info" in infos:
                mask = infos["_final_info"]
                hooks.on_batch({k: v[mask].cpu().numpy() for k, v in infos["final_info"].items() if not k.startswith("_")})
            obs = next_obs
            self.num_timesteps += n
            bar.update(n)
            if len(pending) >= self.agent.config.n_steps:
                batch = [torch.cat(parts) for parts in zip(*pending)]
                hooks.on_losses(self.agent.update(*batch), self.num_timesteps)
                pending.clear()
            hooks.after_step(self.num_timesteps)
        bar.close()

    def state(self) -> dict[str, Any]:
        return {
            "agent": self.agent.state_dict(),
            "optimizer": self.agent.optimizer.state_dict(),
            "num_timesteps": self.num_timesteps,
            "generator": self.generator.get_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            self.agent.load_state_dict(state["agent"])
            self.agent.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"the checkpoint's agent does not match this environment: {err}") from None
        self.num_timesteps = int(state["num_timesteps"])
        self.generator.set_state(state["generator"])

    def policy(self) -> Callable[[torch.Tensor], torch.Tensor]:
        agent = self.agent
        return lambda obs: agent.predict(obs.to(self.device))

    def attach_run(self, run_dir: Path) -> None:
        """REINFORCE logs through the shared RunLogger only."""

    def engine_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.env.engine, method)(*args, **kwargs)

    def engine_attr(self, name: str) -> Any:
        return getattr(self.env.engine, name)


def make_trainer(args: Args, env_kwargs: dict[str, Any], device: torch.device) -> Trainer:
    if args.algo == "reinforce":
        return ReinforceTrainer(args, env_kwargs, device)
    return SB3Trainer(args, env_kwargs, device)


# ---- the run -----------------------------------------------------------------------------------
class Hooks:
    """Logging, periodic evaluation and checkpointing, called by every algorithm's loop."""

    def __init__(self, run: "TrainingRun") -> None:
        self.run = run
        self.progress = run.args.progress

    def on_infos(self, infos: Sequence[dict]) -> None:
        self.run.logger.stats.add_infos(infos)

    def on_batch(self, finished: dict[str, np.ndarray]) -> None:
        self.run.logger.stats.add_batch(finished)

    def on_losses(self, losses: dict[str, float], step: int) -> None:
        """Agent losses of algorithms that do not log through SB3 (REINFORCE)."""
        for name, value in losses.items():
            self.run.logger.writer.add_scalar(f"losses/{name}", value, step)

    def after_step(self, step: int) -> None:
        self.run.after_step(step)


class TrainingRun:
    def __init__(self, args: Args, run_dir: Path, trainer: Trainer) -> None:
        self.args = args
        self.run_dir = run_dir
        self.trainer = trainer
        self.logger = RunLogger(run_dir, trainer.engine_attr("num_layers"), trainer.engine_attr("max_steps"), args.log_every)
        self.next_eval = args.eval_freq or None
        self.next_checkpoint = args.checkpoint_freq or None

    def after_step(self, step: int) -> None:
        self.logger.maybe_log(step, self.trainer.engine_attr("last_main_loss"))
        if self.next_eval is not None and step >= self.next_eval:
            self.evaluate(step)
            while self.next_eval <= step:
                self.next_eval += self.args.eval_freq
        if self.next_checkpoint is not None and step >= self.next_checkpoint:
            self.checkpoint()
            while self.next_checkpoint <= step:
                self.next_checkpoint += self.args.checkpoint_freq

    def evaluate(self, step: int):
        report = self.trainer.engine_call("evaluate", self.trainer.policy(), lam=self.args.lam)
        self.logger.log_eval(report, step)
        return report

    def checkpoint(self) -> Path:
        return save_checkpoint(
            self.run_dir,
            {
                "algo": self.args.algo,
                "timesteps": self.trainer.num_timesteps,
                "agent": self.trainer.state(),
                "engine": self.trainer.engine_call("state_dict"),
                "config": asdict(self.args),
                "logger": {"last_log_step": self.logger.last_log_step},
            },
        )


def warm_up(trainer: Trainer, args: Args) -> None:
    """Pretrain the main model, or load the result of an identical earlier warm-up from
    ``--warmup-cache``, restoring the RNG states it ended with so that what follows is the same."""
    if not args.warmup_cache:
        trainer.engine_call("pretrain", args.pretrain_epochs, seed=args.seed, progress=args.progress)
        return
    key = {"dataset": args.dataset, "data_dir": args.data_dir, "model": args.model, "seed": args.seed,
           "pretrain_epochs": args.pretrain_epochs, "max_steps": trainer.engine_attr("max_steps"),
           "device": str(trainer.engine_attr("device"))}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(args.warmup_cache)
    path = cache_dir / f"warmup-{args.dataset}-s{args.seed}-e{args.pretrain_epochs}-{digest}.pt"
    if path.is_file():
        try:
            cached = load_warmup(path)
            if cached["key"] != key:
                raise CheckpointError(f"warm-up cache {path} holds {cached['key']}, not {key}")
            trainer.engine_call("load_state_dict", cached["engine"])
        except (CheckpointError, ValueError) as err:
            raise SystemExit(f"error: {err} (delete the file to warm up again)") from None
        torch.set_rng_state(cached["torch_rng"])
        np.random.set_state(cached["numpy_rng"])
        print(f"warm-up loaded from {path}", flush=True)
        return
    trainer.engine_call("pretrain", args.pretrain_epochs, seed=args.seed, progress=args.progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(cache_dir, {"key": key, "engine": trainer.engine_call("state_dict"),
                                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()}, name=path.name)


def main(argv: Sequence[str] | None = None, forced: dict[str, Any] | None = None) -> dict:
    args = resolve_args(argv, forced)
    set_threads(args.threads)
    if args.total_timesteps < 1 or args.num_envs < 1:
        raise SystemExit("error: --total-timesteps and --num-envs must be >= 1")
    lam_range = _lam_range(args.lam_range)
    device = resolve_device(args.device)
    if args.resume:
        run_dir = Path(args.resume)
        try:
            checkpoint = load_checkpoint(run_dir, map_location=device)
        except CheckpointError as err:
            raise SystemExit(f"error: cannot resume: {err}") from None
        if checkpoint["algo"] != args.algo:
            raise SystemExit(f"error: cannot resume: the checkpoint is a {checkpoint['algo']} run, not {args.algo}")
    else:
        checkpoint = None
        run_dir = Path(args.logdir) / (args.run_name or f"{args.algo}-{args.dataset}-s{args.seed}-{int(time.time())}")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    env_kwargs = dict(
        dataset=args.dataset,
        data_dir=args.data_dir or None,
        model=args.model or None,
        lam=args.lam,
        lam_range=lam_range,
        alpha=args.alpha,
        beta=args.beta,
        max_steps=args.max_steps or None,
        cotrain_every=args.cotrain_every,
        seed=args.seed,
        device=device,
    )
    try:
        trainer = make_trainer(args, env_kwargs, device)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None

    run_dir.mkdir(parents=True, exist_ok=True)  # only once the configuration is known to be valid
    config = {**asdict(args), "resume": "", "device": str(device)}
    if checkpoint is None:
        write_json(run_dir / "config.json", config)
        if args.pretrain_epochs:
            warm_up(trainer, args)
    else:
        try:
            trainer.engine_call("load_state_dict", checkpoint["engine"])
        except ValueError as err:
            raise SystemExit(f"error: cannot resume: {err}") from None
        try:
            trainer.load_state(checkpoint["agent"])
        except CheckpointError as err:
            raise SystemExit(f"error: cannot resume: {err}") from None
        print(f"resumed {args.algo} run {run_dir} at step {trainer.num_timesteps} of {args.total_timesteps}", flush=True)

    trainer.attach_run(run_dir)
    run = TrainingRun(args, run_dir, trainer)
    if checkpoint is not None:
        run.logger.last_log_step = int(checkpoint.get("logger", {}).get("last_log_step", trainer.num_timesteps))
        run.next_eval = (trainer.num_timesteps // args.eval_freq + 1) * args.eval_freq if args.eval_freq else None
        run.next_checkpoint = (trainer.num_timesteps // args.checkpoint_freq + 1) * args.checkpoint_freq if args.checkpoint_freq else None
    start = time.perf_counter()
    remaining = args.total_timesteps - trainer.num_timesteps
    if remaining > 0:
        trainer.learn(remaining, Hooks(run))
    train_seconds = time.perf_counter() - start
    run.logger.log(trainer.num_timesteps, trainer.engine_attr("last_main_loss"))
    run.checkpoint()

    report = run.evaluate(trainer.num_timesteps)
    result = {
        **report.as_dict(),
        "algo": args.algo,
        "timesteps": trainer.num_timesteps,
        "train_seconds": train_seconds,
        "eval_lam": args.lam,
    }
    write_json(run_dir / "eval.json", result)
    run.logger.close()
    names = ["NOP"] + [f"L{i}" for i in range(1, len(report.action_frequency))]
    freq = ", ".join(f"{n} {share:.2f}" for n, share in zip(names, report.action_frequency))
    print(
        f"[{args.algo}] test accuracy {report.accuracy:.4f} (FPI on every layer: {report.fpi_all_accuracy:.4f}) | "
        f"compute {report.compute_fraction:.3f} of FPI on every layer | actions: {freq} | "
        f"lambda {args.lam} | {report.num_samples} test samples | run dir {run_dir}"
    )
    return result


if __name__ == "__main__":
    main()
