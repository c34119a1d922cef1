"""FPI solvers: Anderson acceleration under per-row exit, per-row tolerances, the adjoint tolerance
matched to the forward residual, and the cost model that charges what each solver does."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from main_models import (
    Anderson,
    ContractiveTanhBlock,
    FPILayer,
    Picard,
    SolverSettings,
    build_mlp_fpi_network,
    fixed_point_solve,
    make_solver,
)


def _linear_problem(rate: float = 0.99, d: int = 48, batch: int = 6):
    """z = A z + b with A symmetric, eigenvalues spread over [-rate, rate]: Picard needs hundreds of
    iterations, a Krylov-like method far fewer."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(-rate, rate, d, dtype=torch.float64)) @ q.T
    b = torch.randn(batch, d, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - a, b.T).T
    return (lambda z, bb: z @ a.T + bb), b, exact


def test_anderson_reaches_the_same_fixed_point_in_far_fewer_evaluations():
    fn, b, exact = _linear_problem()
    with torch.no_grad():
        picard = fixed_point_solve(fn, torch.zeros_like(b), (b,), tol=1e-11, max_iter=5000, solver=Picard())
        anderson = fixed_point_solve(fn, torch.zeros_like(b), (b,), tol=1e-11, max_iter=5000, solver=Anderson(memory=5))
    assert picard.converged.all() and anderson.converged.all()
    torch.testing.assert_close(anderson.z, exact, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(picard.z, exact, rtol=1e-5, atol=1e-6)
    assert (anderson.iterations * 3 < picard.iterations).all()


def test_a_delayed_anderson_iterates_plainly_then_is_anderson_from_where_it_starts():
    # start s: s - 1 plain iterations keep no history, then Anderson runs as if it had been started
    # at the plain iterate reached, bit for bit; it still reaches the fixed point in far fewer
    # evaluations than plain iteration
    fn, b, exact = _linear_problem()
    s, m = 4, 7
    with torch.no_grad():
        plain = fixed_point_solve(fn, torch.zeros_like(b), (b,), tol=1e-30, max_iter=s - 1, solver=Picard())
        delayed_plain = fixed_point_solve(fn, torch.zeros_like(b), (b,), tol=1e-30, max_iter=s - 1, solver=Anderson(start=s))
        restarted = fixed_point_solve(fn, plain.z, (b,), tol=1e-30, max_iter=m, solver=Anderson())
        delayed = fixed_point_solve(fn, torch.zeros_like(b), (b,), tol=1e-30, max_iter=s - 1 + m, solver=Anderson(start=s))
        picard = fixed_point_solve(fn, torch.zeros_like(b), (b,), tol=1e-11, max_iter=5000, solver=Picard())
        converged = fixed_point_solve(fn, torch.zeros_like(b), (b,), tol=1e-11, max_iter=5000, solver=Anderson(start=s))
    assert torch.equal(delayed_plain.z, plain.z)
    assert torch.equal(delayed.z, restarted.z)
    assert converged.converged.all() and (converged.iterations * 3 < picard.iterations).all()
    torch.testing.assert_close(converged.z, exact, rtol=1e-5, atol=1e-6)


class _CountingLinear(nn.Module):
    """z <- a_row * z + u with a per-row rate: rows with a small rate converge first."""

    def __init__(self) -> None:
        super().__init__()
        self.rows_seen: list[int] = []

    def forward(self, z, u):
        self.rows_seen.append(z.shape[0])
        return u[:, 1:2] * z + u[:, :1]


def test_anderson_keeps_per_row_exit_and_compacts_its_history():
    rates = torch.tensor([0.0, 0.3, 0.6, 0.95], dtype=torch.float64)
    u = torch.stack([torch.ones(4, dtype=torch.float64), rates], dim=1)
    block = _CountingLinear()
    with torch.no_grad():
        res = fixed_point_solve(block, torch.zeros(4, 1, dtype=torch.float64), (u,), tol=1e-9, max_iter=500, solver=Anderson(3))
    assert res.converged.all()
    iters = res.iterations.tolist()
    assert iters[0] < iters[-1]
    assert sum(block.rows_seen) == sum(iters)  # a converged row is never evaluated again
    assert all(a >= b for a, b in zip(block.rows_seen, block.rows_seen[1:]))
    torch.testing.assert_close(res.z.squeeze(1), 1.0 / (1.0 - rates), rtol=1e-7, atol=1e-7)


class _NoFixedPoint(nn.Module):
    """z^2 + 1 = z has no real solution: plain iteration overflows, Anderson wanders."""

    def forward(self, z, u):
        return z * z + u


@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_a_map_without_a_fixed_point_stays_finite_and_flags_every_row(solver):
    res = FPILayer(_NoFixedPoint(), SolverSettings(tol=1e-6, max_iter=400, solver=solver))(torch.ones(3, 4))
    assert not res.converged.any()
    assert torch.isfinite(res.z).all() and torch.isfinite(res.residual).all()


def test_per_row_tolerances_stop_each_row_at_its_own():
    fn, b, _ = _linear_problem(rate=0.9, batch=3)
    tol = torch.tensor([1e-2, 1e-5, 1e-8], dtype=torch.float64)
    with torch.no_grad():
        res = fixed_point_solve(fn, torch.zeros_like(b), (b,), tol=tol, max_iter=2000)
    assert res.converged.all() and (res.residual < tol).all()
    assert res.iterations[0] < res.iterations[1] < res.iterations[2]
    with pytest.raises(ValueError, match="per-row tol"):
        fixed_point_solve(fn, torch.zeros_like(b), (b,), tol=tol[:2], max_iter=10)


def _grads(layer: FPILayer, u: torch.Tensor) -> torch.Tensor:
    layer.zero_grad(set_to_none=True)
    u.grad = None
    res = layer(u)
    (res.z.sin() * torch.arange(res.z.numel(), dtype=res.z.dtype).view_as(res.z)).sum().backward()
    return torch.cat([u.grad.flatten()] + [p.grad.flatten() for p in layer.parameters()])


@pytest.mark.parametrize("adjoint_solver", ["picard", "anderson"])
def test_anderson_solves_give_the_exact_implicit_gradient(adjoint_solver):
    torch.manual_seed(0)
    block = ContractiveTanhBlock(12, 7, contraction=0.8).double().eval()
    u = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    tight = dict(tol=1e-13, max_iter=1000, backward_tol=1e-13, backward_max_iter=1000)
    reference = _grads(FPILayer(block, SolverSettings(grad="unrolled", **tight)), u)
    implicit = _grads(FPILayer(block, SolverSettings(grad="implicit", solver="anderson", backward_solver=adjoint_solver, **tight)), u)
    torch.testing.assert_close(implicit, reference, rtol=1e-8, atol=1e-10)
    # autograd through Anderson's own iterations (history, Gram matrix, small solves)
    unrolled_anderson = _grads(FPILayer(block, SolverSettings(grad="unrolled", solver="anderson", **tight)), u)
    torch.testing.assert_close(unrolled_anderson, reference, rtol=1e-6, atol=1e-8)


def test_adjoint_tolerance_matched_to_the_forward_residual_saves_iterations_not_accuracy():
    torch.manual_seed(0)
    block = ContractiveTanhBlock(64, 64, contraction=0.95).eval()
    u = torch.randn(64, 64, requires_grad=True)
    reference = _grads(FPILayer(block, SolverSettings(grad="unrolled", tol=1e-3, max_iter=30)), u)
    fixed = FPILayer(block, SolverSettings(grad="implicit", tol=1e-3, max_iter=30, backward_tol_from_forward=False))
    matched = FPILayer(block, SolverSettings(grad="implicit", tol=1e-3, max_iter=30))  # the default
    g_fixed, g_matched = _grads(fixed, u), _grads(matched, u)
    assert matched.last_backward_stats.iterations.sum() < fixed.last_backward_stats.iterations.sum()
    cosine = torch.nn.functional.cosine_similarity(g_matched, reference, dim=0)
    assert cosine >= 0.999
    assert torch.nn.functional.cosine_similarity(g_fixed, reference, dim=0) >= 0.999


def test_each_main_model_defaults_to_its_cheaper_solver():
    from main_models import build_main_model, load_dataset

    solvers = {
        name: {layer.solver for layer in build_main_model(load_dataset(name, None, seed=0)).layers}
        for name in ("digits", "parity", "grid-lookup")
    }
    assert solvers == {"digits": {"anderson"}, "parity": {"picard"}, "grid-lookup": {"picard"}}
    # the mlp's rollouts iterate plainly for three iterations before Anderson starts
    assert {layer.anderson_start for layer in build_main_model(load_dataset("digits", None, seed=0)).layers} == {4}


def test_unknown_solvers_and_bad_options_are_refused():
    with pytest.raises(ValueError, match="solver must be one of"):
        FPILayer(ContractiveTanhBlock(4, 4), SolverSettings(solver="broyden-ish"))
    with pytest.raises(ValueError, match="memory must be >= 2"):
        make_solver("anderson", memory=1)
    with pytest.raises(ValueError, match="start must be >= 1"):
        SolverSettings(solver="anderson", anderson_start=0)
    with pytest.raises(ValueError, match="picard solver takes no options"):
        make_solver("picard", memory=3)
    net = build_mlp_fpi_network(8, 3)
    with pytest.raises(ValueError, match="solver must be one of"):
        net.configure_solver("newton")
    assert all(layer.solver == "anderson" for layer in net.layers)  # nothing changed (the mlp default)


@pytest.mark.parametrize("start", [1, 4])
def test_the_cost_model_charges_andersons_own_work(start):
    """What FlopCounterMode counts of Anderson's extra work (its Gram rows and mixes, batched matrix
    products) plus its n x n solves, which it does not count, is what the cost model charges on top
    of the same number of evaluations; a delayed start does none of it in its plain iterations."""
    torch.manual_seed(0)
    net = build_mlp_fpi_network(8, 3, hidden=16).eval()
    x = torch.randn(4, 8)
    paths = torch.tensor([[1]]).expand(4, 1)
    with torch.no_grad(), parametrize.cached():
        net.straightforward(x)
        net.configure_solver("picard", tol=1e-30, max_iter=9)
        _, iters_p = net.run_paths(x, paths, per_step=True)
        with FlopCounterMode(display=False) as counter:
            net.run_paths(x, paths)
        picard_counted = counter.get_total_flops()
        net.configure_solver("anderson", anderson_memory=3, anderson_start=start)
        _, iters_a = net.run_paths(x, paths, per_step=True)
        with FlopCounterMode(display=False) as counter:
            net.run_paths(x, paths)
        anderson_counted = counter.get_total_flops()
    assert torch.equal(iters_p, iters_a) and (iters_a == 9).all()  # an unreachable tol: same evaluations
    charged_extra = float(net.path_flops(paths, iters_a).sum()) - float(Picard().overhead_flops(iters_a, 16).sum())
    net.configure_solver("picard")
    charged_extra -= float(net.path_flops(paths, iters_p).sum())
    # the solves after the second to the eighth evaluation that enter the history (from the start on)
    n = torch.tensor([min(j, 3) for j in range(2, 9 - start + 1)], dtype=torch.float64)
    uncounted_solves = 4 * float((n**3 + 3 * n**2).sum())
    assert charged_extra == pytest.approx(anderson_counted - picard_counted + uncounted_solves)
    assert charged_extra > 0


def test_solves_that_train_take_the_training_solver_and_rollouts_keep_the_charged_one():
    """The mlp solves with Anderson where compute is charged and iterates plainly where a gradient is
    taken (warm-up, co-training): same layer, same weights, the solver follows autograd."""
    torch.manual_seed(0)
    block = ContractiveTanhBlock(16, 16).eval()  # eval: spectral norm's power iteration stays put between solves
    u = torch.randn(5, 16)
    plain, accelerated = (FPILayer(block, SolverSettings(solver=name, grad="phantom")) for name in ("picard", "anderson"))
    mixed = FPILayer(block, SolverSettings(solver="anderson", training_solver="picard", grad="phantom"))
    with torch.no_grad():
        charged = mixed(u)
        assert torch.equal(charged.iterations, accelerated(u).iterations)
        assert torch.equal(charged.z, accelerated(u).z)
    trained, reference = mixed(u), plain(u)  # autograd on, the block's parameters need a gradient
    assert torch.equal(trained.iterations, reference.iterations)
    assert not torch.equal(trained.iterations, charged.iterations)  # plain iteration takes more steps here
    assert torch.allclose(trained.z, reference.z)
    assert trained.z.requires_grad


def test_the_mlp_trains_with_plain_iteration_and_its_rollouts_are_charged_for_anderson():
    torch.manual_seed(0)
    net = build_mlp_fpi_network(8, 3).eval()
    assert {(layer.solver, layer.training_solver) for layer in net.layers} == {("anderson", "picard")}
    x = torch.randn(6, 8)
    choice = torch.tensor([1, 2, 3, 1, 0, 2])
    with torch.no_grad():
        _, charged = net.fpi_step(net.straightforward(x), choice)
    _, trained = net.fpi_step(net.straightforward(x), choice)  # a co-training update's step
    net.configure_solver(training_solver="anderson")
    _, trained_anderson = net.fpi_step(net.straightforward(x), choice)
    assert torch.equal(trained_anderson, charged)
    net.configure_solver(training_solver="picard", solver="picard")
    with torch.no_grad():
        _, plain = net.fpi_step(net.straightforward(x), choice)
    assert torch.equal(trained, plain)
    with pytest.raises(ValueError, match="solver must be one of"):
        net.configure_solver(training_solver="newton")
    assert all(layer.training_solver == "picard" for layer in net.layers)
