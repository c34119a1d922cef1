"""Fixed-point-iteration (FPI) layers: the solver, the gradients and the layer as separate pieces.

The layout follows torchdeq (solver / gradient / layer), but the solver and the adjoint are
written here rather than imported, because DynaLay needs one thing torchdeq's
``fixed_point_iter`` does not do: *per-row* early exit. torchdeq iterates the whole batch until
the worst row meets ``tol`` and only masks the bookkeeping, so a converged row keeps being
computed. Here each row stops being computed the iteration it converges: the active rows are
compacted and only they are passed to the block again. The adjoint solve of the implicit
gradient skips converged rows the same way.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

GradMode = Literal["implicit", "unrolled", "phantom", "exact"]
GRAD_MODES: tuple[str, ...] = ("implicit", "unrolled", "phantom", "exact")

_EPS = 1e-12


class FPIResult(NamedTuple):
    """Output of a fixed-point solve, with per-row convergence statistics (torchdeq-style)."""

    z: Tensor
    """The (approximate) fixed point, shape (B, ...). Always finite."""
    iterations: Tensor
    """Block applications spent on each row, int64 (B,)."""
    residual: Tensor
    """Relative residual ||f(z)-z|| / ||f(z)|| of each row at its last iteration, (B,)."""
    converged: Tensor
    """True where the row met ``tol`` before ``max_iter`` (and never went non-finite), bool (B,)."""


SolverName = Literal["picard", "anderson"]
SOLVERS: tuple[str, ...] = ("picard", "anderson")


class Picard:
    """Plain fixed-point iteration: the next iterate is f(z). No work beyond the function evaluations."""

    name = "picard"
    uses_history = False

    def start(self, z0: Tensor, *, differentiable: bool) -> None:
        pass

    def keep(self, index: Tensor) -> None:
        pass

    def release(self) -> None:
        pass

    def next_iterate(self, z: Tensor, fz: Tensor, g: Tensor, k: int) -> Tensor:
        return fz

    def overhead_flops(self, iterations: Tensor, state_numel: int) -> Tensor:
        return torch.zeros_like(iterations, dtype=torch.float64)


class Anderson:
    """Anderson acceleration (type II, Walker & Ni 2011; the form torchdeq and the DEQ tutorial use):
    the next iterate mixes the last ``memory`` values of f with the weights alpha (sum 1) that
    minimise the norm of the same mix of residuals g = f(z) - z.

    Written for per-row exit: the history is held per row in ring buffers that are compacted with
    the active rows, and the Gram matrix G G^T is updated one row per iteration (2 n d FLOPs)
    instead of recomputed (2 n^2 d), because every FLOP the solver spends is charged to the agent.
    torchdeq's ``anderson_solver`` cannot be reused here: it allocates its history for the whole
    batch, iterates every row until the worst one converges and recomputes the Gram matrix in
    full each iteration.

    ``regularization`` is relative to the mean of the Gram matrix's diagonal, so it stays
    meaningful as the residuals shrink by orders of magnitude near convergence (an absolute 1e-4
    would dominate a 64-wide state's Gram matrix at a relative residual of 1e-5 and turn the mix
    into a plain average of old iterates).
    """

    name = "anderson"
    uses_history = True

    def __init__(self, memory: int = 5, regularization: float = 1e-4, start: int = 1) -> None:
        if memory < 2:
            raise ValueError(f"Anderson memory must be >= 2, got {memory}")
        if not regularization > 0:
            raise ValueError(f"Anderson regularization must be > 0, got {regularization}")
        if start < 1:
            raise ValueError(f"Anderson start must be >= 1, got {start}")
        self.memory = memory
        self.regularization = regularization
        self.start_iteration = start
        """The first iteration that enters the history (the first mix follows it); the iterations
        before it are plain, ``z <- f(z)``, with none of the history's work. 1: Anderson from the
        first iteration."""

    def start(self, z0: Tensor, *, differentiable: bool) -> None:
        b, d, m = z0.shape[0], z0[0].numel(), self.memory
        self._differentiable = differentiable
        self._f = z0.new_zeros(b, m, d)
        self._g = z0.new_zeros(b, m, d)
        self._gram = z0.new_zeros(b, m, m)

    def keep(self, index: Tensor) -> None:
        self._f, self._g, self._gram = self._f[index], self._g[index], self._gram[index]

    def release(self) -> None:
        """Forget the last solve's history (:meth:`start` allocates the next one's)."""
        self._f = self._g = self._gram = None

    def next_iterate(self, z: Tensor, fz: Tensor, g: Tensor, k: int) -> Tensor:
        """Push f(z_k) and g_k = f(z_k) - z_k (flattened, (B, d)) and return z_{k+1}; before
        :attr:`start_iteration`, return f(z_k) and keep nothing."""
        if k < self.start_iteration:
            return fz
        k = k - self.start_iteration + 1
        slot, n = (k - 1) % self.memory, min(k, self.memory)
        f_hist, g_hist, gram = self._f, self._g, self._gram
        if self._differentiable:  # in-place writes on tensors autograd saved would corrupt the graph
            f_hist, g_hist, gram = f_hist.clone(), g_hist.clone(), gram.clone()
        f_hist[:, slot] = fz.flatten(1)
        g_hist[:, slot] = g
        row = torch.bmm(g_hist[:, :n], g.unsqueeze(2)).squeeze(2)
        gram[:, slot, :n] = row
        gram[:, :n, slot] = row
        self._f, self._g, self._gram = f_hist, g_hist, gram
        if n == 1:
            return fz
        a = gram[:, :n, :n]
        scale = torch.diagonal(a, dim1=1, dim2=2).mean(dim=1).clamp_min(_EPS * _EPS) * self.regularization
        a = a + scale.view(-1, 1, 1) * torch.eye(n, dtype=a.dtype, device=a.device)
        # solve_ex: a singular or non-finite system gives non-finite weights for that row instead of
        # an exception for the batch; the next evaluation then flags the row as non-finite.
        alpha = torch.linalg.solve_ex(a, torch.ones_like(a[:, :, :1]))[0]
        alpha = alpha / alpha.sum(dim=1, keepdim=True)
        return torch.bmm(alpha.transpose(1, 2), f_hist[:, :n]).view_as(fz)

    def overhead_flops(self, iterations: Tensor, state_numel: int) -> Tensor:
        """FLOPs beyond the function evaluations of a row that took ``iterations`` evaluations: after
        every evaluation but the last, from :attr:`start_iteration` on, one Gram row (2 n d), and
        from the second of those on, the regularised n x n solve (n^3 + 3 n^2) and the mix of n
        stored values (2 n d)."""
        iterations = (iterations - (self.start_iteration - 1)).clamp(min=0)
        k_max = int(iterations.max()) if iterations.numel() else 0
        j = torch.arange(1, max(k_max, 1), dtype=torch.float64, device=iterations.device)
        n = j.clamp(max=self.memory)
        per = 2 * n * state_numel + torch.where(j >= 2, n**3 + 3 * n**2 + 2 * n * state_numel, 0.0)
        cumulative = torch.cat([torch.zeros(2, dtype=torch.float64, device=iterations.device), per.cumsum(0)])
        return cumulative[iterations.clamp(min=0)]


def make_solver(name: str, **options: Any) -> "Picard | Anderson":
    """A fresh solver by name: ``"picard"`` or ``"anderson"`` (options: ``memory``,
    ``regularization``, ``start``)."""
    if name == "picard":
        if options:
            raise ValueError(f"the picard solver takes no options, got {sorted(options)}")
        return Picard()
    if name == "anderson":
        return Anderson(**options)
    raise ValueError(f"solver must be one of {SOLVERS}, got {name!r}")


class FixedPointProblem(NamedTuple):
    """One fixed-point problem ``z = fn(z, *row_args)`` for :func:`solve_together`."""

    fn: Callable[..., Tensor]
    z0: Tensor
    row_args: tuple[Tensor, ...] = ()
    tol: float | Tensor = 1e-3
    """One tolerance, or one per row ((B,) tensor)."""
    max_iter: int = 30
    solver: "Picard | Anderson | None" = None


def _release(solver: Any) -> None:
    """Drop what a solver keeps of a finished solve (Anderson's history), so that a solver object
    reused across solves, as :class:`FPILayer` does, holds no tensor (or graph) of an old one."""
    release = getattr(solver, "release", None)
    if callable(release):
        release()


class _ActiveSolve:
    """The rows of one problem still iterating, with what a row needs when it stops."""

    def __init__(self, problem: FixedPointProblem, differentiable: bool) -> None:
        z0, batch = problem.z0, problem.z0.shape[0]
        if problem.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {problem.max_iter}")
        self.row_tol = isinstance(problem.tol, Tensor)
        if self.row_tol and problem.tol.shape != (batch,):
            raise ValueError(f"a per-row tol must have shape ({batch},), got {tuple(problem.tol.shape)}")
        self.fn, self.args, self.tol, self.max_iter = problem.fn, problem.row_args, problem.tol, problem.max_iter
        self.solver = problem.solver if problem.solver is not None else Picard()
        device = z0.device
        self.out = z0.clone()
        self.iterations = torch.zeros(batch, dtype=torch.long, device=device)
        self.residual = torch.zeros(batch, dtype=z0.dtype, device=device)
        self.converged = torch.zeros(batch, dtype=torch.bool, device=device)
        self.rows = torch.arange(batch, device=device)
        self.z = self.last_f = z0  # last_f: the last finite image, where a row that goes non-finite stops
        self.last_residual = torch.full((batch,), torch.finfo(z0.dtype).max, dtype=z0.dtype, device=device)
        self.size = batch
        if batch:
            self.solver.start(z0, differentiable=differentiable)

    def result(self) -> FPIResult:
        return FPIResult(self.out, self.iterations, self.residual, self.converged)


def fixed_point_solve(
    fn: Callable[..., Tensor],
    z0: Tensor,
    row_args: tuple[Tensor, ...] = (),
    *,
    tol: float | Tensor,
    max_iter: int,
    solver: "Picard | Anderson | None" = None,
) -> FPIResult:
    """Solve ``z = fn(z, *row_args)`` row by row until each row's relative residual is < tol.

    ``solver`` proposes each next iterate from the last one and its image (:class:`Picard`, the
    default: ``z <- fn(z)``; :class:`Anderson`: a mix of the recent images). Every row exits the
    iteration its residual meets ``tol``: ``row_args`` (tensors whose first dimension is the
    batch) and the solver's per-row history are compacted together with ``z`` so that converged
    rows are no longer computed. ``fn`` must treat rows independently (no batch statistics).
    ``tol`` is one tolerance, or one per row ((B,) tensor).

    A row whose image becomes non-finite is frozen at its last finite image and reported as not
    converged, so the result never holds NaN or inf. The function is differentiable when autograd
    is enabled (the unrolled gradient); under ``torch.no_grad`` it writes in place.
    """
    return solve_together([FixedPointProblem(fn, z0, row_args, tol, max_iter, solver)])[0]


def solve_together(problems: Sequence[FixedPointProblem]) -> list[FPIResult]:
    """Solve independent fixed-point problems in lockstep, each as :func:`fixed_point_solve` would.

    Each problem keeps its own map, rows, solver and per-row exit; what they share is the
    convergence test (one comparison over all active rows) and the one host read per iteration
    that tells which rows stop. A layer-selection step solves one problem per layer chosen in it,
    so this is what lets its bookkeeping cost as much as one solve's."""
    differentiable = torch.is_grad_enabled()
    solves = [_ActiveSolve(p, differentiable) for p in problems]
    active = [s for s in solves if s.size]
    k = 0
    while active:
        k += 1
        # This loop is dispatch-bound at the batch sizes the environment runs, so an iteration in
        # which no row stops is each map, its residual, one comparison and one host read.
        f_norms, step_norms, images = [], [], []
        for s in active:
            fz = s.fn(s.z, *s.args)
            flat_f = (fz.detach() if differentiable else fz).flatten(1)
            g = flat_f - (s.z.detach() if differentiable else s.z).flatten(1)
            f_norms.append(torch.linalg.vector_norm(flat_f, dim=1))
            step_norms.append(torch.linalg.vector_norm(g, dim=1))
            images.append((fz, g))
        single = len(active) == 1
        f_norm = f_norms[0] if single else torch.cat(f_norms)
        step_norm = step_norms[0] if single else torch.cat(step_norms)
        rel = step_norm / f_norm.clamp_min(_EPS)
        tols = [s.tol for s in active]
        if single or all(not isinstance(t, Tensor) and t == tols[0] for t in tols):
            tol: float | Tensor = tols[0]
        else:
            tol = torch.cat([t if isinstance(t, Tensor) else rel.new_full((s.rows.numel(),), t) for s, t in zip(active, tols)])
        # A non-finite image makes rel NaN, which fails every comparison: "not rel >= tol" stops
        # the rows that met tol and the rows that went non-finite, told apart below.
        stop = ~(rel >= tol)
        sizes = [s.rows.numel() for s in active]
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        for i, s in enumerate(active):
            if k >= s.max_iter:  # a problem at its cap stops all its rows, flagged by their residual
                stop[offsets[i] : offsets[i + 1]] = True
        # the one host read per iteration: how many rows stop, and then in which problems
        total = int(stop.sum())
        if single or not total:
            counts = [total] if single else [0] * len(active)
        else:
            stopped = stop.nonzero().squeeze(1).tolist()
            counts = [bisect.bisect_left(stopped, b) - bisect.bisect_left(stopped, a) for a, b in zip(offsets, offsets[1:])]
        still = []
        for i, s in enumerate(active):
            fz, g = images[i]
            part = slice(offsets[i], offsets[i + 1])
            s_rel, s_stop = rel[part], stop[part]
            n_stop = counts[i]
            if n_stop:
                stop_idx = s_stop.nonzero().squeeze(1)
                dst = s.rows[stop_idx]
                # A NaN or inf entry makes its norm non-finite, so no elementwise scan is needed;
                # maximum propagates NaN, and unlike a sum it cannot overflow two finite norms into inf.
                bad = ~(torch.maximum(f_norm[part][stop_idx], step_norm[part][stop_idx]) < math.inf)
                # rows that went non-finite stop at their last finite image and residual
                stopped_f = torch.where(bad.view(-1, *([1] * (fz.dim() - 1))), s.last_f[stop_idx], fz[stop_idx])
                stopped_rel = torch.where(bad, s.last_residual[stop_idx], s_rel[stop_idx])
                if differentiable:
                    s.out = s.out.index_copy(0, dst, stopped_f)
                else:
                    s.out.index_copy_(0, dst, stopped_f)
                s.iterations[dst] = k
                s.residual[dst] = stopped_rel.to(s.residual.dtype)
                s.converged[dst] = (stopped_rel < (s.tol[stop_idx] if s.row_tol else s.tol)) & ~bad
                if n_stop == sizes[i]:
                    _release(s.solver)
                    continue
                keep = (~s_stop).nonzero().squeeze(1)
                s.rows = s.rows[keep]
                fz = fz[keep]
                z = s.z
                if s.solver.uses_history:
                    z, g = z[keep], g[keep]
                    s.solver.keep(keep)
                s.args = tuple(a[keep] for a in s.args)
                s.last_residual = s_rel[keep]
                if s.row_tol:
                    s.tol = s.tol[keep]
            else:
                z = s.z
                s.last_residual = s_rel
            s.last_f = fz
            s.z = s.solver.next_iterate(z, fz, g, k)
            still.append(s)
        active = still
    return [s.result() for s in solves]


class _AdjointVJP:
    """g -> J^T g + v for the rows currently active, with J = d block / d z at the fixed point.

    The block is re-applied once per distinct active set (the solver compacts rows as they
    converge) and its graph is reused for every iteration on that set.
    """

    def __init__(self, block: nn.Module) -> None:
        self.block = block
        self._key: tuple[int, int] | None = None
        self._z: Tensor | None = None
        self._f: Tensor | None = None

    def __call__(self, g: Tensor, z_star: Tensor, u: Tensor, v: Tensor) -> Tensor:
        key = (z_star.data_ptr(), z_star.shape[0])
        if key != self._key:
            with torch.enable_grad():
                self._z = z_star.detach().requires_grad_(True)
                self._f = self.block(self._z, u.detach())
            self._key = key
        (vjp,) = torch.autograd.grad(self._f, self._z, g, retain_graph=True)
        return vjp + v


def check_grad_mode(grad: str, block: nn.Module) -> None:
    """Refuse an unknown gradient mode, or ``"exact"`` for a block with no direct fixed point."""
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if grad == "exact" and not callable(getattr(block, "exact_fixed_point", None)):
        raise ValueError(
            f"grad 'exact' needs a block with an exact_fixed_point(u) method and exact_steps (the Jacobi LSTM blocks have "
            f"them); {type(block).__name__} has none: use implicit, phantom or unrolled"
        )


@dataclass(frozen=True)
class SolverSettings:
    """How an FPI layer solves and differentiates: everything :class:`FPILayer` takes besides its
    block. Immutable; change a layer's with ``layer.settings = dataclasses.replace(layer.settings,
    ...)`` or a network's with :meth:`FPINetwork.configure_solver`.

    The fields marked "None" are filled in by :meth:`resolved` when a layer takes the settings, so a
    layer's ``settings`` never hold None."""

    tol: float = 1e-3
    """Relative residual at which a row stops."""
    max_iter: int | None = None
    """Iteration cap per solve; None takes the block's natural cap (30, or T + 1 for the LSTM)."""
    grad: GradMode = "implicit"
    """Gradient through the fixed point (see :class:`FPILayer`)."""
    solver: str = "picard"
    """Forward solver: ``"picard"`` (plain iteration) or ``"anderson"`` (see :class:`Anderson`)."""
    backward_solver: str | None = None
    """Solver of the implicit gradient's adjoint system; None uses ``solver``."""
    training_solver: str | None = None
    """Forward solver of the solves a gradient is taken through (the warm-up's and co-training's
    updates); None uses ``solver``. No policy is charged for their iterations, so they may use the
    solver that is fastest in wall time rather than the one that is cheapest in charged FLOPs."""
    anderson_memory: int = 5
    """Anderson's history length (``memory`` of :class:`Anderson`), for whichever solve uses it."""
    anderson_start: int = 1
    """The iteration at which Anderson starts (``start`` of :class:`Anderson`): the iterations before
    it are plain. 1: from the first."""
    backward_tol: float = 1e-5
    """Tolerance of the implicit gradient's adjoint solve (a floor with ``backward_tol_from_forward``)."""
    backward_max_iter: int | None = None
    """Iteration cap of the adjoint solve; None is twice ``max_iter``."""
    phantom_steps: int = 1
    """Damped steps of the phantom gradient."""
    phantom_tau: float = 1.0
    """Damping of the phantom gradient's steps (1: the Jacobian-free gradient)."""
    backward_tol_from_forward: bool = True
    """Solve each row's adjoint only as far as its forward residual (see :meth:`FPILayer._adjoint_tol`)."""

    def __post_init__(self) -> None:
        if self.grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {self.grad!r}")
        if not (self.tol > 0 and self.backward_tol > 0):
            raise ValueError("tol and backward_tol must be positive")
        if (self.max_iter is not None and self.max_iter < 1) or self.phantom_steps < 1:
            raise ValueError("max_iter and phantom_steps must be >= 1")
        self.make_solvers()  # an unknown name or bad options are refused now, not at the first solve

    def resolved(self, default_max_iter: int = 30) -> "SolverSettings":
        """These settings with every None filled in: ``max_iter`` (``default_max_iter``),
        ``backward_max_iter`` (twice ``max_iter``) and ``backward_solver`` (``solver``)."""
        max_iter = self.max_iter if self.max_iter is not None else default_max_iter
        return replace(
            self,
            max_iter=max_iter,
            backward_max_iter=self.backward_max_iter if self.backward_max_iter is not None else 2 * max_iter,
            backward_solver=self.backward_solver if self.backward_solver is not None else self.solver,
        )

    def make_solver(self, name: str) -> "Picard | Anderson":
        """A solver ``name`` with these settings' options (Anderson's memory and start)."""
        return make_solver(name, memory=self.anderson_memory, start=self.anderson_start) if name == "anderson" else make_solver(name)

    def make_solvers(self) -> "tuple[Picard | Anderson, Picard | Anderson, Picard | Anderson]":
        """The (forward, adjoint, training forward) solver objects these settings name."""
        return (
            self.make_solver(self.solver),
            self.make_solver(self.backward_solver or self.solver),
            self.make_solver(self.training_solver or self.solver),
        )

    def layer(self, block: nn.Module, default_max_iter: int = 30) -> "FPILayer":
        """An :class:`FPILayer` of ``block`` with these settings, ``max_iter`` None taking
        ``default_max_iter`` (the block's natural cap)."""
        return FPILayer(block, self.resolved(default_max_iter))


def _setting(name: str) -> property:
    """A layer attribute that reads (and, by replacing the settings, writes) one of its settings."""

    def get(self: "FPILayer") -> Any:
        return getattr(self.settings, name)

    def set(self: "FPILayer", value: Any) -> None:
        self.settings = replace(self.settings, **{name: value})

    return property(get, set, doc=f"``settings.{name}`` (assigning it replaces the layer's settings).")


class FPILayer(nn.Module):
    """Model-agnostic FPI layer: wraps any block ``f(z, u)`` (state z, input u).

    ``forward(u, z0)`` iterates ``z <- f(z, u)`` from ``z0`` to the fixed point (per row, rows stop
    when converged) and returns an :class:`FPIResult`. ``apply_once(z, u)`` is the layer's
    straightforward mode: a single application.

    How it solves and differentiates is one :class:`SolverSettings` (``settings``, default
    ``SolverSettings()``: plain iteration to 1e-3 in at most 30 iterations, implicit gradient). The
    solver objects are built when settings are assigned and reused by every solve until the next
    assignment; ``layer.tol``, ``layer.solver`` (the name), ... read the settings, and assigning
    one of them replaces the settings the same way.

    Gradients (``settings.grad``):
      * ``"implicit"`` (default): implicit differentiation. The forward solve runs without a graph;
        backward solves the adjoint fixed point ``g = J^T g + dL/dz*`` by iteration with
        vector-Jacobian products (paper Algorithm 1), never forming J. Memory is independent of the
        number of forward iterations.
      * ``"unrolled"``: autograd through every iteration (exact for the computed iterate, memory
        grows with iterations). The reference the others are compared with.
      * ``"phantom"``: ``phantom_steps`` damped steps ``z <- (1-tau) z + tau f(z, u)`` from the
        detached fixed point, differentiated by autograd (one step with tau=1 is the
        Jacobian-free gradient).
      * ``"exact"``: for blocks whose fixed point has a cheaper direct form
        (``exact_fixed_point(u)``: the Jacobi LSTMs' is the sequential LSTM scan), a solve that
        needs a gradient computes that form with autograd instead of iterating. The gradient is the
        implicit one at the exact fixed point; solves without autograd (the environment's
        rollouts, whose compute is charged) still iterate with per-row exit.

    The block must treat rows independently, and should be contractive in z (e.g.
    :class:`ContractiveTanhBlock`); a non-contractive block stops at ``max_iter`` with the rows
    flagged as not converged.
    """

    def __init__(self, block: nn.Module, settings: SolverSettings = SolverSettings()) -> None:
        super().__init__()
        self.block = block
        self.settings = settings
        self.last_backward_stats: FPIResult | None = None
        """Convergence statistics of the most recent implicit adjoint solve (z left empty)."""

    @property
    def settings(self) -> SolverSettings:
        """How this layer solves and differentiates, every None resolved (see
        :meth:`SolverSettings.resolved`; a ``max_iter`` of None becomes 30). Assigning new settings
        checks them against the block and builds the solvers they name, once: every solve until the
        next assignment reuses them."""
        return self._settings

    @settings.setter
    def settings(self, settings: SolverSettings) -> None:
        settings = settings.resolved()
        check_grad_mode(settings.grad, self.block)
        self._solvers = settings.make_solvers()
        self._settings = settings

    tol = _setting("tol")
    max_iter = _setting("max_iter")
    grad = _setting("grad")
    solver = _setting("solver")
    """The forward solver's name (the object is :attr:`forward_solver`)."""
    backward_solver = _setting("backward_solver")
    training_solver = _setting("training_solver")
    anderson_memory = _setting("anderson_memory")
    anderson_start = _setting("anderson_start")
    backward_tol = _setting("backward_tol")
    backward_max_iter = _setting("backward_max_iter")
    phantom_steps = _setting("phantom_steps")
    phantom_tau = _setting("phantom_tau")
    backward_tol_from_forward = _setting("backward_tol_from_forward")

    @property
    def forward_solver(self) -> "Picard | Anderson":
        """The forward solve's solver object, built when the settings were last assigned."""
        return self._solvers[0]

    def solver_for(self, gradient: bool) -> "Picard | Anderson":
        """The forward solver of a solve: the training solver when a gradient will be taken through it."""
        return self._solvers[2] if gradient else self._solvers[0]

    @property
    def adjoint_solver(self) -> "Picard | Anderson":
        """The implicit gradient's adjoint solver object, built when the settings were last assigned."""
        return self._solvers[1]

    def solver_overhead_flops(self, iterations: Tensor, state_numel: int) -> Tensor:
        """FLOPs the forward solver spends beyond its function evaluations, for rows that took
        ``iterations`` evaluations on a state of ``state_numel`` values (0 for plain iteration)."""
        return self.forward_solver.overhead_flops(iterations, state_numel)

    def initial_state(self, u: Tensor) -> Tensor:
        """The state a layer starts from before it is applied: the block's, or zeros like u."""
        init = getattr(self.block, "initial_state", None)
        return init(u) if callable(init) else torch.zeros_like(u)

    def apply_once(self, z: Tensor, u: Tensor) -> Tensor:
        """Straightforward mode: one application of the block."""
        return self.block(z, u)

    def forward(self, u: Tensor, z0: Tensor | None = None) -> FPIResult:
        if self.solves_exactly(u):
            return self.exact_solve(u)
        if z0 is None:
            z0 = self.initial_state(u)
        needs_graph = self.needs_graph(u)
        if needs_graph and self.grad == "unrolled":
            # The cache holds one graph-attached copy of parametrized weights (e.g. spectral norm)
            # for the whole unrolled solve instead of recomputing them each iteration.
            with parametrize.cached():
                step, row_args = self._prepare(u)
                return fixed_point_solve(step, z0, row_args, tol=self.tol, max_iter=self.max_iter, solver=self.solver_for(True))
        # A cache entered under no_grad holds graph-free weights, so it must not outlive the solve.
        with torch.no_grad(), parametrize.cached():
            solved = solve_together([self.problem(u.detach(), z0.detach(), for_gradient=needs_graph)])[0]
        return self.differentiate(u, solved)

    def needs_graph(self, u: Tensor) -> bool:
        return torch.is_grad_enabled() and (u.requires_grad or any(p.requires_grad for p in self.parameters()))

    def solves_exactly(self, u: Tensor) -> bool:
        """True when this solve takes the block's direct form (``grad="exact"`` and autograd on)."""
        return self.grad == "exact" and self.needs_graph(u)

    def exact_solve(self, u: Tensor) -> FPIResult:
        """The block's exact fixed point for input ``u``, with autograd. Its statistics describe the
        direct form: each row's steps (the block's ``exact_steps``), zero residual, converged."""
        z = self.block.exact_fixed_point(u)
        rows = u.shape[0]
        steps = torch.full((rows,), int(self.block.exact_steps), dtype=torch.long, device=u.device)
        return FPIResult(z, steps, torch.zeros(rows, device=u.device, dtype=z.dtype), torch.ones(rows, dtype=torch.bool, device=u.device))

    @property
    def solves_without_graph(self) -> bool:
        """True when the forward solve runs without autograd whatever the mode (every gradient but
        the unrolled one), so that it can be shared with other layers' solves."""
        return self.grad != "unrolled"

    def differentiate(self, u: Tensor, solved: FPIResult) -> FPIResult:
        """Attach this layer's gradient (``grad``: implicit or phantom) to a graph-free solve for
        input ``u``; the solve as it is when autograd is off or nothing here needs a gradient."""
        if not self.needs_graph(u):
            return solved
        if not self.solves_without_graph:
            raise ValueError("the unrolled gradient differentiates the solve itself: call the layer instead")
        z_star = solved.z
        if self.grad == "exact":
            return self.exact_solve(u)
        if self.grad == "phantom":
            z = z_star
            for _ in range(self.phantom_steps):
                z = (1 - self.phantom_tau) * z + self.phantom_tau * self.block(z, u)
            return solved._replace(z=z)
        # implicit: one application re-attaches the graph to u and the parameters; the hook
        # replaces the incoming gradient by the adjoint solution (I - J^T)^{-1} grad.
        z = self.block(z_star, u)
        z.register_hook(self._adjoint_hook(z_star, u.detach(), z.detach(), solved.residual))
        return solved._replace(z=z)

    def problem(self, u: Tensor, z0: Tensor, *, for_gradient: bool = False) -> FixedPointProblem:
        """The graph-free solve of this layer from ``z0`` for input ``u``, for :func:`solve_together`
        (the network solves every layer chosen in a step at once). Call it under ``torch.no_grad``;
        ``for_gradient``: a gradient will be attached to it (:meth:`differentiate`), so it takes the
        training solver."""
        step, row_args = self._prepare(u)
        return FixedPointProblem(step, z0, row_args, self.tol, self.max_iter, self.solver_for(for_gradient))

    def _prepare(self, u: Tensor) -> tuple[Callable[..., Tensor], tuple[Tensor, ...]]:
        """The iteration map and its per-row arguments. A block may define ``prepare(u)`` to hoist
        work that does not change across iterations (e.g. the input injection); the default
        applies the block to (z, u) each time."""
        prepare = getattr(self.block, "prepare", None)
        if callable(prepare):
            return prepare(u)
        return self.block, (u,)

    def _adjoint_tol(self, forward_residual: Tensor) -> float | Tensor:
        """``backward_tol``, or with ``backward_tol_from_forward`` each row's forward residual
        (never tighter than ``backward_tol``, never looser than 1e-3): a gradient taken at a point
        that is a fixed point only to r gains nothing from an adjoint solved far below r."""
        if not self.backward_tol_from_forward:
            return self.backward_tol
        return forward_residual.detach().clamp(min=self.backward_tol, max=max(self.backward_tol, 1e-3))

    def _adjoint_hook(self, z_star: Tensor, u: Tensor, f_star: Tensor, forward_residual: Tensor) -> Callable[[Tensor], Tensor]:
        tol = self._adjoint_tol(forward_residual)

        def hook(grad: Tensor) -> Tensor:
            grad = grad.detach()
            with torch.no_grad(), parametrize.cached():
                adjoint_prepare = getattr(self.block, "adjoint_prepare", None)
                if callable(adjoint_prepare):
                    # The block knows its Jacobian's structure: each VJP is a few tensor ops with
                    # per-row factors computed once, instead of an autograd pass over a graph
                    # that must be rebuilt whenever the active rows are compacted.
                    vjp, row_args = adjoint_prepare(z_star, u, f_star)
                    solved = fixed_point_solve(
                        lambda g, *a: vjp(g, *a[:-1]) + a[-1],
                        grad,
                        (*row_args, grad),
                        tol=tol,
                        max_iter=self.backward_max_iter,
                        solver=self.adjoint_solver,
                    )
                else:
                    solved = fixed_point_solve(
                        _AdjointVJP(self.block),
                        grad,
                        (z_star, u, grad),
                        tol=tol,
                        max_iter=self.backward_max_iter,
                        solver=self.adjoint_solver,
                    )
            self.last_backward_stats = solved._replace(z=solved.z.new_empty(0))
            return solved.z

        return hook


ACCELERATED = SolverSettings(solver="anderson")
"""The default of the mlp and cnn main models: on them Anderson acceleration gives the same accuracy
for less charged compute than plain iteration at tol 1e-3 (benchmarks/README.md, 'FPI solvers'). The
Jacobi LSTMs keep plain iteration, which reaches their exact fixed point in at most T + 1 steps."""

ACCELERATED_PLAIN_TRAINING = SolverSettings(solver="anderson", training_solver="picard", anderson_start=4)
"""The mlp's default: Anderson where compute is charged (rollouts, evaluation), plain iteration in
the solves that train. On its 64-wide state an Anderson iteration is some 25 small operations, which
on a CPU cost more wall time than the iterations they save: a co-training update takes 20-30 % less
time with plain iteration (benchmarks/README.md, "Training throughput"). For the same reason the
charged solves iterate plainly for three iterations before Anderson starts: far from the fixed
point its mixes save little of what they cost (the digits job's solves, 42-44 % of its training
time, became 35-37 %, its accuracy and compute within the seeds' spread; same section)."""


class ContractiveTanhBlock(nn.Module):
    """f(z, u) = tanh(W z + U u + b) with ||W||_2 <= contraction < 1.

    tanh is 1-Lipschitz, so f is a contraction in z and the iteration converges (Banach). W is
    spectrally normalised (torch's ``spectral_norm`` parametrization, power iteration) and scaled.
    Applied once from z = 0 it is a plain dense layer tanh(U u + b): the straightforward mode.
    """

    def __init__(self, dim: int, input_dim: int, *, contraction: float = 0.9) -> None:
        super().__init__()
        if not 0 < contraction < 1:
            raise ValueError(f"contraction must be in (0, 1), got {contraction}")
        self.dim = dim
        self.input_dim = input_dim
        self.contraction = contraction
        self.recurrent = nn.utils.parametrizations.spectral_norm(nn.Linear(dim, dim, bias=False))
        self.inject = nn.Linear(input_dim, dim)

    @property
    def state_numel(self) -> int:
        return self.dim

    def initial_state(self, u: Tensor) -> Tensor:
        return u.new_zeros(u.shape[0], self.dim)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        return torch.tanh(self.contraction * self.recurrent(z) + self.inject(u))

    def prepare(self, u: Tensor) -> tuple[Callable[[Tensor, Tensor], Tensor], tuple[Tensor]]:
        """Iteration map for a solve: U u + b is the same in every iteration, so it is computed
        once, and the scaled recurrent weight is fetched once."""
        weight = self.contraction * self.recurrent.weight
        injection = self.inject(u)

        def step(z: Tensor, inj: Tensor) -> Tensor:
            return torch.tanh(torch.addmm(inj, z, weight.t()))

        return step, (injection,)

    def adjoint_prepare(self, z_star: Tensor, u: Tensor, f_star: Tensor) -> tuple[Callable[..., Tensor], tuple[Tensor]]:
        """Row-wise J^T g at the fixed point, for the implicit adjoint solve. With f = tanh(a),
        J = diag(1 - f^2) c W, so J^T g = ((1 - f^2) * g) (c W) row by row; ``f_star`` is
        f(z_star, u), which the forward pass already computed."""
        weight = (self.contraction * self.recurrent.weight).detach()
        slope = 1 - f_star * f_star

        def vjp(g: Tensor, slope_rows: Tensor) -> Tensor:
            return (g * slope_rows) @ weight

        return vjp, (slope,)

    def flops_per_sample(self) -> int:
        """One application: multiply-adds counted as 2 FLOPs, plus bias and tanh."""
        return 2 * self.dim * self.dim + 2 * self.input_dim * self.dim + 2 * self.dim

    def fpi_flops(self) -> tuple[int, int]:
        """(setup, per iteration) of a solve through :meth:`prepare`: U u is computed once, then
        each iteration is W z, the add and tanh. Setup + one iteration = one application."""
        return 2 * self.input_dim * self.dim, 2 * self.dim * self.dim + 2 * self.dim
