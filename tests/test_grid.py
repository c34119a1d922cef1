"""The grid-lookup task and the grid-LSTM main model: generator rules, the model's fixed points,
receptive fields of each path, cost model and model choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import copy_state

from dynalay_env import DynaLayEnv
from main_models import DatasetSplits, build_main_model, load_dataset
from main_models.data.grid_lookup import GRID_KINDS, grid_lookup_label, grid_regions, make_grid_lookup
from main_models.grid import AxisLSTMBlock, build_grid_lstm_fpi_network
from main_models.lstm import sequential_lstm


def _grid(**kw) -> DatasetSplits:
    kw.setdefault("num_train", 400)
    kw.setdefault("num_test", 200)
    return load_dataset("grid-lookup", **kw)


# ---- the generator -----------------------------------------------------------------------------


def test_grid_lookup_is_seeded_and_registered():
    a, b = _grid(seed=1), _grid(seed=1)
    for name in ("x_train", "y_train", "x_test", "y_test", "difficulty_train", "difficulty_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(_grid(seed=2).x_train, a.x_train)
    assert a.input_kind == "grid" and a.input_shape == (6, 6) and a.num_classes == 2
    assert a.meta["vocab_size"] == 8 and a.has_difficulty
    assert int(a.x_train.max()) < a.meta["vocab_size"]
    assert _grid(size=5, mix="0.4,0.2,0.2,0.2").input_shape == (5, 5)


@pytest.mark.parametrize("mix", [(0.7, 0.1, 0.1, 0.1), (0.25, 0.25, 0.25, 0.25), (0.5, 0.0, 0.2, 0.3)])
def test_kinds_follow_the_mix_and_labels_are_balanced_within_each_kind(mix):
    x, y, kinds = make_grid_lookup(1001, (6, 6), np.random.default_rng(0), mix=mix)
    counts = np.bincount(kinds, minlength=4)
    assert counts.sum() == 1001 and np.abs(counts - np.asarray(mix) * 1001).max() < 1
    for k in range(4):
        labels = y[kinds == k]
        assert labels.sum() == counts[k] // 2  # the extra sample of an odd count is a "no"


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("size", [(6, 6), (4, 7), (8, 5)])
def test_window_rule_query_token_and_labels_match_their_definition(size, guard):
    h, w = size
    x, y, kinds = make_grid_lookup(2000, size, np.random.default_rng(1), mix=(0.25, 0.25, 0.25, 0.25), guard=guard)
    reg = grid_regions(size, guard=guard)
    target, queries = 3, [4, 5, 6, 7]
    assert (x[:, h - 1, w - 1] == np.asarray(queries)[kinds]).all()
    assert (x[:, ~reg["window"]] <= target).all()  # background or X outside the window
    in_window = (x[:, reg["neighbours"]] == target).any(axis=1)
    assert not in_window[kinds > 0].any()  # kinds 1-3: the window never holds X
    assert not (x[:, reg["clear"]] == target)[kinds > 0].any()
    for i in range(len(y)):
        assert grid_lookup_label(x[i], kinds[i], guard=guard) == y[i]
    # the plain path's view (the window) is independent of the label for kinds 1-3 ...
    any_x = (x == target).any(axis=(1, 2))
    assert not any_x[(kinds == 3) & (y == 0)].any()  # grid "no": no X anywhere
    # ... and distractors make "any X somewhere" useless for local, row and column queries
    for k in (0, 1, 2):
        no = (kinds == k) & (y == 0)
        assert 0.35 < any_x[no].mean() < 0.65
    # distractors stay out of the queried region: rows above for row queries, columns left for column ones
    row_no = x[(kinds == 1) & (y == 0)]
    assert not (row_no[:, h - 1, :] == target).any()
    col_no = x[(kinds == 2) & (y == 0)]
    assert not (col_no[:, :, w - 1] == target).any()


def test_regions_partition_the_grid():
    reg = grid_regions((6, 6), guard=False)
    assert reg["window"].sum() == 4 and reg["neighbours"].sum() == 3 and reg["outside"].sum() == 32
    assert reg["last_row"].sum() == 4 and reg["last_col"].sum() == 4 and (reg["far"] == reg["outside"]).all()
    assert not (reg["last_row"] & reg["window"]).any() and not (reg["last_col"] & reg["window"]).any()
    with pytest.raises(ValueError, match="at least 3 x 3"):
        grid_regions((2, 5), guard=False)
    assert grid_regions((3, 3), guard=False)["last_row"].sum() == 1


# ---- the model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["row", "col"])
def test_axis_layer_fixed_point_is_the_sequential_lstm_along_its_axis(axis):
    torch.manual_seed(0)
    h, w, f = 4, 5, 6
    block = AxisLSTMBlock(f - 1, 7, (h, w), axis)
    u = torch.cat([torch.randn(3, h, w, f - 1), torch.ones(3, h, w, 1)], dim=-1)
    z = block.initial_state(u)
    steps = w if axis == "row" else h
    with torch.no_grad():
        for _ in range(steps):
            z = block(z, u)
        if axis == "row":
            ref = torch.stack([sequential_lstm(block.lstm, u[:, r]) for r in range(h)], dim=1)
        else:
            ref = torch.stack([sequential_lstm(block.lstm, u[:, :, c]) for c in range(w)], dim=2)
        torch.testing.assert_close(z, ref)
        torch.testing.assert_close(block(z, u), z)  # a fixed point after ``steps`` applications
    assert z.shape == (3, h, w, 2 * 7 + 1) and block.flops_per_sample() > 0
    summary = block.summarize(z)
    assert summary.shape == (3, 14) and summary.abs().max() < 1
    torch.testing.assert_close(summary[:, 7:], z[:, -1, -1, :7])


def test_network_shapes_iterations_and_model_choice():
    splits = _grid(size=5)
    torch.manual_seed(0)
    net = build_main_model(splits).eval()
    assert [type(layer.block).__name__ for layer in net.layers] == ["AxisLSTMBlock"] * 3
    assert [layer.block.axis for layer in net.layers] == ["row", "col", "row"]
    assert all(layer.max_iter == 6 for layer in net.layers)
    assert build_main_model(splits, model="grid-lstm", hidden=8).layers[0].block.hidden == 8
    with pytest.raises(ValueError, match=r"model 'lstm' reads integer token ids \(N, T\) inputs, but dataset 'grid-lookup'"):
        build_main_model(splits, model="lstm")
    x = splits.x_test[:5]
    with torch.no_grad():
        state = net.straightforward(x)
        assert state.u.shape == (5, 5, 5, 17) and (state.u[..., -1] == 1).all()
        assert all(z.shape == (5, 5, 5, 65) for z in state.z)
        new, iters = net.fpi_step(copy_state(state), torch.tensor([0, 1, 2, 3, 1]))
        # every row has the full length: from the plain pass (exact at position 0) a solve takes 5 - 1 + 1
        assert iters.tolist() == [0, 5, 5, 5, 5]
        logits, step_iters = net.run_paths(x, torch.tensor([[1, 2, 3]]).expand(5, 3), per_step=True)
        assert logits.shape == (5, 2) and (step_iters == 5).all()
        assert net.layer_summaries(state).shape == (5, net.summary_dim)
    assert net.stem_flops > 0 and net.head_flops > 0 and (net.layer_flops > 0).all()


def _field(net, x: torch.Tensor, path: list[int]) -> set[tuple[int, int]]:
    """The cells whose token changes the logits of ``path`` (each cell changed on its own)."""
    n, h, w = x.shape
    paths = torch.tensor([path or [0]]).expand(n, max(len(path), 1))
    seen = set()
    with torch.no_grad():
        base = net.run_paths(x, paths)[0]
        for r in range(h):
            for c in range(w):
                y = x.clone()
                y[:, r, c] = (y[:, r, c] + 1) % 3
                if (net.run_paths(y, paths)[0] - base).abs().max() > 1e-7:
                    seen.add((r, c))
    return seen


def test_each_path_sees_exactly_its_region():
    """The structure the task relies on: plain = the window; a row layer = the last two rows (the
    3x3 stem); the column layer = the last two columns; rows and columns in the right order = all.
    An FPI step re-applies the layers above once from their current state, and that sweep reads
    one more cell along the axis: L1 also sees (H-3, W-2..W-1), L2 also (H-2..H-1, W-3)."""
    torch.manual_seed(0)
    h, w = 6, 7
    net = build_grid_lstm_fpi_network(8, (h, w), 2, embed_dim=8, hidden=8).eval()
    x = torch.randint(0, 3, (4, h, w))
    cells = {(r, c) for r in range(h) for c in range(w)}
    rows = lambda *rs: {(r, c) for r in rs for c in range(w)}  # noqa: E731
    cols = lambda *cs: {(r, c) for r in range(h) for c in cs}  # noqa: E731
    window = rows(h - 2, h - 1) & cols(w - 2, w - 1)
    assert _field(net, x, []) == window
    assert _field(net, x, [3]) == rows(h - 2, h - 1)
    assert _field(net, x, [1]) == rows(h - 2, h - 1) | {(h - 3, w - 2), (h - 3, w - 1)}
    assert _field(net, x, [2]) == cols(w - 2, w - 1) | {(h - 2, w - 3), (h - 1, w - 3)}
    assert _field(net, x, [1, 3]) == rows(h - 3, h - 2, h - 1)
    assert _field(net, x, [3, 2]) == rows(h - 2, h - 1) | cols(w - 2, w - 1)
    for path in ([1, 2], [2, 3], [1, 2, 3]):
        assert _field(net, x, path) == cells


def test_guard_keeps_the_leaking_cells_empty():
    h = w = 6
    x, y, kinds = make_grid_lookup(2000, (h, w), np.random.default_rng(2), mix=(0.25,) * 4, guard=True)
    block = x[:, h - 3 :, w - 3 :].reshape(len(x), -1)[:, :-1]  # the 3x3 corner without the query
    assert not (block[kinds > 0] == 3).any()
    assert (block[kinds == 0] == 3).any()  # local questions still use the window
    for i in range(len(y)):
        assert grid_lookup_label(x[i], kinds[i], guard=True) == y[i]
    reg = grid_regions((h, w), guard=True)
    assert reg["last_row"].sum() == w - 3 and reg["last_col"].sum() == h - 3 and reg["far"].sum() == h * w - 9
    with pytest.raises(ValueError, match="at least 4 x 4 with guard"):
        grid_regions((3, 5), guard=True)
    assert load_dataset("grid-lookup", num_train=10, num_test=10).meta["guard"] is True
    assert load_dataset("grid-lookup", num_train=10, num_test=10, guard=0).meta["guard"] is False


def test_oracle_paths_reproduce_its_compute_and_answers():
    from dynalay_env import oracle, oracle_paths

    splits = _grid(num_train=16, num_test=64, size=4)
    torch.manual_seed(0)
    net = build_main_model(splits, embed_dim=4, hidden=4).eval()
    found = oracle_paths(net, splits.x_test, splits.y_test, max_steps=3)
    report = oracle(net, splits, max_steps=3)
    assert set(report.sequences_per_level) == {0, 1, 2, 3}
    for shares in report.sequences_per_level.values():
        assert abs(sum(shares.values()) - 1) < 1e-9
    total, right = 0.0, 0
    with torch.no_grad():
        for i, path in enumerate(found.paths.tolist()):
            x = splits.x_test[i : i + 1]
            state, compute = net.straightforward(x), 1.0
            for a in (a for a in path if a > 0):
                state, it = net.fpi_step(state, torch.tensor([a]))
                compute += float(net.fpi_step_flops(torch.tensor([a - 1]), it)) / net.straightforward_flops
            total += compute
            right += int(net.readout(state).argmax(1).item() == splits.y_test[i].item())
    assert right == int(found.solved.sum()) == round(report.accuracy * 64)
    assert abs(total / 64 - report.compute) < 1e-4


def test_environment_runs_on_grid_lookup():
    from gymnasium.utils.env_checker import check_env

    env = DynaLayEnv(data=_grid(num_train=64, num_test=32, size=4), cotrain_every=8, pretrain_epochs=0)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    _, _, _, _, info = env.step(2)
    assert np.isfinite(obs).all() and info["fpi_iterations"] == 4
    _, _, terminated, _, info = env.step(0)
    assert terminated and info["compute"] > 1.0


def test_kind_names():
    assert GRID_KINDS == ("local", "row", "column", "grid")
