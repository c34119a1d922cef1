import pytest
import torch
from torch import nn

from main_models import ContractiveTanhBlock, FPILayer, SolverSettings, fixed_point_solve


def _flat_grads(block, u):
    return torch.cat([u.grad.flatten()] + [p.grad.flatten() for p in block.parameters()])


def _grads(mode, block, u, **kw):
    block.zero_grad(set_to_none=True)
    u.grad = None
    layer = FPILayer(block, SolverSettings(grad=mode, **kw))
    res = layer(u)
    (res.z.sin() * torch.arange(res.z.numel(), dtype=res.z.dtype).view_as(res.z)).sum().backward()
    return _flat_grads(block, u), res


TIGHT = dict(tol=1e-13, max_iter=1000, backward_tol=1e-13, backward_max_iter=1000)


def _float64_problem():
    torch.manual_seed(0)
    block = ContractiveTanhBlock(12, 7, contraction=0.8).double().eval()
    return block, torch.randn(5, 7, dtype=torch.float64, requires_grad=True)


def test_implicit_gradient_matches_unrolled_in_float64():
    block, u = _float64_problem()
    g_implicit, res = _grads("implicit", block, u, **TIGHT)
    g_unrolled, _ = _grads("unrolled", block, u, **TIGHT)
    assert res.converged.all()
    torch.testing.assert_close(g_implicit, g_unrolled, rtol=1e-9, atol=1e-10)


def test_block_adjoint_matches_the_generic_autograd_adjoint():
    # ContractiveTanhBlock supplies its Jacobian-transpose product; a block without one goes
    # through autograd VJPs. Both must solve the same adjoint system.
    block, u = _float64_problem()
    g_block, _ = _grads("implicit", block, u, **TIGHT)
    block.adjoint_prepare = None
    g_generic, _ = _grads("implicit", block, u, **TIGHT)
    torch.testing.assert_close(g_block, g_generic, rtol=1e-10, atol=1e-12)
    g_unrolled, _ = _grads("unrolled", block, u, **TIGHT)
    torch.testing.assert_close(g_block, g_unrolled, rtol=1e-9, atol=1e-10)


def test_phantom_gradient_points_the_same_way_as_unrolled():
    torch.manual_seed(0)
    block = ContractiveTanhBlock(12, 7, contraction=0.5).double().eval()
    u = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    g_phantom, _ = _grads("phantom", block, u, tol=1e-12, max_iter=500)
    g_unrolled, _ = _grads("unrolled", block, u, tol=1e-12, max_iter=500)
    cos = torch.nn.functional.cosine_similarity(g_phantom, g_unrolled, dim=0)
    assert 0.8 < cos < 1.0 - 1e-6  # an approximation, not the exact gradient


def test_forward_converges_to_tolerance_per_row():
    torch.manual_seed(1)
    block = ContractiveTanhBlock(16, 16, contraction=0.9)
    layer = FPILayer(block, SolverSettings(tol=1e-4, max_iter=200))
    with torch.no_grad():
        res = layer(torch.randn(32, 16))
        assert res.converged.all()
        assert (res.residual < 1e-4).all()
        u = torch.randn(32, 16)
        res = layer(u)
        true_residual = (block(res.z, u) - res.z).norm(dim=1) / block(res.z, u).norm(dim=1)
    # z is the last iterate f(z_prev); one more application moves it by at most ~contraction * tol
    assert (true_residual < 1e-4).all()
    assert (res.iterations > 1).all() and (res.iterations < 200).all()


class _CountingBlock(nn.Module):
    """z <- a * z + u with a per-row contraction a: rows with small a converge first."""

    def __init__(self, rates: torch.Tensor) -> None:
        super().__init__()
        self.rates = rates
        self.rows_seen: list[int] = []

    def forward(self, z, u):
        self.rows_seen.append(z.shape[0])
        return u[:, 1:2] * z + u[:, :1]


def test_converged_rows_are_not_computed_again():
    rates = torch.tensor([0.0, 0.1, 0.5, 0.9])
    u = torch.stack([torch.ones(4), rates], dim=1)
    block = _CountingBlock(rates)
    res = fixed_point_solve(block, torch.zeros(4, 1), (u,), tol=1e-6, max_iter=500)
    assert res.converged.all()
    iters = res.iterations.tolist()
    assert iters[0] < iters[1] < iters[2] < iters[3]
    # the block saw each row exactly as many times as that row's iteration count
    assert sum(block.rows_seen) == sum(iters)
    assert block.rows_seen[-1] == 1
    torch.testing.assert_close(res.z.squeeze(1), 1.0 / (1.0 - rates), rtol=1e-5, atol=1e-5)


class _Expanding(nn.Module):
    def forward(self, z, u):
        return 3.0 * z + u


def test_non_contractive_block_is_flagged_and_finite():
    u = torch.ones(3, 4)
    res = FPILayer(_Expanding(), SolverSettings(tol=1e-6, max_iter=20))(u)
    assert not res.converged.any()
    assert (res.iterations == 20).all()
    assert torch.isfinite(res.z).all() and torch.isfinite(res.residual).all()
    # so large that float32 overflows: the last finite iterate is kept, still flagged
    res = FPILayer(_Expanding(), SolverSettings(tol=1e-6, max_iter=500))(u)
    assert not res.converged.any()
    assert torch.isfinite(res.z).all() and torch.isfinite(res.residual).all()
    assert (res.iterations < 500).all()


def test_implicit_backward_through_non_contractive_block_stays_finite():
    block = nn.Linear(4, 4)
    with torch.no_grad():
        block.weight.copy_(3.0 * torch.eye(4))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = block

        def forward(self, z, u):
            return self.lin(z) + u

    wrap = Wrap()
    u = torch.ones(2, 4, requires_grad=True)
    res = FPILayer(wrap, SolverSettings(tol=1e-6, max_iter=30, backward_max_iter=30))(u)
    res.z.sum().backward()
    assert torch.isfinite(u.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in wrap.parameters())


def test_bad_arguments_are_refused():
    block = ContractiveTanhBlock(4, 4)
    with pytest.raises(ValueError, match="grad must be one of"):
        FPILayer(block, SolverSettings(grad="magic"))
    with pytest.raises(ValueError, match="max_iter"):
        FPILayer(block, SolverSettings(max_iter=0))
    with pytest.raises(ValueError, match="contraction"):
        ContractiveTanhBlock(4, 4, contraction=1.5)
