"""The batched DynaLay engine: N episodes in flight over one main model, all on ``device``.

Every face of the environment (single-sample ``gymnasium.Env``, ``gymnasium.vector.VectorEnv``,
SB3 ``VecEnv``) is a thin adapter over this class, so their semantics cannot diverge. The engine
runs the MDP and nothing else: data and the main model are given to it, co-training is delegated
to a :class:`~main_models.MainModelTrainer`, and evaluation drives it from outside.

The MDP (see README, "The environment"):
  * an episode is one input sample; reset draws (x, y) and runs the straightforward pass;
  * action 0 is NOP (answer now); action i in 1..L runs FPI on layer i from its current state,
    then re-applies layers i+1..L once;
  * an FPI step pays ``-beta * lam * cost * k`` where cost is the step's FLOPs over one full
    straightforward pass and k counts consecutive choices of the same layer; the answer earns
    ``alpha * 1[correct]`` (paper Eq. 2);
  * the episode ends at NOP or when the step budget T is used, when the answer is taken.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from main_models import DatasetSplits, FPINetwork, MainModelTrainer, PathState, default_model, resolve_device

from .config import RewardConfig, default_max_steps
from .observation import (  # noqa: F401  (re-exported: importers of these names from the engine keep working)
    DEFAULT_OBSERVATION,
    LAM_LOG_FLOOR,
    OBSERVATION_GROUPS,
    ObservationLayout,
    lam_log_position,
    observe,
)
from .record import EpisodeRecord, EpisodeState

MODES = ("train", "eval")
_F = TypeVar("_F", bound=Callable[..., Any])


def outside_inference_mode(method: _F) -> _F:
    """Run ``method`` with inference mode off, so that every tensor the engine keeps is a normal
    tensor whatever mode its caller steps it in (an inference tensor can never be updated in place
    outside inference mode, nor take part in co-training)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False):
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


STEP_PHASES: dict[str, str] = {
    "solve": "FPI steps: the solves of the chosen layers and the passes above them",
    "observation": "readout, confidence and the observation of the rows that changed",
    "reset": "the straightforward pass of new episodes",
    "cotrain": "the main model's co-training updates",
    "step": "whole calls of step(), the phases above included (the rest is the MDP's bookkeeping)",
}
"""The phases :attr:`DynaLayEngine.seconds` times."""


@dataclass
class StepOutput:
    """Tensors (on the engine's device) describing one batched step."""

    obs: Tensor
    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    step_cost: Tensor
    step_iterations: Tensor
    final_obs: Tensor
    """Observations of the rows in ``terminated``, taken before their autoreset, (n_done, D)."""
    finished: EpisodeRecord
    """The episodes that ended in this step (rows in ``terminated``, in row order)."""
    taken: Tensor
    """The actions of the rows that acted in this step (running rows), int64 (n_acted,)."""


