"""The main network: stem -> L FPI-capable layers -> head, with batched per-row path execution.

Nothing here knows about reinforcement learning. The network offers the primitives a layer
selection policy needs: the straightforward pass, a batched "FPI on layer i" step where every row
picks its own layer (or none), the FLOPs of each piece for a cost model, and pooled activation
summaries of each layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import chain
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .fpi import ACCELERATED_PLAIN_TRAINING, ContractiveTanhBlock, FPILayer, FPIResult, SolverSettings, solve_together


@dataclass
class PathState:
    """Activations of a batch part-way along its path: the stem output and every layer's state."""

    u: Tensor
    z: list[Tensor]

    def rows(self, index: Tensor | slice) -> "PathState":
        return PathState(self.u[index], [z[index] for z in self.z])


def _scatter_rows(dst: Tensor, index: Tensor, src: Tensor) -> Tensor:
    """dst[index] = src, out of place when autograd records the step, in place otherwise."""
    if torch.is_grad_enabled():
        return dst.index_copy(0, index, src)
    return dst.index_copy_(0, index, src)


class FPINetwork(nn.Module):
    """A network of L FPI-capable layers between a stem and a head.

    Layer i (1-based) reads the state of layer i-1 (the stem output for i = 1). Each layer has two
    modes: one application from its current state (straightforward), or iteration to its fixed
    point from its current state (FPI).
    """

    @contextmanager
    def update_weights(self) -> Iterator[None]:
        """Every parametrized weight (spectral norm, the conv operator-norm bound) computed once, with
        autograd, and used by every solve and application of one training update.

        Why once per update: the update then differentiates one map. Computed at each use, spectral
        norm's power iteration would step its vectors at every solve and application (about 50 times
        in a co-training update of 64 episodes), so the map would shift between the solves of one
        update, and how far the vectors moved would depend on the lengths of the paths the update
        happens to replay (and, in data-parallel training, differ between ranks). Once per update is
        the usual practice for spectral norm: one power-iteration step per optimizer step. The
        weights are computed up front so that the cache holds the graph-attached ones even where the
        first use is a solve under no_grad."""
        with parametrize.cached():
            for module in self.modules():
                if parametrize.is_parametrized(module):
                    for name in module.parametrizations:
                        getattr(module, name)
            yield

    def __init__(
        self,
        stem: nn.Module,
        layers: list[FPILayer],
        head: nn.Module,
        *,
        stem_flops: int,
        head_flops: int,
        summary_bins: int = 16,
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("an FPINetwork needs at least one FPI layer")
        self.stem = stem
        self.layers = nn.ModuleList(layers)
        self.head = head
        self.summary_bins = summary_bins
        layer_flops = [int(layer.block.flops_per_sample()) for layer in layers]
        # A solve may hoist loop-invariant work (FPILayer uses block.prepare): then it costs
        # setup + k * iteration FLOPs rather than k applications. Blocks without fpi_flops()
        # pay one full application per iteration.
        fpi_flops = [
            layer.block.fpi_flops() if callable(getattr(layer.block, "fpi_flops", None)) else (0, flops)
            for layer, flops in zip(layers, layer_flops)
        ]
        self.register_buffer("layer_flops", torch.tensor(layer_flops, dtype=torch.float64), persistent=False)
        self.register_buffer("layer_setup_flops", torch.tensor([f[0] for f in fpi_flops], dtype=torch.float64), persistent=False)
        self.register_buffer("layer_iteration_flops", torch.tensor([f[1] for f in fpi_flops], dtype=torch.float64), persistent=False)
        # What an accelerated solver spends beyond its function evaluations depends on the
        # iteration count and the state's size: tabulated per layer for every count it can take.
        self.register_buffer("layer_solver_flops", self._solver_flops_table(layers), persistent=False)
        self.stem_flops = int(stem_flops)
        self.head_flops = int(head_flops)
        self._rollout_weights: dict[tuple[int, str], Tensor] = {}
        self._rollout_weights_key: tuple | None = None
        self._parametrized_ids: frozenset[int] | None = None
        self._tracked_tensors: list[Tensor] | None = None
        self.last_solves: dict[int, FPIResult] = {}
        """The solves of the most recent :meth:`fpi_step`: layer index (0-based) -> its result."""

    @staticmethod
    def _solver_flops_table(layers: list[FPILayer]) -> Tensor:
        width = max(max(layer.max_iter, layer.backward_max_iter) for layer in layers) + 1
        table = torch.zeros(len(layers), width, dtype=torch.float64)
        counts = torch.arange(width)
        for j, layer in enumerate(layers):
            if layer.solver == "picard":
                continue
            numel = getattr(layer.block, "state_numel", None)
            if not isinstance(numel, int):
                raise ValueError(
                    f"layer {j + 1} ({type(layer.block).__name__}) uses the {layer.solver!r} solver, whose cost depends on the "
                    f"state's size, but its block declares no integer state_numel"
                )
            table[j] = layer.solver_overhead_flops(counts, numel)
        return table

    def configure_solver(
        self,
        solver: str | None = None,
        *,
        tol: float | None = None,
        max_iter: int | None = None,
        anderson_memory: int | None = None,
        anderson_start: int | None = None,
        grad: str | None = None,
        training_solver: str | None = None,
    ) -> None:
        """Change how every FPI layer solves and differentiates (the weights stay): the solver, its
        tolerance, its cap, Anderson's memory and start, the gradient mode, the solver of the solves that train
        (:attr:`SolverSettings.training_solver`). Each layer's settings are replaced
        (``dataclasses.replace``) by ones that differ in what is given; a new ``max_iter`` raises the
        adjoint's cap to at least twice it, and the adjoint solver stays as it was. Everything is
        checked before any layer changes. The cost model follows (:meth:`fpi_step_flops`)."""
        from .fpi import check_grad_mode, make_solver

        if grad is not None:
            for layer in self.layers:
                check_grad_mode(grad, layer.block)
        for name in (solver, training_solver):
            if name is not None:
                make_solver(name)  # an unknown name is refused before any layer changes
        if tol is not None and not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        if max_iter is not None and max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        given = {
            "solver": solver,
            "tol": tol,
            "max_iter": max_iter,
            "anderson_memory": anderson_memory,
            "anderson_start": anderson_start,
            "grad": grad,
            "training_solver": training_solver,
        }
        changes = {name: value for name, value in given.items() if value is not None}
        settings = []
        for layer in self.layers:
            extra = {} if max_iter is None else {"backward_max_iter": max(layer.settings.backward_max_iter, 2 * max_iter)}
            settings.append(replace(layer.settings, **changes, **extra))
        for layer, new in zip(self.layers, settings):
            layer.settings = new
        self.layer_solver_flops = self._solver_flops_table(list(self.layers)).to(self.layer_flops.device)

    # ---- rollouts ----------------------------------------------------------------------------
    def _weights_key(self) -> tuple:
        # In-place updates (optimizer steps, load_state_dict, a power-iteration step on the
        # spectral-norm vectors) bump a tensor's version counter, so this key changes exactly when
        # a parametrized weight could.
        if self._tracked_tensors is None:  # walking the module tree on every call costs more than the step
            self._tracked_tensors = list(chain(self.parameters(), self.buffers()))
        return (self.training, tuple(t._version for t in self._tracked_tensors))

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to() / .cuda() replace buffers (and may replace parameters): forget what was tracked
        self._tracked_tensors = None
        self._rollout_weights, self._rollout_weights_key = {}, None
        return super()._apply(fn, recurse)

    @contextmanager
    def rollout_weights(self) -> Iterator[None]:
        """No graph, and every parametrized weight (spectral norm, the conv operator norm) computed
        once and reused across calls until a parameter or buffer changes.

        Rollouts fetch the same weights thousands of times between two co-training updates; without
        this each fetch would run a power-iteration step (and update its vectors) or, for the
        conv blocks, an FFT and per-frequency SVDs. With it, that work runs once per update.
        Inside, the weights are graph-free: never train in this context."""
        key = self._weights_key()
        with torch.no_grad(), parametrize.cached():
            if key == self._rollout_weights_key:
                parametrize._cache.update(self._rollout_weights)
            yield
            if self._parametrized_ids is None:
                self._parametrized_ids = frozenset(id(m) for m in self.modules() if parametrize.is_parametrized(m))
            ours = self._parametrized_ids
            self._rollout_weights = {k: v for k, v in parametrize._cache.items() if k[0] in ours and v is not None}
        self._rollout_weights_key = self._weights_key()

    # ---- sizes and costs -------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def straightforward_flops(self) -> int:
        """FLOPs of one full plain pass: stem, every layer once, head."""
        return self.stem_flops + int(self.layer_flops.sum().item()) + self.head_flops

    @property
    def summary_dim(self) -> int:
        return self.summary_bins * self.num_layers

    # ---- passes ----------------------------------------------------------------------------
    def straightforward(self, x: Tensor) -> PathState:
        """The plain L1 -> L2 -> ... -> LL path: every layer applied once from its initial state."""
        u = self.stem(x)
        states: list[Tensor] = []
        inp = u
        for layer in self.layers:
            z = layer.apply_once(layer.initial_state(inp), inp)
            states.append(z)
            inp = z
        return PathState(u, states)

    def readout(self, state: PathState) -> Tensor:
        """Logits from the last layer's state."""
        return self.head(state.z[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.straightforward(x))

    def fpi_step(self, state: PathState, choice: Tensor) -> tuple[PathState, Tensor]:
        """One batched layer-selection step.

        ``choice[b]`` in 0..L: 0 leaves row b untouched (no compute); i runs layer i to its fixed
        point from its current state and then re-applies layers i+1..L once each, so the head reads
        fresh activations. Rows are grouped by the layer they chose; each group is computed as one
        sub-batch and rows that chose nothing are never computed.

        Returns the new state and the FPI iterations spent on each row (0 where choice is 0);
        :attr:`last_solves` holds each solved layer's (0-based) :class:`FPIResult` for its rows.
        With autograd off the layer tensors of ``state`` are updated in place (no copy of the
        rows that did nothing); with autograd on they are left intact.
        """
        iterations = torch.zeros(choice.shape[0], dtype=torch.long, device=choice.device)
        z = list(state.z)
        chosen = [(choice == j + 1).nonzero().squeeze(1) for j in range(self.num_layers)]
        self.last_solves = {}
        lockstep = not torch.is_grad_enabled() or all(layer.solves_without_graph for layer in self.layers)
        if lockstep:
            # The chosen layers' solves are independent (a row that chose layer j reads layer j-1's
            # state, which no other solve of this step touches) and, unless the gradient is
            # unrolled, graph-free: they iterate together and share their convergence bookkeeping.
            # Each layer then attaches its gradient; the passes above them follow.
            # A layer with a direct form of its fixed point takes it when a gradient is needed
            # (grad="exact"), with no iteration at all.
            todo = [(j, rows) for j, rows in enumerate(chosen) if rows.numel()]
            inputs = [(state.u if j == 0 else z[j - 1])[rows] for j, rows in todo]
            exact = [self.layers[j].solves_exactly(u) for (j, _), u in zip(todo, inputs)]
            trained = [self.layers[j].needs_graph(u) for (j, _), u in zip(todo, inputs)]
            with torch.no_grad(), parametrize.cached():
                problems = [
                    self.layers[j].problem(u.detach(), z[j][rows].detach(), for_gradient=gradient)
                    for ((j, rows), u, direct, gradient) in zip(todo, inputs, exact, trained)
                    if not direct
                ]
                iterated = iter(solve_together(problems))
            for (j, rows), u, direct in zip(todo, inputs, exact):
                solved = self.layers[j].exact_solve(u) if direct else self.layers[j].differentiate(u, next(iterated))
                z[j] = _scatter_rows(z[j], rows, solved.z)
                iterations[rows] = solved.iterations
                self.last_solves[j] = solved
        downstream = torch.zeros_like(choice, dtype=torch.bool)
        for j, layer in enumerate(self.layers):
            inp = state.u if j == 0 else z[j - 1]
            fpi_rows = chosen[j]
            once_rows = downstream.nonzero().squeeze(1)
            if fpi_rows.numel() and not lockstep:  # the unrolled gradient runs each solve with its own graph
                solved = layer(inp[fpi_rows], z[j][fpi_rows])
                z[j] = _scatter_rows(z[j], fpi_rows, solved.z)
                iterations[fpi_rows] = solved.iterations
                self.last_solves[j] = solved
            if once_rows.numel():
                z[j] = _scatter_rows(z[j], once_rows, layer.apply_once(z[j][once_rows], inp[once_rows]))
            downstream |= choice == j + 1
        return PathState(state.u, z), iterations

    def run_paths(self, x: Tensor, paths: Tensor, *, per_step: bool = False, start: PathState | None = None) -> tuple[Tensor, Tensor]:
        """Logits after following each row's action path. ``paths`` is (B, T) of 0..L, 0-padded.

        This is how a fixed path (Model 0-3) or an agent's recorded path is replayed with autograd
        for training. Returns logits and the total FPI iterations of each row, or with
        ``per_step`` the iterations of every step, (B, T), as :meth:`path_flops` takes them.
        ``start``: ``straightforward(x)`` when the caller has it already (a training step that
        also trains the plain path computes it once); the steps leave it intact under autograd.
        """
        state = self.straightforward(x) if start is None else start
        step_iterations = torch.zeros(paths.shape, dtype=torch.long, device=x.device)
        for t in range(paths.shape[1]):
            if not bool((paths[:, t] > 0).any()):
                continue
            state, step_iterations[:, t] = self.fpi_step(state, paths[:, t])
        return self.readout(state), step_iterations if per_step else step_iterations.sum(dim=1)

    def fpi_step_flops(self, layer: Tensor, iterations: Tensor) -> Tensor:
        """FLOPs of "FPI on layer ``layer`` (0-based)" taking ``iterations``: the solve's setup, its
        iterations, the solver's own work beyond them (0 for plain iteration, see
        :meth:`FPILayer.solver_overhead_flops`), then re-applying the layers above once and the
        head. float64, shaped like ``iterations``. The single cost model used by the environment,
        evaluation and baselines."""
        dev = iterations.device
        return (
            self.layer_setup_flops.to(dev)[layer]
            + iterations.double() * self.layer_iteration_flops.to(dev)[layer]
            + self.layer_solver_flops.to(dev)[layer, iterations]
            + self.reprop_flops().to(dev)[layer]
        )

    def path_flops(self, paths: Tensor, iterations_per_step: Tensor) -> Tensor:
        """FLOPs each row spent on its FPI steps (excluding the straightforward pass).

        ``paths`` and ``iterations_per_step`` are (B, T); see :meth:`fpi_step_flops`.
        """
        step = self.fpi_step_flops((paths - 1).clamp_min(0), iterations_per_step)
        return torch.where(paths > 0, step, torch.zeros_like(step)).sum(dim=1)

    def reprop_flops(self) -> Tensor:
        """For each layer i: FLOPs of re-applying layers i+1..L once and the head, float64 (L,)."""
        after = torch.flip(torch.cumsum(torch.flip(self.layer_flops, [0]), 0), [0]) - self.layer_flops
        return after + self.head_flops

    def fixed_point_residuals(self, state: PathState) -> Tensor:
        """Each layer's relative residual ``||f(z_i, u_i) - z_i|| / ||f(z_i, u_i)||`` at its current
        state, (B, L), detached: how far the layer is from its fixed point for its current input. It
        costs one application of every layer (:attr:`residual_probe_flops`)."""
        residuals = []
        for j, (layer, z) in enumerate(zip(self.layers, state.z)):
            inp = state.u if j == 0 else state.z[j - 1]
            f = layer.apply_once(z, inp).detach().flatten(1)
            step = torch.linalg.vector_norm(f - z.detach().flatten(1), dim=1)
            residuals.append(step / torch.linalg.vector_norm(f, dim=1).clamp_min(1e-12))
        return torch.stack(residuals, dim=1)

    @property
    def residual_probe_flops(self) -> float:
        """FLOPs of :meth:`fixed_point_residuals` for one sample: one application of every layer."""
        return float(self.layer_flops.sum())

    # ---- observation features ---------------------------------------------------------------
    def layer_summaries(self, state: PathState) -> Tensor:
        """Pooled activations of every layer, (B, L * summary_bins), detached.

        A block may define ``summarize(z) -> (B, F)`` (e.g. per-channel means of a feature map);
        otherwise the flattened state is used. Either is average-pooled to ``summary_bins``.
        """
        pooled = []
        for layer, z in zip(self.layers, state.z):
            summarize = getattr(layer.block, "summarize", None)
            feats = summarize(z.detach()) if callable(summarize) else z.detach().flatten(1)
            pooled.append(F.adaptive_avg_pool1d(feats.unsqueeze(1), self.summary_bins).squeeze(1))
        return torch.cat(pooled, dim=1)


def assemble_network(
    stem: nn.Module, blocks: list[nn.Module], head: nn.Module, *, solver: SolverSettings, default_max_iter: int = 30, **sizes: int
) -> FPINetwork:
    """An :class:`FPINetwork` of ``blocks``, each wrapped in an FPI layer solved as ``solver`` says.
    ``sizes`` are the network's ``stem_flops``, ``head_flops`` and ``summary_bins``."""
    return FPINetwork(stem, [solver.layer(b, default_max_iter) for b in blocks], head, **sizes)


def build_mlp_fpi_network(
    in_features: int,
    num_classes: int,
    *,
    hidden: int = 64,
    num_layers: int = 3,
    contraction: float = 0.9,
    solver: SolverSettings = ACCELERATED_PLAIN_TRAINING,
    summary_bins: int = 16,
) -> FPINetwork:
    """The default main model for flat inputs (the bundled digits): linear stem, L contractive
    tanh FPI layers, linear head."""
    return assemble_network(
        nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU()),
        [ContractiveTanhBlock(hidden, hidden, contraction=contraction) for _ in range(num_layers)],
        nn.Linear(hidden, num_classes),
        solver=solver,
        stem_flops=2 * in_features * hidden + 2 * hidden,
        head_flops=2 * hidden * num_classes + num_classes,
        summary_bins=summary_bins,
    )
