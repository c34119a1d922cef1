"""The batched DynaLay engine: N episodes in flight, one co-trained main model, all on ``device``.

Every face of the environment (single-sample ``gymnasium.Env``, ``gymnasium.vector.VectorEnv``,
SB3 ``VecEnv``) is a thin adapter over this class, so their semantics cannot diverge.

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

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils import parametrize

from main_models import DatasetSplits, FPINetwork, PathState, build_main_model, load_dataset


@dataclass(frozen=True)
class ObservationLayout:
    """Column slices of the flat float32 observation."""

    num_layers: int
    summary_dim: int

    @property
    def activations(self) -> slice:
        return slice(0, self.summary_dim)

    @property
    def lam(self) -> int:
        return self.summary_dim

    @property
    def step_fraction(self) -> int:
        return self.summary_dim + 1

    @property
    def last_action(self) -> slice:
        """One-hot of the last FPI layer chosen (all zero before the first step)."""
        return slice(self.summary_dim + 2, self.summary_dim + 2 + self.num_layers)

    @property
    def repeat_fraction(self) -> int:
        return self.summary_dim + 2 + self.num_layers

    @property
    def confidence(self) -> int:
        return self.summary_dim + 3 + self.num_layers

    @property
    def size(self) -> int:
        return self.summary_dim + 4 + self.num_layers


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
    finished: dict[str, Tensor]
    """Per finished episode (rows in ``terminated``): correct, compute, iterations,
    layer_iterations (per layer), return (Eq. 2, undiscounted), steps, path, label, sample, lam
    and difficulty (-1 where the dataset defines none)."""


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class DynaLayEngine:
    """N DynaLay episodes stepped together with tensor ops.

    Args:
        num_envs: episodes in flight.
        dataset: dataset name (see ``main_models.DATASETS``) or loaded :class:`DatasetSplits`.
        data_dir: where dataset files live (datasets that need files).
        model: an existing main model to share (e.g. a frozen one for evaluation), or the name of
            the main model to build ("mlp", ...); ``None`` picks the dataset's default.
        lam: the compute penalty weight lambda when ``lam_range`` is not given.
        lam_range: (low, high): lambda is drawn uniformly per episode, so one agent learns the
            whole trade-off.
        alpha, beta: the paper's Eq. 2 weights (0.5, 0.3).
        max_steps: step budget T per episode (default 2L).
        mode: ``"train"`` (train split, co-training) or ``"eval"`` (test split in order, model
            frozen, no co-training).
        cotrain: co-train the main model on the paths the agent chose (train mode only).
        cotrain_every: finished episodes per main-model optimizer step (K).
        lr: Adam learning rate of the main model.
        pretrain_epochs: warm-up epochs on random paths before the agent starts (paper 4.4).
        warmup_stop_prob: per-step stop probability of the warm-up path sampler. The default 0
            trains on full-length random FPI paths: a network trained mostly on one-application
            paths learns to need no iteration (see benchmarks/warmup_paths.py).
        autoreset: reset finished rows in the same step. Without it finished rows go idle (no
            compute) until ``reset`` is called for them.
        seed: seeds the model initialisation, warm-up and the episode sampler.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        dataset: str | DatasetSplits = "digits",
        data_dir: str | None = None,
        model: FPINetwork | str | None = None,
        lam: float = 1.0,
        lam_range: tuple[float, float] | None = None,
        alpha: float = 0.5,
        beta: float = 0.3,
        max_steps: int | None = None,
        mode: str = "train",
        cotrain: bool = True,
        cotrain_every: int = 64,
        lr: float = 1e-3,
        pretrain_epochs: int = 0,
        warmup_stop_prob: float = 0.0,
        autoreset: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if lam_range is not None:
            lo, hi = (float(v) for v in lam_range)
            if lo < 0 or hi < lo:
                raise ValueError(f"lam_range must satisfy 0 <= low <= high, got {tuple(lam_range)}")
            lam_range = (lo, hi)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if cotrain_every < 1:
            raise ValueError(f"cotrain_every must be >= 1, got {cotrain_every}")
        if pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {pretrain_epochs}")

        self.device = resolve_device(device)
        self.num_envs = num_envs
        self.mode = mode
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.lam = float(lam)
        self.lam_range = lam_range
        self.autoreset = autoreset
        self.cotrain_every = cotrain_every

        splits = dataset if isinstance(dataset, DatasetSplits) else load_dataset(dataset, data_dir, seed=0)
        self.splits = splits.to(self.device)
        self.x_all = self.splits.x_train if mode == "train" else self.splits.x_test
        self.y_all = self.splits.y_train if mode == "train" else self.splits.y_test
        self.num_samples = int(self.y_all.shape[0])
        difficulty = self.splits.difficulty_train if mode == "train" else self.splits.difficulty_test
        # -1 marks "unknown difficulty" so every dataset reports the same episode keys
        self.difficulty_all = difficulty if difficulty is not None else torch.full_like(self.y_all, -1)

        if model is None or isinstance(model, str):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = build_main_model(self.splits) if model is None else build_main_model(self.splits, model=model)
        self.model = model.to(self.device)
        self.num_layers = self.model.num_layers
        self.max_steps = int(max_steps) if max_steps is not None else 2 * self.num_layers
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        self.layout = ObservationLayout(self.num_layers, self.model.summary_dim)
        self.lam_high = lam_range[1] if lam_range is not None else self.lam

        self._full_flops = float(self.model.straightforward_flops)

        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._eval_cursor = 0

        self.cotrain = cotrain and mode == "train"
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr) if self.cotrain or pretrain_epochs else None
        self._buffer_index = torch.empty(0, dtype=torch.long, device=self.device)
        self._buffer_path = torch.empty(0, self.max_steps, dtype=torch.long, device=self.device)
        self.cotrain_updates = 0
        self.last_main_loss = float("nan")
        self.warmup_stop_prob = warmup_stop_prob
        if pretrain_epochs:
            self.pretrain(pretrain_epochs, seed=seed)
        if mode == "eval":
            self.model.eval()

        n, dev = num_envs, self.device
        self.sample = torch.zeros(n, dtype=torch.long, device=dev)
        self.label = torch.zeros(n, dtype=torch.long, device=dev)
        self.lam_row = torch.full((n,), self.lam, device=dev)
        self.steps = torch.zeros(n, dtype=torch.long, device=dev)
        self.last_action = torch.zeros(n, dtype=torch.long, device=dev)
        self.repeat = torch.zeros(n, dtype=torch.long, device=dev)
        self.prediction = torch.zeros(n, dtype=torch.long, device=dev)
        self.confidence = torch.zeros(n, device=dev)
        self.ep_compute = torch.zeros(n, device=dev)
        self.ep_iterations = torch.zeros(n, dtype=torch.long, device=dev)
        self.ep_layer_iterations = torch.zeros(n, self.num_layers, dtype=torch.long, device=dev)
        self.ep_return = torch.zeros(n, device=dev)
        self.path = torch.zeros(n, self.max_steps, dtype=torch.long, device=dev)
        self.running = torch.zeros(n, dtype=torch.bool, device=dev)
        self.obs = torch.zeros(n, self.layout.size, device=dev)
        self.state: PathState | None = None

    # ---- reset -------------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))
        self._eval_cursor = 0

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
        if self.lam_range is not None:
            lo, hi = self.lam_range
            lam = lo + (hi - lo) * torch.rand(n, device=self.device, generator=self.generator)
        else:
            lam = torch.full((n,), self.lam, device=self.device)

        with self._rollout_mode():
            fresh = self.model.straightforward(self.x_all[sample])
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
        self.steps[rows] = 0
        self.last_action[rows] = 0
        self.repeat[rows] = 0
        self.ep_compute[rows] = 1.0
        self.ep_iterations[rows] = 0
        self.ep_layer_iterations[rows] = 0
        self.ep_return[rows] = 0.0
        self.path[rows] = 0
        self.running[rows] = True
        self._refresh(rows, fresh)
        return self.obs

    # ---- step --------------------------------------------------------------------------------
    def validate_actions(self, actions: Tensor) -> None:
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got shape {tuple(actions.shape)}")
        if actions.dtype.is_floating_point or actions.dtype == torch.bool:
            raise ValueError(f"actions must be integers in [0, {self.num_layers}], got dtype {actions.dtype}")
        bad = (actions < 0) | (actions > self.num_layers)
        if bool(bad.any()):
            raise ValueError(
                f"action {int(actions[bad][0])} out of range: valid actions are 0 (NOP) to "
                f"{self.num_layers} (FPI on layer i)"
            )

    def step(self, actions: Tensor, *, validate: bool = True) -> StepOutput:
        """Advance every running row by one action. Idle rows (finished, not reset) do nothing."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        actions = actions.to(self.device, torch.long) if actions.device != self.device or actions.dtype != torch.long else actions
        if validate:
            self.validate_actions(actions)
        running = self.running
        fpi = running & (actions > 0)
        nop = running & (actions == 0)
        choice = torch.where(fpi, actions, torch.zeros_like(actions))

        with self._rollout_mode():
            self.state, iterations = self.model.fpi_step(self.state, choice)
        layer = (choice - 1).clamp_min(0)
        step_cost = torch.where(fpi, (self.model.fpi_step_flops(layer, iterations) / self._full_flops).float(), 0.0)
        self.repeat = torch.where(fpi, torch.where(actions == self.last_action, self.repeat + 1, 1), self.repeat)
        reward = -self.beta * self.lam_row * step_cost * self.repeat
        stepped = fpi.nonzero().squeeze(1)
        # Running rows always have steps < T here: reaching T ends the episode.
        self.path[stepped, self.steps[stepped]] = actions[stepped]
        self.steps += fpi
        self.last_action = torch.where(fpi, actions, self.last_action)
        self.ep_compute += step_cost
        self.ep_iterations += iterations
        self.ep_layer_iterations.scatter_add_(1, layer.unsqueeze(1), iterations.unsqueeze(1))

        if stepped.numel():
            self._refresh(stepped, self.state.rows(stepped))

        done = nop | (fpi & (self.steps >= self.max_steps))
        correct = self.prediction == self.label
        reward = reward + self.alpha * (done & correct)
        self.ep_return += reward
        done_rows = done.nonzero().squeeze(1)
        finished = {
            "correct": correct[done_rows],
            "compute": self.ep_compute[done_rows].clone(),
            "iterations": self.ep_iterations[done_rows].clone(),
            "layer_iterations": self.ep_layer_iterations[done_rows].clone(),
            "return": self.ep_return[done_rows].clone(),
            "steps": self.steps[done_rows].clone(),
            "path": self.path[done_rows].clone(),
            "label": self.label[done_rows].clone(),
            "sample": self.sample[done_rows].clone(),
            "lam": self.lam_row[done_rows].clone(),
            "difficulty": self.difficulty_all[self.sample[done_rows]],
        }
        final_obs = self.obs[done_rows].clone()
        self.running = running & ~done
        if done_rows.numel():
            if self.cotrain:
                self._record_for_cotraining(finished["sample"], finished["path"])
            if self.autoreset:
                self.reset(done_rows)
        return StepOutput(
            obs=self.obs,
            reward=reward,
            terminated=done,
            truncated=torch.zeros_like(done),
            step_cost=step_cost,
            step_iterations=iterations,
            final_obs=final_obs,
            finished=finished,
        )

    @staticmethod
    def _rollout_mode() -> ExitStack:
        """No graph, and parametrized weights (spectral norm) computed once per call rather than
        on every block application."""
        stack = ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(parametrize.cached())
        return stack

    def _refresh(self, rows: Tensor, state: PathState) -> None:
        """Recompute prediction, confidence and the observation of ``rows`` from their state."""
        with self._rollout_mode():
            probs = F.softmax(self.model.readout(state), dim=1)
            conf, pred = probs.max(dim=1)
            self.prediction[rows] = pred
            self.confidence[rows] = conf
            lay = self.layout
            obs = torch.empty(rows.numel(), lay.size, device=self.device)
            obs[:, lay.activations] = self.model.layer_summaries(state)
            obs[:, lay.lam] = self.lam_row[rows]
            obs[:, lay.step_fraction] = self.steps[rows].float() / self.max_steps
            obs[:, lay.last_action] = F.one_hot(self.last_action[rows], self.num_layers + 1)[:, 1:].float()
            obs[:, lay.repeat_fraction] = self.repeat[rows].float() / self.max_steps
            obs[:, lay.confidence] = conf
            self.obs.index_copy_(0, rows, obs)

    # ---- co-training -------------------------------------------------------------------------
    def _record_for_cotraining(self, sample: Tensor, path: Tensor) -> None:
        self._buffer_index = torch.cat([self._buffer_index, sample])
        self._buffer_path = torch.cat([self._buffer_path, path])
        while self._buffer_index.numel() >= self.cotrain_every:
            k = self.cotrain_every
            self.last_main_loss = self.train_main_model(self._buffer_index[:k], self._buffer_path[:k])
            self._buffer_index = self._buffer_index[k:]
            self._buffer_path = self._buffer_path[k:]
            self.cotrain_updates += 1

    def train_main_model(self, sample: Tensor, paths: Tensor) -> float:
        """One Adam step of cross-entropy along the given action paths (gradient isolated from the
        agent: the agent only ever sees detached observations)."""
        if self.optimizer is None:
            raise RuntimeError("this engine does not train its main model (eval mode or cotrain=False)")
        self.model.train()
        logits, _ = self.model.run_paths(self.x_all[sample], paths)
        loss = F.cross_entropy(logits, self.y_all[sample])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def sample_warmup_paths(self, n: int, generator: torch.Generator) -> Tensor:
        """Random action paths for warm-up: at each step stop with ``warmup_stop_prob``, else pick
        a layer uniformly. Once a path stops it stays stopped (0-padded)."""
        T, L = self.max_steps, self.num_layers
        layers = torch.randint(1, L + 1, (n, T), device=self.device, generator=generator)
        stop = torch.rand(n, T, device=self.device, generator=generator) < self.warmup_stop_prob
        alive = torch.cumprod((~stop).long(), dim=1).bool()
        return torch.where(alive, layers, torch.zeros_like(layers))

    def pretrain(self, epochs: int, *, batch_size: int = 64, seed: int = 0, progress: bool = False) -> list[float]:
        """Warm-up: train the main model for ``epochs`` on random paths (paper 4.4). Returns the
        mean loss of each epoch."""
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed + 1)
        x, y = self.splits.x_train, self.splits.y_train
        losses = []
        iterator = range(epochs)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="warm-up", unit="epoch")
        for _ in iterator:
            order = torch.randperm(y.shape[0], device=self.device, generator=gen)
            total = 0.0
            for start in range(0, y.shape[0], batch_size):
                idx = order[start : start + batch_size]
                paths = self.sample_warmup_paths(idx.numel(), gen)
                self.model.train()
                logits, _ = self.model.run_paths(x[idx], paths)
                loss = F.cross_entropy(logits, y[idx])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                total += float(loss.detach()) * idx.numel()
            losses.append(total / y.shape[0])
        return losses

    # ---- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs: main model, its optimizer, the co-training buffer, counters and
        the sampler's RNG. Episodes in flight are not saved; a resumed run starts fresh ones."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "buffer_index": self._buffer_index.cpu(),
            "buffer_path": self._buffer_path.cpu(),
            "cotrain_updates": self.cotrain_updates,
            "last_main_loss": self.last_main_loss,
            "generator": self.generator.get_state(),
            "num_layers": self.num_layers,
            "max_steps": self.max_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; a checkpoint of another model or budget is refused."""
        missing = {"model", "optimizer", "buffer_index", "buffer_path", "cotrain_updates", "generator"} - set(state)
        if missing:
            raise ValueError(f"engine checkpoint is missing {sorted(missing)}")
        if state.get("num_layers") != self.num_layers or state.get("max_steps") != self.max_steps:
            raise ValueError(
                f"checkpoint is for {state.get('num_layers')} layers / budget {state.get('max_steps')}, "
                f"this environment has {self.num_layers} / {self.max_steps}"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(f"checkpoint does not match the main model: {err}") from None
        if state["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self._buffer_index = state["buffer_index"].to(self.device)
        self._buffer_path = state["buffer_path"].to(self.device)
        self.cotrain_updates = int(state["cotrain_updates"])
        self.last_main_loss = float(state.get("last_main_loss", float("nan")))
        self.generator.set_state(state["generator"])

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self, policy, *, lam: float | None = None, batch_size: int = 1024, timing_repeats: int = 3):
        """Evaluate ``policy`` on the test split with this engine's main model frozen, its reward
        weights and step budget (see :func:`dynalay_env.evaluate_policy`)."""
        from .evaluation import evaluate_policy

        return evaluate_policy(
            self.model,
            self.splits,
            policy,
            lam=self.lam if lam is None else lam,
            alpha=self.alpha,
            beta=self.beta,
            max_steps=self.max_steps,
            batch_size=batch_size,
            device=self.device,
            timing_repeats=timing_repeats,
        )

    # ---- observation space bounds ------------------------------------------------------------
    def observation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lay = self.layout
        low = np.zeros(lay.size, dtype=np.float32)
        high = np.ones(lay.size, dtype=np.float32)
        low[lay.activations] = -1.0
        high[lay.lam] = max(self.lam_high, 0.0)
        return low, high