class DynaLayEngine:
    """N DynaLay episodes stepped together with tensor ops.

    Args:
        num_envs: episodes in flight.
        splits: the data; episodes draw from the train split (train mode) or walk the test split
            in order (eval mode).
        model: the main model (moved to ``device``).
        reward: the Eq. 2 weights and lambda (fixed, or drawn per episode from a range).
        max_steps: step budget T per episode (default 2L).
        mode: ``"train"`` or ``"eval"`` (test split in order, model in eval mode).
        trainer: co-trains the main model on the paths of finished episodes (train mode only).
        autoreset: reset finished rows in the same step. Without it finished rows go idle (no
            compute) until ``reset`` is called for them.
        seed: seeds the episode sampler.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        model_name: the main model's registry name (default: the one for the data).
    """

    def __init__(
        self,
        num_envs: int,
        splits: DatasetSplits,
        model: FPINetwork,
        *,
        reward: RewardConfig = RewardConfig(),
        max_steps: int | None = None,
        mode: str = "train",
        trainer: MainModelTrainer | None = None,
        autoreset: bool = True,
        observation: tuple[str, ...] = DEFAULT_OBSERVATION,
        seed: int = 0,
        device: str | torch.device = "cpu",
        model_name: str | None = None,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if trainer is not None and mode != "train":
            raise ValueError("an eval-mode engine does not co-train: pass trainer=None")
        self.device = resolve_device(device)
        self.num_envs = int(num_envs)
        self.mode = mode
        self.reward = reward
        self.autoreset = autoreset
        self.trainer = trainer

        self.splits = splits.to(self.device)
        self.x_all = self.splits.x_train if mode == "train" else self.splits.x_test
        self.y_all = self.splits.y_train if mode == "train" else self.splits.y_test
        self.num_samples = int(self.y_all.shape[0])
        if self.num_samples == 0:
            raise ValueError(f"dataset {self.splits.name!r} has no {'train' if mode == 'train' else 'test'} samples")
        difficulty = self.splits.difficulty_train if mode == "train" else self.splits.difficulty_test
        # -1 marks "unknown difficulty" so every dataset reports the same episode keys
        self.difficulty_all = difficulty if difficulty is not None else torch.full_like(self.y_all, -1)

        self.model = model.to(self.device)
        self.num_layers = self.model.num_layers
        self.max_steps = int(max_steps) if max_steps is not None else default_max_steps(self.num_layers)
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        self.layout = ObservationLayout(self.num_layers, self.model.summary_dim, tuple(observation))
        self._full_flops = float(self.model.straightforward_flops)
        # observing residuals costs one application of every layer each time an observation is made
        self._probe_cost = self.model.residual_probe_flops / self._full_flops if "residuals" in self.layout.groups else 0.0

        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._eval_cursor = 0
        if mode == "eval":
            self.model.eval()

        self.episodes = EpisodeState.zeros(
            self.num_envs, self.num_layers, self.max_steps, self.layout.size, self.device, lam_row=self.reward.lam
        )
        """The per-row state of the episodes in flight (its fields read as ``engine.<field>`` too)."""
        self.state: PathState | None = None
        self.model_name = model_name or default_model(self.splits)
        """The main model's registry name (main_models.MAIN_MODELS)."""
        self.seconds: dict[str, float] = dict.fromkeys(STEP_PHASES, 0.0)
        """Host wall time spent in each phase of :meth:`reset` and :meth:`step` so far (see
        :data:`STEP_PHASES`). On cuda it counts launches, not kernels, except where a host read
        waits for them (the solver's convergence checks do)."""

    # ---- read-only views -----------------------------------------------------------------------
    # Every EpisodeState field reads as an engine attribute as well (engine.sample, engine.obs, ...;
    # added below the class); these two are documented here.
    @property
    def running(self) -> Tensor:
        """Which rows hold an episode in progress, bool (N,). Read it; do not write to it."""
        return self.episodes.running

    @property
    def steps(self) -> Tensor:
        """FPI steps taken so far in each row's episode, int64 (N,). Read it; do not write to it."""
        return self.episodes.steps

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        """Add the host wall time of the block to ``seconds[phase]`` (not when it raises)."""
        start = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - start

    # ---- reset -------------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        """Reseed the episode sampler (train mode) and restart the walk through the test split."""
        self.generator.manual_seed(int(seed))
        self._eval_cursor = 0

    def stop(self) -> None:
        """End every episode in flight without an answer, reward or record: all rows go idle."""
        self.episodes.running.zero_()

    @outside_inference_mode
    def reset(self, rows: Tensor | None = None) -> Tensor:
        """Start new episodes in ``rows`` (all rows when ``None``) and return the observations."""
        if rows is None:
            rows = torch.arange(self.num_envs, device=self.device)
        n = rows.numel()
        if n == 0:
            return self.episodes.obs
        if self.mode == "eval":
            sample = (self._eval_cursor + torch.arange(n, device=self.device)) % self.num_samples
            self._eval_cursor += n
        else:
            sample = torch.randint(self.num_samples, (n,), device=self.device, generator=self.generator)
        lam = self.reward.sample(n, self.generator, self.device)

        with self._timed("reset"), self.model.rollout_weights():
            fresh = self.model.straightforward(self.x_all[sample])
        if self.state is None:
            self.state = PathState(
                torch.zeros(self.num_envs, *fresh.u.shape[1:], device=self.device),
                [torch.zeros(self.num_envs, *z.shape[1:], device=self.device) for z in fresh.z],
            )
        self.state.u.index_copy_(0, rows, fresh.u)
        for z_all, z_new in zip(self.state.z, fresh.z):
            z_all.index_copy_(0, rows, z_new)

        self.episodes.reset_rows(rows, sample=sample, label=self.y_all[sample], lam_row=lam, ep_compute=1.0 + self._probe_cost)
        self._refresh(rows, fresh)
        return self.episodes.obs

    # ---- step --------------------------------------------------------------------------------
    def action_masks(self) -> Tensor:
        """Which actions the MDP allows in each row, bool (N, L+1): every action while an episode runs
        (the budget T ends an episode; it never forbids an FPI step), only NOP in an idle row."""
        masks = torch.ones(self.num_envs, self.num_layers + 1, dtype=torch.bool, device=self.device)
        masks[:, 1:] &= self.episodes.running.unsqueeze(1)
        return masks

    def validate_actions(self, actions: Tensor) -> None:
        """Refuse actions of the wrong shape, a non-integer dtype, or outside 0..L, naming the range."""
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got shape {tuple(actions.shape)}")
        if actions.dtype.is_floating_point or actions.dtype.is_complex or actions.dtype == torch.bool:
            raise ValueError(f"actions must be integers in [0, {self.num_layers}], got dtype {actions.dtype}")
        bad = (actions < 0) | (actions > self.num_layers)
        if bool(bad.any()):
            raise ValueError(f"action {int(actions[bad][0])} out of range: valid actions are 0 (NOP) to {self.num_layers} (FPI on layer i)")

    @outside_inference_mode
    def step(self, actions: Tensor, *, validate: bool = True, active: Tensor | None = None) -> StepOutput:
        """Advance every running row by one action. Idle rows (finished, not reset) do nothing, and
        so do rows outside ``active`` (a bool (N,) mask) when it is given: their actions are ignored."""
        with self._timed("step"):
            return self._step(actions, validate=validate, active=active)

    def _step(self, actions: Tensor, *, validate: bool, active: Tensor | None) -> StepOutput:
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        if validate:
            self.validate_actions(actions)
        actions = actions.to(self.device, torch.long).clone() if actions.is_inference() else actions
        if actions.device != self.device or actions.dtype != torch.long:
            actions = actions.to(self.device, torch.long)
        ep = self.episodes
        running = ep.running if active is None else ep.running & active
        fpi = running & (actions > 0)
        nop = running & (actions == 0)
        choice = torch.where(fpi, actions, torch.zeros_like(actions))

        with self._timed("solve"), self.model.rollout_weights():
            self.state, iterations = self.model.fpi_step(self.state, choice)
        layer = (choice - 1).clamp_min(0)
        step_flops = self.model.fpi_step_flops(layer, iterations) / self._full_flops + self._probe_cost
        step_cost = torch.where(fpi, step_flops.float(), 0.0)
        # the solved layer sits at its fixed point; the layers above were re-applied once from new inputs
        depth = torch.arange(1, self.num_layers + 1, device=self.device)
        ep.iterated = torch.where(fpi.unsqueeze(1) & (depth >= choice.unsqueeze(1)), depth == choice.unsqueeze(1), ep.iterated)
        ep.repeat = torch.where(fpi, torch.where(actions == ep.last_action, ep.repeat + 1, 1), ep.repeat)
        reward = -self.reward.beta * ep.lam_row * step_cost * ep.repeat
        stepped = fpi.nonzero().squeeze(1)
        # Running rows always have steps < T here: reaching T ends the episode.
        ep.path[stepped, ep.steps[stepped]] = actions[stepped]
        ep.steps += fpi
        ep.last_action = torch.where(fpi, actions, ep.last_action)
        ep.ep_compute += step_cost
        ep.ep_iterations += iterations
        ep.ep_layer_iterations.scatter_add_(1, layer.unsqueeze(1), iterations.unsqueeze(1))

        if stepped.numel():
            self._refresh(stepped, self.state.rows(stepped))

        done = nop | (fpi & (ep.steps >= self.max_steps))
        correct = ep.prediction == ep.label
        reward = reward + self.reward.alpha * (done & correct)
        ep.ep_return += reward
        done_rows = done.nonzero().squeeze(1)
        finished = ep.record(done_rows, correct=correct[done_rows], difficulty=self.difficulty_all[ep.sample[done_rows]])
        final_obs = ep.obs[done_rows].clone()
        ep.running = ep.running & ~done
        if done_rows.numel():
            if self.trainer is not None:
                with self._timed("cotrain"):
                    self.trainer.record(finished["sample"], finished["path"])
            if self.autoreset:
                self.reset(done_rows)
        if self.trainer is not None:
            with self._timed("cotrain"):
                self.trainer.step_finished()
        return StepOutput(
            obs=ep.obs,
            reward=reward,
            terminated=done,
            truncated=torch.zeros_like(done),
            step_cost=step_cost,
            step_iterations=iterations,
            final_obs=final_obs,
            finished=finished,
            taken=actions[running],
        )

    def _refresh(self, rows: Tensor, state: PathState) -> None:
        """Recompute prediction, confidence and the observation of ``rows`` from their state."""
        ep = self.episodes
        with self._timed("observation"), self.model.rollout_weights():
            probs = F.softmax(self.model.readout(state), dim=1)
            conf, pred = probs.max(dim=1)
            ep.prediction[rows] = pred
            ep.confidence[rows] = conf
            ep.obs.index_copy_(0, rows, observe(self.layout, self.model, state, probs, conf, ep, rows, self.max_steps))

    # ---- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the main model, its trainer's state, and the sampler's RNG.
        Episodes in flight are not saved; a resumed run starts fresh ones."""
        return {
            "model": self.model.state_dict(),
            "trainer": self.trainer.state_dict() if self.trainer is not None else None,
            "generator": self.generator.get_state(),
            "num_layers": self.num_layers,
            "max_steps": self.max_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a checkpoint of another model or budget is refused."""
        missing = {"model", "trainer", "generator", "num_layers", "max_steps"} - set(state)
        if missing:
            raise ValueError(f"engine checkpoint is missing {sorted(missing)}")
        if state["num_layers"] != self.num_layers or state["max_steps"] != self.max_steps:
            raise ValueError(
                f"checkpoint is for {state['num_layers']} layers / budget {state['max_steps']}, "
                f"this environment has {self.num_layers} / {self.max_steps}"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(f"checkpoint does not match the main model: {err}") from None
        if self.trainer is not None and state["trainer"] is not None:
            self.trainer.load_state_dict(state["trainer"])
        self.generator.set_state(state["generator"])

    # ---- observation space bounds ------------------------------------------------------------
    def observation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.layout.bounds(self.reward.lam_high)


def _episode_view(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.episodes, name), doc=f"{doc}, per row. Read it; do not write to it.")


for _name, _spec in EpisodeState.specs().items():
    if _name not in ("running", "steps"):
        if hasattr(DynaLayEngine, _name):
            raise AssertionError(f"EpisodeState.{_name} would hide DynaLayEngine.{_name}")
        setattr(DynaLayEngine, _name, _episode_view(_name, _spec.doc))
