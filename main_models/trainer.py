"""Training a main model along action paths.

One optimizer and one cross-entropy step serve every way the main model is trained: the warm-up
on random paths, the fixed-path baselines (Model 0-3) and co-training on recorded paths. A path is
a row of actions: 0 (stop), or i in 1..L for "FPI on layer i", 0-padded (see
:meth:`FPINetwork.run_paths`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .network import FPINetwork

PathSource = Callable[[int, torch.Generator], Tensor]
"""``(n, generator) -> (n, T)`` action paths for a minibatch of n samples."""


def fixed_paths(path: Sequence[int], device: torch.device | str) -> PathSource:
    """Every sample follows ``path`` (e.g. [] for Model 0, [1, 2, 3] for Model 3)."""
    row = torch.tensor(list(path), dtype=torch.long, device=device)
    return lambda n, generator: row.expand(n, row.numel())


def random_paths(max_steps: int, num_layers: int, stop_prob: float, device: torch.device | str) -> PathSource:
    """Random paths of up to ``max_steps`` actions: at each step stop with ``stop_prob``, else pick a
    layer uniformly; once a path stops it stays stopped (0-padded)."""
    if not 0.0 <= stop_prob <= 1.0:
        raise ValueError(f"stop_prob must be in [0, 1], got {stop_prob}")

    def sample(n: int, generator: torch.Generator) -> Tensor:
        layers = torch.randint(1, num_layers + 1, (n, max_steps), device=device, generator=generator)
        stop = torch.rand(n, max_steps, device=device, generator=generator) < stop_prob
        alive = torch.cumprod((~stop).long(), dim=1).bool()
        return torch.where(alive, layers, torch.zeros_like(layers))

    return sample


@dataclass
class EpochProgress:
    """Where a multi-epoch training stands after an epoch: enough to continue it exactly."""

    epochs_done: int
    generator: Tensor
    """State of the minibatch/path generator after the epoch."""
    losses: list[float] = field(default_factory=list)
    """Mean loss of every epoch so far."""
    seconds: float = 0.0
    """Wall time of the epoch just finished."""


ALTERNATIVE_PATHS: dict[str, str] = {
    "plain": "the straightforward pass (answer at once), so that easy inputs keep a cheap path that works",
    "random": "a random path of the full step budget, so that every layer's FPI stays useful",
}
"""Paths an update can train alongside its own ones (the agent's chosen paths, the warm-up's)."""


class MainModelTrainer:
    """Adam on the cross-entropy of ``model`` along given action paths, on the samples ``(x, y)``.

    Every step can also train ``alternatives`` (see :data:`ALTERNATIVE_PATHS`) on the same
    samples: the loss is the mean cross-entropy over the given paths and each alternative. Training
    only the paths an agent chooses lets the network specialise to them until the other paths, the
    plain one included, stop working (SkipNet's collapse); the alternatives keep them alive.

    Co-training: :meth:`record` collects the paths of finished episodes (sample indices into x)
    and takes one step on every ``cotrain_every`` of them.
    """

    def __init__(
        self,
        model: FPINetwork,
        x: Tensor,
        y: Tensor,
        *,
        lr: float = 1e-3,
        cotrain_every: int = 64,
        alternatives: Sequence[str] = (),
        max_steps: int | None = None,
        seed: int = 0,
    ) -> None:
        unknown = [a for a in alternatives if a not in ALTERNATIVE_PATHS]
        if unknown:
            raise ValueError(f"alternative paths must be among {list(ALTERNATIVE_PATHS)}, got {unknown}")
        if "random" in alternatives and max_steps is None:
            raise ValueError("a 'random' alternative path needs max_steps, the budget it fills")
        self.alternatives = tuple(alternatives)
        self.max_steps = max_steps
        self.generator = torch.Generator(device=y.device)
        self.generator.manual_seed(seed + 2)
        if cotrain_every < 1:
            raise ValueError(f"cotrain_every must be >= 1, got {cotrain_every}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr}")
        self.model = model
        self.x = x
        self.y = y
        self.cotrain_every = cotrain_every
        self._lr = lr
        self._optimizer: torch.optim.Adam | None = None
        self._optimizer_state: dict | None = None
        self.updates = 0
        """Co-training steps taken."""
        self.last_loss = float("nan")
        """Cross-entropy of the most recent co-training step."""
        self._buffer_index = torch.empty(0, dtype=torch.long, device=y.device)
        self._buffer_path: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def optimizer(self) -> torch.optim.Adam:
        """Adam over the model's parameters, made at its first use: making a torch optimizer imports
        torch._dynamo (about a second), which building an environment, with its warm-up loaded from
        the cache, should not pay before it trains anything."""
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self.model.parameters(), lr=self._lr)
            if self._optimizer_state is not None:
                self._optimizer.load_state_dict(self._optimizer_state)
                self._optimizer_state = None
        return self._optimizer

    def step(self, index: Tensor, paths: Tensor) -> float:
        """One optimizer step on the mean cross-entropy of samples ``index`` along ``paths``.

        Gradients are enabled here whatever the caller's mode: an environment stepped under
        ``torch.no_grad()`` or ``torch.inference_mode()`` (as torchrl's and skrl's collectors do) still
        co-trains its model."""
        with torch.inference_mode(False), torch.enable_grad():
            if any(p.is_inference() for p in self.model.parameters()):
                raise RuntimeError(
                    "the main model's parameters were created inside torch.inference_mode() and can never be trained: "
                    "build the model (or the environment) outside inference mode"
                )
            index, paths = index.clone(), paths.clone()  # normal tensors, even if the caller made them in inference mode
            self.model.train()
            with self.model.update_weights():
                loss = self._update_loss(index, paths)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            self.optimizer.step()
        return float(loss.detach())

    def loss(self, index: Tensor, paths: Tensor, *, reduction: str = "mean") -> Tensor:
        """Cross-entropy of samples ``index`` along ``paths``, averaged with the alternatives' (see
        the class); ``reduction="sum"`` sums over the samples instead of averaging."""
        x, y = self.x[index], self.y[index]
        plain = self.model.straightforward(x)  # every path starts from it: computed once for all of them
        logits, _ = self.model.run_paths(x, paths, start=plain)
        loss = F.cross_entropy(logits, y, reduction=reduction)
        for name in self.alternatives:
            if name == "plain":
                alt = self.model.readout(plain)
            else:
                random = random_paths(self.max_steps, self.model.num_layers, 0.0, self.device)(index.numel(), self.generator)
                alt, _ = self.model.run_paths(x, random, start=plain)
            loss = loss + F.cross_entropy(alt, y, reduction=reduction)
        return loss / (1 + len(self.alternatives))

    def _update_loss(self, index: Tensor, paths: Tensor) -> Tensor:
        """The loss one :meth:`step` descends (a data-parallel trainer computes it across ranks)."""
        return self.loss(index, paths)

    def step_finished(self) -> None:
        """Called by the engine after every environment step, whether or not episodes ended: a
        single process has nothing to do here; a data-parallel trainer agrees on updates here."""

    def train_epochs(
        self,
        epochs: int,
        paths: PathSource,
        *,
        generator: torch.Generator,
        batch_size: int = 64,
        progress: bool = False,
        desc: str = "train",
        resume: EpochProgress | None = None,
        on_epoch: Callable[[EpochProgress], None] | None = None,
    ) -> list[float]:
        """``epochs`` passes over the samples in minibatches drawn with ``generator``, each sample
        following ``paths``. Returns the mean loss of each epoch.

        ``on_epoch`` is called after every epoch with an :class:`EpochProgress`; passing one back as
        ``resume`` continues from it exactly (the generator state included)."""
        from tqdm.auto import tqdm

        n = int(self.y.shape[0])
        losses: list[float] = list(resume.losses) if resume is not None else []
        first = resume.epochs_done if resume is not None else 0
        if resume is not None:
            generator.set_state(resume.generator)
        bar = tqdm(range(first, epochs), desc=desc, unit="epoch", disable=not progress, initial=first, total=epochs)
        for epoch in bar:
            start = time.perf_counter()
            order = torch.randperm(n, device=self.device, generator=generator)
            total = 0.0
            for begin in range(0, n, batch_size):
                index = order[begin : begin + batch_size]
                total += self.step(index, paths(index.numel(), generator)) * index.numel()
            losses.append(total / n)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if on_epoch is not None:
                on_epoch(EpochProgress(epoch + 1, generator.get_state(), list(losses), time.perf_counter() - start))
        return losses

    def warm_up(
        self,
        epochs: int,
        *,
        max_steps: int,
        stop_prob: float = 0.0,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = False,
        resume: EpochProgress | None = None,
        on_epoch: Callable[[EpochProgress], None] | None = None,
    ) -> list[float]:
        """Train on random paths of up to ``max_steps`` FPI steps (paper 4.4), so that every path an
        agent may choose starts out useful. ``stop_prob`` 0 trains on full-length random FPI paths:
        a network trained mostly on one-application paths learns to need no iteration
        (benchmarks/warmup_paths.py). ``resume`` and ``on_epoch`` as in :meth:`train_epochs`."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed + 1)
        sampler = random_paths(max_steps, self.model.num_layers, stop_prob, self.device)
        return self.train_epochs(
            epochs, sampler, generator=generator, batch_size=batch_size, progress=progress, desc="warm-up", resume=resume, on_epoch=on_epoch
        )

    # ---- co-training -------------------------------------------------------------------------
    def record(self, index: Tensor, paths: Tensor) -> None:
        """Add finished episodes (sample indices and their 0-padded paths); take a step on every
        ``cotrain_every`` of them."""
        self._buffer_index = torch.cat([self._buffer_index, index])
        self._buffer_path = paths if self._buffer_path is None else torch.cat([self._buffer_path, paths])
        while self._buffer_index.numel() >= self.cotrain_every:
            k = self.cotrain_every
            self.last_loss = self.step(self._buffer_index[:k], self._buffer_path[:k])
            self._buffer_index = self._buffer_index[k:]
            self._buffer_path = self._buffer_path[k:]
            self.updates += 1

    def state_dict(self) -> dict:
        """Optimizer, co-training buffer and counters (the model's weights are saved by its owner)."""
        return {
            "optimizer": self._optimizer_state if self._optimizer_state is not None else self.optimizer.state_dict(),
            "buffer_index": self._buffer_index.cpu(),
            "buffer_path": (self._buffer_path if self._buffer_path is not None else torch.empty(0, 0, dtype=torch.long)).cpu(),
            "updates": self.updates,
            "last_loss": self.last_loss,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        missing = {"optimizer", "buffer_index", "buffer_path", "updates", "last_loss"} - set(state)
        if missing:
            raise ValueError(f"main-model trainer state is missing {sorted(missing)}")
        try:
            if self._optimizer is not None:
                self._optimizer.load_state_dict(state["optimizer"])
            else:  # kept until the optimizer is made; checked now as Adam would check it
                self._check_optimizer_state(state["optimizer"])
                self._optimizer_state = state["optimizer"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"optimizer state does not match the main model: {err}") from None
        self._buffer_index = state["buffer_index"].to(self.device, torch.long)
        path = state["buffer_path"].to(self.device, torch.long)
        self._buffer_path = path if path.numel() else None
        self.updates = int(state["updates"])
        self.last_loss = float(state["last_loss"])
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def _check_optimizer_state(self, state: dict) -> None:
        """What ``Optimizer.load_state_dict`` checks (one group of as many parameters), and that each
        parameter's moments have its shape."""
        params = list(self.model.parameters())
        groups = state["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError(f"the state has {[len(g['params']) for g in groups]} parameters per group, the model 1 group of {len(params)}")
        for index, moments in state["state"].items():
            shape = params[groups[0]["params"].index(index)].shape
            if moments["exp_avg"].shape != shape:
                raise ValueError(f"parameter {index} has shape {tuple(shape)}, its state {tuple(moments['exp_avg'].shape)}")
