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
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from main_models import DatasetSplits, FPINetwork, MainModelTrainer, PathState, default_model, resolve_device

from .config import RewardConfig, default_max_steps
from .record import EpisodeRecord

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


OBSERVATION_GROUPS: dict[str, str] = {
    "activations": "pooled activations of every layer (summary_bins columns per layer)",
    "lam": "lambda over the largest the env draws, and lambda's log-scale position log10(lam + 1e-4) / 4 + 1 (0 at lambda 0, 1 at 1)",
    "progress": "step index / T, one-hot of the last FPI layer, consecutive-repeat count / T",
    "confidence": "the head's largest class probability",
    "margin": "the head's top-1 minus top-2 probability, and its entropy over log(classes)",
    "iterated": "per layer, 1 where it sits at its fixed point for its current input (it was solved and nothing below it changed since)",
    "residuals": "per layer, the relative fixed-point residual at its current state (costs one application of every layer per "
                 "observation, charged to the step that needs it)",
}
"""The observation's feature groups, in column order; an env observes the ones it is given."""
STEP_PHASES: dict[str, str] = {
    "solve": "FPI steps: the solves of the chosen layers and the passes above them",
    "observation": "readout, confidence and the observation of the rows that changed",
    "reset": "the straightforward pass of new episodes",
    "cotrain": "the main model's co-training updates",
    "step": "whole calls of step(), the phases above included (the rest is the MDP's bookkeeping)",
}
"""The phases :attr:`DynaLayEngine.seconds` times."""
DEFAULT_OBSERVATION: tuple[str, ...] = ("activations", "lam", "progress", "confidence")
LAM_LOG_FLOOR = 1e-4
"""lambda's log-scale feature is log10(lam + LAM_LOG_FLOOR), mapped so that [0, 1] -> [0, 1]."""


def lam_log_position(lam: Tensor | float) -> Tensor:
    lam = torch.as_tensor(lam, dtype=torch.float32)
    return (torch.log10(lam + LAM_LOG_FLOOR) - torch.log10(torch.tensor(LAM_LOG_FLOOR))) / -torch.log10(torch.tensor(LAM_LOG_FLOOR))


class _Column:
    """A named column of an :class:`ObservationLayout`: ``offset`` from its feature group's start
    (from its end when negative). Reading it raises KeyError when the layout lacks the group."""

    def __init__(self, group: str, offset: int = 0) -> None:
        self.group, self.offset = group, offset

    def __get__(self, layout: "ObservationLayout | None", owner: type) -> Any:
        if layout is None:
            return self
        span = layout.group(self.group)
        return span.start + self.offset if self.offset >= 0 else span.stop + self.offset


class _Span:
    """A whole feature group of an :class:`ObservationLayout`, as a slice."""

    def __init__(self, group: str) -> None:
        self.group = group

    def __get__(self, layout: "ObservationLayout | None", owner: type) -> Any:
        return self if layout is None else layout.group(self.group)


