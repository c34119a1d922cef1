"""Data-parallel co-training of a main model across processes, with torch's DistributedDataParallel.

Each rank holds a replica of the main model and its own shard of the episodes in flight (its own
engine). Finished episodes are buffered where they finished. Because ranks finish episodes at
different rates, a rank cannot decide alone when to update (its DDP all-reduce would wait for
ranks that are not updating): after every environment step, every rank calls
:meth:`DistributedMainModelTrainer.step_finished`, which all-reduces the number of buffered
episodes, and once the total reaches ``cotrain_every`` all ranks update together, each on the rows
it holds. The loss each rank back-propagates is its rows' summed cross-entropy times
``world_size / total``, so that DDP's gradient average is the mean over every rank's rows: the
update a single process would take on their union. A rank holding no rows still joins the
all-reduce, with a zero loss.

Nothing here knows about reinforcement learning: the engine calls ``record`` and
``step_finished``, whatever drives it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .network import FPINetwork
from .trainer import MainModelTrainer


class _UpdateLoss(nn.Module):
    """The trainer's loss as a module, so that DistributedDataParallel can wrap it."""

    def __init__(self, trainer: "DistributedMainModelTrainer") -> None:
        super().__init__()
        self.model = trainer.model
        self._trainer = [trainer]  # a list keeps the trainer out of the module tree

    def forward(self, index: Tensor, paths: Tensor, scale: float) -> Tensor:
        trainer = self._trainer[0]
        if scale is None:
            return trainer.loss(index, paths)
        return trainer.loss(index, paths, reduction="sum") * scale


class DistributedMainModelTrainer(MainModelTrainer):
    """A :class:`MainModelTrainer` whose updates are all-reduced across the ranks of the default
    process group (``torch.distributed.init_process_group`` first).

    Building it broadcasts rank 0's weights and buffers to every rank, so the replicas start equal.
    :meth:`step` (warm-up, fixed-path training) takes the mean loss of the rows each rank gives it:
    given the same rows everywhere it is the single-process step, replicated. Co-training goes
    through :meth:`record` and :meth:`step_finished` (see the module docstring).
    """

    def __init__(self, model: FPINetwork, x: Tensor, y: Tensor, **kwargs) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistributedMainModelTrainer needs torch.distributed.init_process_group() first")
        super().__init__(model, x, y, **kwargs)
        device_ids = [model.layer_flops.device.index] if model.layer_flops.device.type == "cuda" else None
        # find_unused_parameters: a step's paths may leave layers unused (rows that stop at once).
        self.ddp = DistributedDataParallel(_UpdateLoss(self), device_ids=device_ids, find_unused_parameters=True)
        self.world_size = dist.get_world_size()
        self._scale: float | None = None

    def _update_loss(self, index: Tensor, paths: Tensor) -> Tensor:
        return self.ddp(index, paths, self._scale)

    def record(self, index: Tensor, paths: Tensor) -> None:
        """Buffer finished episodes; the update waits for :meth:`step_finished`, on every rank."""
        self._buffer_index = torch.cat([self._buffer_index, index])
        self._buffer_path = paths if self._buffer_path is None else torch.cat([self._buffer_path, paths])

    def step_finished(self) -> None:
        """Agree with the other ranks on the episodes buffered everywhere; when they reach
        ``cotrain_every``, update on all of them together."""
        local = torch.tensor([self._buffer_index.numel()], dtype=torch.long, device=self.device)
        dist.all_reduce(local)
        total = int(local)
        if total < self.cotrain_every:
            return
        index = self._buffer_index
        paths = self._buffer_path if self._buffer_path is not None else torch.zeros(0, 1, dtype=torch.long, device=self.device)
        self._scale = self.world_size / total
        try:
            scaled = self.step(index, paths)  # every rank, rows or not: the all-reduce needs them all
        finally:
            self._scale = None
        # the loss this rank logs: the mean cross-entropy of its own rows
        self.last_loss = scaled * total / self.world_size / index.numel() if index.numel() else float("nan")
        self._buffer_index = self._buffer_index[:0]
        self._buffer_path = None
        self.updates += 1

    def replicas_equal(self) -> bool:
        """Whether every rank's main-model parameters are bitwise equal to rank 0's."""
        return replicas_equal(self.model)


def replicas_equal(module: nn.Module) -> bool:
    """Whether every rank's parameters of ``module`` are bitwise equal to rank 0's (a collective)."""
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    same = torch.tensor([int(torch.equal(flat, reference))], device=flat.device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same)
