import torch
from conftest import copy_state

from main_models import FPINetwork, MainModelTrainer, build_main_model, build_mlp_fpi_network, load_digits


def _net(seed=0) -> FPINetwork:
    torch.manual_seed(seed)
    return build_main_model(load_digits()).eval()


def test_digits_load_without_download_with_fixed_split():
    a, b = load_digits(seed=0), load_digits(seed=0)
    assert a.x_train.shape == (1438, 64) and a.x_test.shape == (359, 64)
    assert torch.equal(a.y_test, b.y_test)
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1
    assert set(a.y_train.tolist()) == set(range(10))


def test_fpi_step_leaves_nop_rows_untouched_and_uncomputed():
    net = _net()
    x = load_digits().x_test[:6]
    with torch.no_grad():
        state = net.straightforward(x)
        seen = []
        hooks = [layer.block.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0])) for layer in net.layers]
        choice = torch.tensor([0, 1, 0, 2, 3, 0])
        new, iters = net.fpi_step(copy_state(state), choice)
        for h in hooks:
            h.remove()
    for z_old, z_new in zip(state.z, new.z):
        torch.testing.assert_close(z_new[choice == 0], z_old[choice == 0])
    assert (iters[choice == 0] == 0).all() and (iters[choice > 0] > 0).all()
    # no block application ever saw more rows than chose a layer at or above it
    assert max(seen) <= 3


def test_fpi_on_a_layer_reaches_its_fixed_point_and_repropagates_downstream():
    net = _net()
    x = load_digits().x_test[:4]
    with torch.no_grad():
        state = net.straightforward(x)
        new, _ = net.fpi_step(copy_state(state), torch.full((4,), 1))
        layer1 = net.layers[0]
        residual = (layer1.apply_once(new.z[0], new.u) - new.z[0]).norm(dim=1) / new.z[0].norm(dim=1)
        assert (residual < 5 * layer1.tol).all()
        # layer 2 was re-applied once from its previous state with the new layer-1 output
        torch.testing.assert_close(new.z[1], net.layers[1].apply_once(state.z[1], new.z[0]))


def test_run_paths_matches_step_by_step_execution():
    net = _net()
    x = load_digits().x_test[:5]
    paths = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 2, 3], [3, 3, 0], [2, 1, 2]])
    with torch.no_grad():
        logits, iters = net.run_paths(x, paths)
        state = net.straightforward(x)
        total = torch.zeros(5, dtype=torch.long)
        for t in range(3):
            state, it = net.fpi_step(state, paths[:, t])
            total += it
        torch.testing.assert_close(logits, net.readout(state))
    assert torch.equal(iters, total)
    torch.testing.assert_close(net(x)[0], logits[0])  # the all-NOP path is the plain pass


def test_flops_account_for_every_piece():
    net = _net()
    hidden = 64
    assert net.layer_flops.tolist() == [2 * hidden * hidden * 2 + 2 * hidden] * 3
    assert net.straightforward_flops == net.stem_flops + int(net.layer_flops.sum()) + net.head_flops
    reprop = net.reprop_flops().tolist()
    assert reprop[2] == net.head_flops and reprop[0] == 2 * net.layer_flops[0] + net.head_flops
    paths = torch.tensor([[1, 3, 0]])
    flops = net.path_flops(paths, torch.tensor([[10, 6, 0]]))
    setup, per_iter = net.layer_setup_flops, net.layer_iteration_flops
    # the input injection is hoisted out of the loop: setup + one iteration = one application
    assert (setup + per_iter == net.layer_flops).all()
    # and the solver's own work: Anderson's, for the mlp, from its fourth iteration (see tests/test_solvers.py)
    extra = net.layers[0].solver_overhead_flops(torch.tensor([10, 6, 4]), hidden)
    assert (extra[:2] > 0).all() and extra[2] == 0
    expected = setup[0] + 10 * per_iter[0] + reprop[0] + setup[2] + 6 * per_iter[2] + reprop[2] + extra.sum()
    assert float(flops) == float(expected)
    net.configure_solver("picard")
    assert float(net.path_flops(paths, torch.tensor([[10, 6, 0]]))) == float(expected - extra.sum())


def test_summaries_have_one_block_per_layer():
    net = _net()
    with torch.no_grad():
        s = net.layer_summaries(net.straightforward(load_digits().x_test[:3]))
    assert s.shape == (3, net.summary_dim) and net.summary_dim == 3 * net.summary_bins
    assert s.abs().max() <= 1


def test_fpi_step_updates_in_place_only_without_autograd():
    net = _net()
    x = load_digits().x_test[:3]
    state = net.straightforward(x)
    before = [z.detach().clone() for z in state.z]
    net.fpi_step(state, torch.tensor([1, 1, 1]))
    for z, b in zip(state.z, before):
        torch.testing.assert_close(z.detach(), b)


def _spectral_u(net):
    return net.layers[0].block.recurrent.parametrizations.weight[0]._u


