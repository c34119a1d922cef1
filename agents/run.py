"""A training run's bookkeeping, shared by every algorithm: the run directory, TensorBoard, periodic
evaluation and checkpoints, and the main model's warm-up (with its cache)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from dynalay_env import (
    DynaLayEngine,
    EpisodeRecord,
    EvalReport,
    cache_directory,
    evaluate_policy,
    export_main_model,
    make_trainer,
    prepare_main_model,
    time_policy,
)
from main_models import EpochProgress, evaluate_fixed_paths

from .algorithms import Agent
from .checkpoint import rng_state, save_checkpoint, set_rng_state
from .imitation import imitation_warm_start
from .metrics import RunLogger
from .settings import ResolvedSettings

try:
    import fcntl
except ImportError:  # not on POSIX: runs are still created atomically, but not locked
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunDirectory:
    """A run directory owned by one process while it trains.

    A new run creates its directory with one atomic ``mkdir``, so of two runs started with the same
    name only one can win; the other is refused, as is a start in a directory that already exists.
    ``--resume`` and ``--overwrite`` take an existing directory, under an exclusive lock on its
    ``.lock`` file that is held until the process ends, so no two processes write one run."""

    def __init__(self, path: Path, lock: Any) -> None:
        self.path = path
        self._lock = lock

    @classmethod
    def claim(cls, path: Path, mode: Literal["new", "resume", "overwrite"]) -> "RunDirectory":
        path = Path(path)
        if mode == "new" or (mode == "overwrite" and not path.exists()):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(path)
            except FileExistsError:
                raise SystemExit(
                    f"error: run directory {path} already exists: continue it with --resume {path}, replace it with "
                    f"--overwrite, or choose another --run-name"
                ) from None
            return cls(path, cls._lock_or_exit(path))
        if not path.is_dir():
            raise SystemExit(f"error: run directory {path} does not exist")
        lock = cls._lock_or_exit(path)
        if mode == "overwrite":
            for child in path.iterdir():
                if child.name != LOCK_NAME:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        return cls(path, lock)

    @staticmethod
    def _lock_or_exit(path: Path) -> Any:
        handle = open(path / LOCK_NAME, "a")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise SystemExit(f"error: run directory {path} is in use by another running process") from None
        return handle

    def release(self) -> None:
        """Give the directory up (its lock); a training entry point does so when it returns or fails."""
        self._lock.close()


class TrainingRun:
    """Logs, evaluates and checkpoints one run; an algorithm's loop calls it as its :class:`Hooks`."""

    def __init__(self, settings: ResolvedSettings, run_dir: Path, engine: DynaLayEngine, agent: Agent) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.engine = engine
        self.agent = agent
        run = settings.run
        self.progress = run.progress
        self.logger = RunLogger(run_dir, engine.num_layers, engine.max_steps, run.log_every, run.detail_every)
        self.next_eval = run.eval_freq or None
        self.next_checkpoint = run.checkpoint_freq or None
        self.next_imitation = run.imitation_every if run.imitation_samples and run.imitation_every else None
        self.hook_seconds = 0.0
        """Wall time spent in these hooks: logging, periodic evaluation, checkpoints and imitation refreshes."""
        self.imitation_seconds = 0.0

    # ---- hooks -------------------------------------------------------------------------------
    def on_infos(self, infos: Sequence[Mapping[str, Any]]) -> None:
        start = time.perf_counter()
        self.logger.stats.add_infos(infos)
        self.hook_seconds += time.perf_counter() - start

    def on_episodes(self, record: EpisodeRecord) -> None:
        start = time.perf_counter()
        self.logger.stats.add(record)
        self.hook_seconds += time.perf_counter() - start

    def on_losses(self, losses: Mapping[str, float], step: int) -> None:
        start = time.perf_counter()
        for name, value in losses.items():
            self.logger.writer.add_scalar(f"losses/{name}", value, step)
        self.hook_seconds += time.perf_counter() - start

    def after_step(self, step: int) -> None:
        start = time.perf_counter()
        self._after_step(step)
        self.hook_seconds += time.perf_counter() - start

    def between_updates(self, step: int) -> None:
        if self.next_imitation is None or step < self.next_imitation:
            return
        start = time.perf_counter()
        run = self.settings.run
        done = imitation_warm_start(
            self.engine, self.agent, samples=run.imitation_samples, epochs=run.imitation_epochs, seed=run.seed + step
        )
        self.logger.writer.add_scalar("charts/imitation_agreement", done.agreement, step)
        while self.next_imitation <= step:
            self.next_imitation += run.imitation_every
        self.hook_seconds += time.perf_counter() - start
        self.imitation_seconds += time.perf_counter() - start

    def time_breakdown(self, train_seconds: float, engine_before: Mapping[str, float]) -> dict[str, float]:
        """Where ``train_seconds`` of training went, in seconds: the engine's phases since
        ``engine_before`` (a copy of ``engine.seconds`` taken when training started), the hooks,
        and the rest, which is the agent: its policy in the rollouts and its updates."""
        spent = {k: self.engine.seconds[k] - engine_before.get(k, 0.0) for k in self.engine.seconds}
        inner = spent["solve"] + spent["observation"] + spent["reset"] + spent["cotrain"]
        return {
            "fpi_solves": spent["solve"],
            "observations": spent["observation"],
            "episode_resets": spent["reset"],
            "env_bookkeeping": max(spent["step"] - inner, 0.0),
            "cotrain_updates": spent["cotrain"],
            "logging_eval_checkpoints": self.hook_seconds - self.imitation_seconds,
            "imitation_refresh": self.imitation_seconds,
            "agent": max(train_seconds - spent["step"] - self.hook_seconds, 0.0),
        }

    def _after_step(self, step: int) -> None:
        if step - self.logger.last_log_step >= self.logger.log_every:
            self.log(step)
        if self.next_eval is not None and step >= self.next_eval:
            self.evaluate(step)
            while self.next_eval <= step:
                self.next_eval += self.settings.run.eval_freq
        if self.next_checkpoint is not None and step >= self.next_checkpoint:
            self.checkpoint()
            while self.next_checkpoint <= step:
                self.next_checkpoint += self.settings.run.checkpoint_freq

    # ---- the run -----------------------------------------------------------------------------
    def log(self, step: int, *, detail: bool | None = None) -> None:
        """The charts of the episodes since the last log; with ``detail`` (by default every
        ``--detail-every`` steps) also every fixed path's accuracy and the decisions figure."""
        detail = self.logger.detail_due(step) if detail is None else detail and step != self.logger.last_detail_step
        if detail:
            self.log_paths(step)
        self.logger.log(step, self.main_loss, detail=detail)

    def log_paths(self, step: int, limit: int = 512) -> None:
        """Each fixed path's accuracy on (the first ``limit`` samples of) the test split."""
        engine = self.engine
        x, y = engine.splits.x_test[:limit], engine.splits.y_test[:limit]
        L = engine.num_layers
        paths = {"NOP": [], **{f"L{i}": [i] for i in range(1, L + 1)}, ",".join(f"L{i}" for i in range(1, L + 1)): list(range(1, L + 1))}
        evaluated = evaluate_fixed_paths(engine.model, x, y, list(paths.values()))
        self.logger.log_paths({name: float(ev["correct"].float().mean()) for name, ev in zip(paths, evaluated)}, step)

    @property
    def main_loss(self) -> float | None:
        return self.engine.trainer.last_loss if self.engine.trainer is not None else None

    def resume_counters(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue the logging, evaluation and checkpoint schedules where the checkpoint left them."""
        step = self.agent.num_timesteps
        run = self.settings.run
        self.logger.last_log_step = int(checkpoint.get("logger", {}).get("last_log_step", step))
        self.next_eval = (step // run.eval_freq + 1) * run.eval_freq if run.eval_freq else None
        self.next_checkpoint = (step // run.checkpoint_freq + 1) * run.checkpoint_freq if run.checkpoint_freq else None
        if self.next_imitation is not None:
            self.next_imitation = (step // run.imitation_every + 1) * run.imitation_every

    def evaluate(self, step: int) -> EvalReport:
        """The agent on the test split at the run's lambda, with the main model frozen."""
        engine = self.engine
        rollout = dict(
            reward=engine.reward.fixed(self.settings.env.lam),
            max_steps=engine.max_steps,
            observation=engine.layout.groups,
            device=engine.device,
        )
        report = evaluate_policy(engine.model, engine.splits, self.agent.policy(), **rollout)
        report = report.timed(time_policy(engine.model, engine.splits, self.agent.policy(), repeats=1, **rollout))
        self.logger.log_eval(report, step)
        return report

    def checkpoint(self) -> Path:
        """checkpoint.pt (everything a resume needs), and beside it the two models as other clients
        load them: main_model.pt (``gym.make("DynaLay-v0", main_model=...)``) and the agent's export."""
        export_main_model(self.engine, self.run_dir / "main_model.pt")
        self.agent.export(self.run_dir)
        return save_checkpoint(
            self.run_dir,
            {
                "phase": "train",
                "algo": self.settings.run.algo,
                "timesteps": self.agent.num_timesteps,
                "agent": self.agent.state(),
                "engine": self.engine.state_dict(),
                "config": self.settings.to_json(),
                "logger": {"last_log_step": self.logger.last_log_step},
            },
        )


def warm_up(engine: DynaLayEngine, settings: ResolvedSettings, run_dir: Path, resume: Mapping[str, Any] | None = None) -> None:
    """The main model's warm-up (:func:`dynalay_env.prepare_main_model`: trained, or loaded from the
    warm-up cache), checkpointing after every epoch so that a killed warm-up resumes where it stopped
    (``resume``: a warm-up checkpoint)."""
    run, env = settings.run, settings.env
    trainer = engine.trainer or make_trainer(env, engine.model, engine.splits, max_steps=engine.max_steps)

    def after_epoch(progress: EpochProgress) -> None:
        save_checkpoint(
            run_dir,
            {
                "phase": "warmup",
                "algo": run.algo,
                "timesteps": 0,
                "agent": None,
                "engine": engine.state_dict(),
                "config": settings.to_json(),
                "warmup": {"epochs_done": progress.epochs_done, "generator": progress.generator, "losses": progress.losses},
                "rng": rng_state(),
                "logger": {"last_log_step": 0},
            },
        )
        if not run.progress:  # the bar is off: still show that the warm-up moves
            print(
                f"warm-up epoch {progress.epochs_done}/{env.pretrain_epochs}: loss {progress.losses[-1]:.4f} ({progress.seconds:.1f} s)",
                flush=True,
            )

    start = None
    if resume is not None:
        engine.load_state_dict(resume["engine"])
        set_rng_state(resume["rng"])
        w = resume["warmup"]
        print(f"resumed the warm-up of {run_dir} after epoch {w['epochs_done']} of {env.pretrain_epochs}", flush=True)
        start = EpochProgress(int(w["epochs_done"]), w["generator"], list(w["losses"]))
    try:
        source = prepare_main_model(
            trainer, env, engine.splits, max_steps=engine.max_steps, progress=run.progress, resume=start, on_epoch=after_epoch
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if source == "cached":
        print(f"warm-up loaded from the cache in {cache_directory(env.warmup_cache)}", flush=True)