@dataclass(frozen=True)
class ObservationLayout:
    """Column slices of the flat float32 observation, for the feature groups it holds."""

    num_layers: int
    summary_dim: int
    groups: tuple[str, ...] = DEFAULT_OBSERVATION

    def __post_init__(self) -> None:
        unknown = [g for g in self.groups if g not in OBSERVATION_GROUPS]
        if unknown or not self.groups:
            raise ValueError(f"observation groups must be a non-empty subset of {list(OBSERVATION_GROUPS)}, got {list(self.groups)}")
        object.__setattr__(self, "groups", tuple(g for g in OBSERVATION_GROUPS if g in self.groups))

    def _widths(self) -> dict[str, int]:
        L = self.num_layers
        return {"activations": self.summary_dim, "lam": 2, "progress": L + 2, "confidence": 1, "margin": 2, "iterated": L,
                "residuals": L}

    def group(self, name: str) -> slice:
        if name not in self.groups:
            raise KeyError(f"this observation has no {name!r} group (it holds {list(self.groups)})")
        start = 0
        for g in self.groups:
            width = self._widths()[g]
            if g == name:
                return slice(start, start + width)
            start += width
        raise AssertionError(name)

    @property
    def size(self) -> int:
        return sum(self._widths()[g] for g in self.groups)

    activations = _Span("activations")
    lam = _Column("lam")
    lam_log = _Column("lam", 1)
    step_fraction = _Column("progress")
    repeat_fraction = _Column("progress", -1)
    confidence = _Column("confidence")
    margin = _Column("margin")
    entropy = _Column("margin", 1)
    iterated = _Span("iterated")
    residuals = _Span("residuals")

    @property
    def last_action(self) -> slice:
        """One-hot of the last FPI layer chosen (all zero before the first step)."""
        start = self.group("progress").start + 1
        return slice(start, start + self.num_layers)


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

        n, dev = self.num_envs, self.device
        self.sample = torch.zeros(n, dtype=torch.long, device=dev)
        self.label = torch.zeros(n, dtype=torch.long, device=dev)
        self.lam_row = torch.full((n,), self.reward.lam, device=dev)
        self._steps = torch.zeros(n, dtype=torch.long, device=dev)
        self.last_action = torch.zeros(n, dtype=torch.long, device=dev)
        self.repeat = torch.zeros(n, dtype=torch.long, device=dev)
        self.prediction = torch.zeros(n, dtype=torch.long, device=dev)
        self.confidence = torch.zeros(n, device=dev)
        self.ep_compute = torch.zeros(n, device=dev)
        self.ep_iterations = torch.zeros(n, dtype=torch.long, device=dev)
        self.ep_layer_iterations = torch.zeros(n, self.num_layers, dtype=torch.long, device=dev)
        self.ep_return = torch.zeros(n, device=dev)
        self.path = torch.zeros(n, self.max_steps, dtype=torch.long, device=dev)
        self.iterated = torch.zeros(n, self.num_layers, dtype=torch.bool, device=dev)
        self._running = torch.zeros(n, dtype=torch.bool, device=dev)
        self.obs = torch.zeros(n, self.layout.size, device=dev)
        self.state: PathState | None = None
        self.model_name = model_name or default_model(self.splits)
        """The main model's registry name (main_models.MAIN_MODELS)."""
        self.seconds: dict[str, float] = dict.fromkeys(STEP_PHASES, 0.0)
        """Host wall time spent in each phase of :meth:`reset` and :meth:`step` so far (see
        :data:`STEP_PHASES`). On cuda it counts launches, not kernels, except where a host read
        waits for them (the solver's convergence checks do)."""

    # ---- read-only views -----------------------------------------------------------------------
    @property
    def running(self) -> Tensor:
        """Which rows hold an episode in progress, bool (N,). Read it; do not write to it."""
        return self._running

    @property
    def steps(self) -> Tensor:
        """FPI steps taken so far in each row's episode, int64 (N,). Read it; do not write to it."""
        return self._steps

    # ---- reset -------------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        """Reseed the episode sampler (train mode) and restart the walk through the test split."""
        self.generator.manual_seed(int(seed))
        self._eval_cursor = 0

    def stop(self) -> None:
        """End every episode in flight without an answer, reward or record: all rows go idle."""
        self._running.zero_()

    @outside_inference_mode
    def reset(self, rows: Tensor | None = None) -> Tensor:
        """Start new episodes in ``rows`` (all rows when ``None``) and return the observations."""
        if rows is None:
            rows = torch.arange(self.num_envs, device=self.device)
        n = rows.numel()
        if n == 0:
            return self.obs
        if self.mode == "eval":
            sample = (self._eval_cursor + torch.arange(n, device=self.device)) % self.num_samples
            self._eval_cursor += n
        else:
            sample = torch.randint(self.num_samples, (n,), device=self.device, generator=self.generator)
        lam = self.reward.sample(n, self.generator, self.device)

        start = time.perf_counter()
        with self.model.rollout_weights():
            fresh = self.model.straightforward(self.x_all[sample])
        self.seconds["reset"] += time.perf_counter() - start
        if self.state is None:
            self.state = PathState(
                torch.zeros(self.num_envs, *fresh.u.shape[1:], device=self.device),
                [torch.zeros(self.num_envs, *z.shape[1:], device=self.device) for z in fresh.z],
            )
        self.state.u.index_copy_(0, rows, fresh.u)
        for z_all, z_new in zip(self.state.z, fresh.z):
            z_all.index_copy_(0, rows, z_new)

        self.sample[rows] = sample
        self.label[rows] = self.y_all[sample]
        self.lam_row[rows] = lam
        self._steps[rows] = 0
        self.last_action[rows] = 0
        self.repeat[rows] = 0
        self.ep_compute[rows] = 1.0 + self._probe_cost
        self.ep_iterations[rows] = 0
        self.ep_layer_iterations[rows] = 0
        self.ep_return[rows] = 0.0
        self.path[rows] = 0
        self.iterated[rows] = False
        self._running[rows] = True
        self._refresh(rows, fresh)
        return self.obs

    # ---- step --------------------------------------------------------------------------------
    def action_masks(self) -> Tensor:
        """Which actions the MDP allows in each row, bool (N, L+1): every action while an episode runs
        (the budget T ends an episode; it never forbids an FPI step), only NOP in an idle row."""
        masks = torch.ones(self.num_envs, self.num_layers + 1, dtype=torch.bool, device=self.device)
        masks[:, 1:] &= self._running.unsqueeze(1)
        return masks

    def validate_actions(self, actions: Tensor) -> None:
        """Refuse actions of the wrong shape, a non-integer dtype, or outside 0..L, naming the range."""
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got shape {tuple(actions.shape)}")
        if actions.dtype.is_floating_point or actions.dtype.is_complex or actions.dtype == torch.bool:
            raise ValueError(f"actions must be integers in [0, {self.num_layers}], got dtype {actions.dtype}")
        bad = (actions < 0) | (actions > self.num_layers)
        if bool(bad.any()):
            raise ValueError(
                f"action {int(actions[bad][0])} out of range: valid actions are 0 (NOP) to "
                f"{self.num_layers} (FPI on layer i)"
            )

    @outside_inference_mode
    def step(self, actions: Tensor, *, validate: bool = True, active: Tensor | None = None) -> StepOutput:
        """Advance every running row by one action. Idle rows (finished, not reset) do nothing, and
        so do rows outside ``active`` (a bool (N,) mask) when it is given: their actions are ignored."""
        step_start = time.perf_counter()
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        if validate:
            self.validate_actions(actions)
        actions = actions.to(self.device, torch.long).clone() if actions.is_inference() else actions
        if actions.device != self.device or actions.dtype != torch.long:
            actions = actions.to(self.device, torch.long)
        running = self._running if active is None else self._running & active
        fpi = running & (actions > 0)
        nop = running & (actions == 0)
        choice = torch.where(fpi, actions, torch.zeros_like(actions))

        start = time.perf_counter()
        with self.model.rollout_weights():
            self.state, iterations = self.model.fpi_step(self.state, choice)
        self.seconds["solve"] += time.perf_counter() - start
        layer = (choice - 1).clamp_min(0)
        step_flops = self.model.fpi_step_flops(layer, iterations) / self._full_flops + self._probe_cost
        step_cost = torch.where(fpi, step_flops.float(), 0.0)
        # the solved layer sits at its fixed point; the layers above were re-applied once from new inputs
        depth = torch.arange(1, self.num_layers + 1, device=self.device)
        self.iterated = torch.where(fpi.unsqueeze(1) & (depth >= choice.unsqueeze(1)), depth == choice.unsqueeze(1), self.iterated)
        self.repeat = torch.where(fpi, torch.where(actions == self.last_action, self.repeat + 1, 1), self.repeat)
        reward = -self.reward.beta * self.lam_row * step_cost * self.repeat
        stepped = fpi.nonzero().squeeze(1)
        # Running rows always have steps < T here: reaching T ends the episode.
        self.path[stepped, self._steps[stepped]] = actions[stepped]
        self._steps += fpi
        self.last_action = torch.where(fpi, actions, self.last_action)
        self.ep_compute += step_cost
        self.ep_iterations += iterations
        self.ep_layer_iterations.scatter_add_(1, layer.unsqueeze(1), iterations.unsqueeze(1))

        if stepped.numel():
            self._refresh(stepped, self.state.rows(stepped))

        done = nop | (fpi & (self._steps >= self.max_steps))
        correct = self.prediction == self.label
        reward = reward + self.reward.alpha * (done & correct)
        self.ep_return += reward
        done_rows = done.nonzero().squeeze(1)
        finished = EpisodeRecord.from_tensors(
            correct=correct[done_rows],
            compute=self.ep_compute[done_rows],
            iterations=self.ep_iterations[done_rows],
            layer_iterations=self.ep_layer_iterations[done_rows],
            steps=self._steps[done_rows],
            path=self.path[done_rows],
            label=self.label[done_rows],
            sample=self.sample[done_rows],
            lam=self.lam_row[done_rows],
            difficulty=self.difficulty_all[self.sample[done_rows]],
            **{"return": self.ep_return[done_rows]},
        )
        final_obs = self.obs[done_rows].clone()
        self._running = self._running & ~done
        if done_rows.numel():
            if self.trainer is not None:
                start = time.perf_counter()
                self.trainer.record(finished["sample"], finished["path"])
                self.seconds["cotrain"] += time.perf_counter() - start
            if self.autoreset:
                self.reset(done_rows)
        if self.trainer is not None:
            start = time.perf_counter()
            self.trainer.step_finished()
            self.seconds["cotrain"] += time.perf_counter() - start
        self.seconds["step"] += time.perf_counter() - step_start
        return StepOutput(
            obs=self.obs,
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
        start = time.perf_counter()
        with self.model.rollout_weights():
            probs = F.softmax(self.model.readout(state), dim=1)
            conf, pred = probs.max(dim=1)
            self.prediction[rows] = pred
            self.confidence[rows] = conf
            lay, groups = self.layout, self.layout.groups
            obs = torch.empty(rows.numel(), lay.size, device=self.device)
            if "activations" in groups:
                obs[:, lay.activations] = self.model.layer_summaries(state)
            if "lam" in groups:
                lam = self.lam_row[rows]
                obs[:, lay.lam] = lam
                obs[:, lay.lam_log] = lam_log_position(lam)
            if "progress" in groups:
                obs[:, lay.step_fraction] = self._steps[rows].float() / self.max_steps
                obs[:, lay.last_action] = F.one_hot(self.last_action[rows], self.num_layers + 1)[:, 1:].float()
                obs[:, lay.repeat_fraction] = self.repeat[rows].float() / self.max_steps
            if "confidence" in groups:
                obs[:, lay.confidence] = conf
            if "margin" in groups:
                top2 = probs.topk(min(2, probs.shape[1]), dim=1).values
                obs[:, lay.margin] = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0.0)
                entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
                obs[:, lay.entropy] = entropy / max(float(np.log(probs.shape[1])), 1e-12)
            if "iterated" in groups:
                obs[:, lay.iterated] = self.iterated[rows].float()
            if "residuals" in groups:
                obs[:, lay.residuals] = self.model.fixed_point_residuals(state).clamp(max=1.0)
            self.obs.index_copy_(0, rows, obs)
        self.seconds["observation"] += time.perf_counter() - start

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
        lay = self.layout
        low = np.zeros(lay.size, dtype=np.float32)
        high = np.ones(lay.size, dtype=np.float32)
        if "activations" in lay.groups:
            low[lay.activations] = -1.0
        if "lam" in lay.groups:
            high[lay.lam] = max(self.reward.lam_high, 0.0)
            high[lay.lam_log] = max(float(lam_log_position(self.reward.lam_high)), 1.0)
        return low, high