def test_rollout_weights_are_computed_once_per_model_change():
    """Rollouts reuse the parametrized (spectral-norm) weights until a parameter changes: no power
    iteration per step, and never a stale weight after an update or a load."""
    torch.manual_seed(0)
    net = build_mlp_fpi_network(8, 3, hidden=16).train()
    x = torch.randn(5, 8)
    with net.rollout_weights():
        first = net.layers[0].block.recurrent.weight
        logits = net(x)
    u_after_fill = _spectral_u(net).clone()
    for _ in range(3):
        with net.rollout_weights():
            assert net.layers[0].block.recurrent.weight is first  # reused, not recomputed
            torch.testing.assert_close(net(x), logits)
    assert torch.equal(_spectral_u(net), u_after_fill)  # no power-iteration step on the rollout path
    # an optimizer step changes the weights: the next rollout computes them afresh
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    opt.zero_grad()
    net(x).sum().backward()
    opt.step()
    with net.rollout_weights():
        fresh = net.layers[0].block.recurrent.weight
        assert fresh is not first and not torch.equal(fresh, first)
        expected = net(x)
    with torch.no_grad():  # the same as computing it without the cache (eval mode: from the vectors it left)
        torch.testing.assert_close(net.eval().layers[0].block.recurrent.weight, fresh)
    net.train()
    # loading weights in place changes them as well
    other = build_mlp_fpi_network(8, 3, hidden=16).train()
    net.load_state_dict(other.state_dict())
    with net.rollout_weights():
        assert not torch.allclose(net(x), expected)
    # outside the context nothing is cached: training sees graph-attached weights
    assert net.layers[0].block.recurrent.weight.requires_grad


def test_rollout_weights_follow_the_train_eval_switch_and_device_moves():
    torch.manual_seed(0)
    net = build_mlp_fpi_network(8, 3, hidden=16).train()
    with net.rollout_weights():
        train_weight = net.layers[0].block.recurrent.weight
    net.eval()
    with net.rollout_weights():
        assert net.layers[0].block.recurrent.weight is not train_weight
    net.to(torch.float64)
    with net.rollout_weights():
        assert net.layers[0].block.recurrent.weight.dtype == torch.float64


def test_a_step_solves_its_chosen_layers_together_exactly_as_one_by_one():
    """Without autograd the layers chosen in a step are solved in lockstep; each row gets exactly
    the state and iteration count that solving the layers one after another gives."""
    net = _net()
    for p in net.parameters():
        p.requires_grad_(False)  # with grad enabled this takes the one-layer-at-a-time path, same maths
    x = load_digits().x_test[:64]
    choice = torch.arange(64) % 4
    with torch.no_grad():
        state = net.straightforward(x)
        together, iters_together = net.fpi_step(copy_state(state), choice)
        solves = net.last_solves
    net.configure_solver(grad="unrolled")  # the one-layer-at-a-time path
    with torch.enable_grad():
        one_by_one, iters_one_by_one = net.fpi_step(copy_state(state), choice)
    assert torch.equal(iters_together, iters_one_by_one) and (iters_together[choice > 0] > 0).all()
    for a, b in zip(together.z, one_by_one.z):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert set(solves) == {0, 1, 2} and all(s.converged.all() for s in solves.values())


def test_gradients_through_the_lockstep_solves_match_the_unrolled_ones():
    """Co-training steps go through the lockstep solve too: each layer attaches its implicit
    gradient to its part of the shared solve."""
    torch.manual_seed(0)
    net = build_mlp_fpi_network(8, 3, hidden=12).double().eval()
    net.configure_solver(tol=1e-12, max_iter=400)
    for layer in net.layers:
        layer.backward_tol, layer.backward_max_iter = 1e-12, 800
    x, y = torch.randn(9, 8, dtype=torch.float64), torch.arange(9) % 3
    paths = torch.tensor([[1, 2, 3], [3, 1, 0], [2, 0, 0]]).repeat(3, 1)

    def grads(mode):
        net.configure_solver(grad=mode)
        net.zero_grad(set_to_none=True)
        logits, _ = net.run_paths(x, paths)
        torch.nn.functional.cross_entropy(logits, y).backward()
        return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])

    torch.testing.assert_close(grads("implicit"), grads("unrolled"), rtol=1e-7, atol=1e-9)


def test_an_update_steps_the_spectral_norm_once_and_trains_through_it():
    """One co-training update computes each spectral-norm weight once, with autograd: one power-iteration
    step whatever the paths (not one per solve and application), and the gradient reaches the weight."""
    torch.manual_seed(0)
    net = build_mlp_fpi_network(8, 3, hidden=16)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    trainer = MainModelTrainer(net, x, y)
    spectral = net.layers[0].block.recurrent.parametrizations.weight
    calls = []
    spectral[0].register_forward_hook(lambda *args: calls.append(1))
    for paths in (torch.tensor([[1, 2, 3]] * 32), torch.tensor([[1, 1, 2, 2, 3, 3]] * 32), torch.zeros(32, 3, dtype=torch.long)):
        before = spectral.original.detach().clone()
        calls.clear()
        trainer.step(torch.arange(32), paths)
        assert len(calls) == 1, paths[0]
        assert not torch.equal(spectral.original, before)  # the optimizer step moved the recurrent weight
