"""The grid-reach task: seeded generation, route kinds as difficulty levels, labels against their
definition (monotone reachability), balance, and what each path of the grid-LSTM can see of it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import dynalay_env  # noqa: F401  (registers DynaLay-v0)
from dynalay_env import TASK_DEFAULTS
from main_models import DATASETS, OFFLINE_DATASETS, build_main_model, load_dataset
from main_models.data.grid_reach import (
    KIND_SHAPE,
    OPEN,
    REACH_KINDS,
    SOURCE,
    TARGET,
    WALL,
    grid_reach_label,
    grid_reach_runs,
    grid_reach_shapes,
    make_grid_reach,
)

MIX = (0.25, 0.15, 0.15, 0.15, 0.15, 0.15)


def _reach(**kw):
    kw.setdefault("num_train", 300)
    kw.setdefault("num_test", 100)
    return load_dataset("grid-reach", **kw)


def _reference_label(grid: np.ndarray) -> int:
    """Monotone reachability by breadth-first search (independent of the module's dynamic programme)."""
    h, w = grid.shape
    (si, sj), seen, todo = np.argwhere(grid == SOURCE)[0], set(), []
    todo.append((int(si), int(sj)))
    while todo:
        i, j = todo.pop()
        if (i, j) in seen or grid[i, j] == WALL:
            continue
        seen.add((i, j))
        todo += [(i + 1, j)] * (i + 1 < h) + [(i, j + 1)] * (j + 1 < w)
    return int((h - 1, w - 1) in seen)


def _kind_of_open_grid(grid: np.ndarray) -> int:
    """A reachable grid's route kind from its definition: S in the window, else its shortest shape."""
    h, w = grid.shape
    if grid[h - 2, w - 2] == SOURCE:
        return 0
    shapes = grid_reach_shapes(grid)
    assert len(shapes) == 1, shapes
    return KIND_SHAPE.index(shapes[0])


# ---- the generator -----------------------------------------------------------------------------


def test_grid_reach_is_seeded_registered_and_offline():
    a, b = _reach(seed=1), _reach(seed=1)
    for name in ("x_train", "y_train", "x_test", "y_test", "difficulty_train", "difficulty_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(_reach(seed=2).x_train, a.x_train)
    assert "grid-reach" in DATASETS and "grid-reach" in OFFLINE_DATASETS
    assert a.input_kind == "grid" and a.input_shape == (6, 6) and a.num_classes == 2 and a.has_difficulty
    assert a.meta["vocab_size"] == 4 and int(a.x_train.max()) < 4
    assert set(a.difficulty_train.tolist()) == set(range(len(REACH_KINDS)))
    assert _reach(size=7, mix="0.5,0.1,0.1,0.1,0.1,0.1").input_shape == (7, 7)
    assert TASK_DEFAULTS["grid-reach"]["train_alternatives"] == ("plain",)


@pytest.mark.parametrize("mix", [(0.7, 0.06, 0.06, 0.06, 0.06, 0.06), MIX, (0.5, 0.0, 0.2, 0.0, 0.0, 0.3)])
def test_kinds_follow_the_mix_and_labels_are_balanced_within_each_kind(mix):
    _, y, kinds, _ = make_grid_reach(601, (6, 6), np.random.default_rng(0), mix=mix)
    counts = np.bincount(kinds, minlength=len(REACH_KINDS))
    assert counts.sum() == 601 and np.abs(counts - np.asarray(mix) * 601).max() < 1
    for k in range(len(REACH_KINDS)):
        assert y[kinds == k].sum() == counts[k] // 2  # the extra sample of an odd count is a "no"


@pytest.mark.parametrize("size", [(6, 6), (7, 6), (6, 8)])
def test_labels_and_kinds_match_their_definitions(size):
    h, w = size
    x, y, kinds, cuts = make_grid_reach(600, size, np.random.default_rng(1), mix=MIX)
    assert (x[:, h - 1, w - 1] == TARGET).all() and ((x == SOURCE).sum(axis=(1, 2)) == 1).all()
    assert np.isin(x, [OPEN, WALL, SOURCE, TARGET]).all()
    for grid, label, kind, cut in zip(x, y, kinds, cuts):
        assert grid_reach_label(grid) == _reference_label(grid) == label
        # a "no" grid is a "yes" grid with one route cell walled: opening it gives back a grid of its kind
        assert grid[tuple(cut)] == (OPEN if label else WALL)
        opened = grid.copy()
        opened[tuple(cut)] = OPEN
        assert grid_reach_label(opened) == 1 and _kind_of_open_grid(opened) == kind
        if kind > 0:  # neither S nor the cut lies in the 3x3 corner, which cheap paths see
            corner = np.zeros((h, w), dtype=bool)
            corner[h - 3 :, w - 3 :] = True
            assert not corner[tuple(cut)] and not corner[tuple(np.argwhere(grid == SOURCE)[0])]


def test_reference_functions_on_hand_made_grids():
    o, x, s, t = OPEN, WALL, SOURCE, TARGET
    grid = np.array(
        [
            [s, o, o, x, x, x],
            [x, x, o, x, x, x],
            [x, x, o, x, x, x],
            [x, x, o, x, x, x],
            [x, x, o, x, x, x],
            [x, x, o, o, o, t],
        ]
    )
    assert grid_reach_label(grid) == 1 and grid_reach_shapes(grid) == ("RDR",) and grid_reach_runs(grid) == 3
    blocked = grid.copy()
    blocked[3, 2] = x
    assert grid_reach_label(blocked) == 0 and grid_reach_runs(blocked) is None
    # reachable only down-right-down: a monotone path the three layers cannot carry
    drd = np.full((6, 6), x)
    drd[0:3, 0] = o
    drd[2, 0:6] = o
    drd[2:6, 5] = o
    drd[0, 0], drd[5, 5] = s, t
    assert grid_reach_label(drd) == 1 and grid_reach_runs(drd) is None
    two = np.full((6, 6), o)
    two[0, 0], two[5, 5] = s, t
    assert grid_reach_shapes(two) == ("RD", "DR") and grid_reach_runs(two) == 2
    with pytest.raises(ValueError, match="exactly one source"):
        grid_reach_label(np.zeros((6, 6), dtype=np.int64))
    with pytest.raises(ValueError, match=r"one \(H, W\) grid"):
        grid_reach_label(np.zeros((2, 6, 6), dtype=np.int64))


def test_bad_options_are_refused_by_name():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 6 x 6"):
        make_grid_reach(10, (5, 6), rng)
    with pytest.raises(ValueError, match="mix must be 6 non-negative weights"):
        make_grid_reach(10, (6, 6), rng, mix=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"wall_prob must be in \[0, 1\)"):
        make_grid_reach(10, (6, 6), rng, wall_prob=1.0)
    with pytest.raises(ValueError, match="num_train and num_test must be >= 1"):
        _reach(num_train=0)


# ---- what the grid-LSTM's paths can see --------------------------------------------------------


# the cells each path's logits depend on, on an H x W grid (tests/test_grid.py measures them)
def _fields(h: int, w: int) -> dict[tuple[int, ...], set[tuple[int, int]]]:
    rows = lambda *rs: {(r, c) for r in rs for c in range(w)}  # noqa: E731
    cols = lambda *cs: {(r, c) for r in range(h) for c in cs}  # noqa: E731
    return {
        (): rows(h - 2, h - 1) & cols(w - 2, w - 1),
        (1,): rows(h - 2, h - 1) | {(h - 3, w - 2), (h - 3, w - 1)},
        (2,): cols(w - 2, w - 1) | {(h - 2, w - 3), (h - 1, w - 3)},
        (3,): rows(h - 2, h - 1),
        (1, 3): rows(h - 3, h - 2, h - 1),
        (3, 2): rows(h - 2, h - 1) | cols(w - 2, w - 1),
    }


def test_no_path_cheaper_than_the_kinds_layers_sees_both_the_source_and_the_cut():
    h = w = 6
    x, _, kinds, cuts = make_grid_reach(600, (h, w), np.random.default_rng(3), mix=MIX)
    # the paths whose field may hold both, per kind: row needs a row layer, column the column layer
    allowed = {0: set(_fields(h, w)), 1: {(1,), (3,), (1, 3), (3, 2)}, 2: {(2,), (3, 2)}, 3: set(), 4: set(), 5: set()}
    for grid, kind, cut in zip(x, kinds, cuts):
        src = tuple(int(v) for v in np.argwhere(grid == SOURCE)[0])
        both = {path for path, field in _fields(h, w).items() if src in field and tuple(cut) in field}
        assert both <= allowed[int(kind)], (kind, both)
        if kind == 1:
            assert (1,) in both and (2,) not in both
        if kind == 2:
            assert (2,) in both and (1,) not in both and (1, 3) not in both


def test_the_environment_reports_the_route_kind_as_difficulty():
    env = gym.make("DynaLay-v0", dataset="grid-reach", pretrain_epochs=0, progress=False)
    engine = env.unwrapped.engine
    assert engine.model_name == "grid-lstm" and engine.reward.lam == TASK_DEFAULTS["grid-reach"]["lam"]
    seen = []
    for episode in range(120):
        _, info = env.reset(seed=episode)
        grid = engine.x_all[engine.sample[0]].numpy()
        assert info["label"] == grid_reach_label(grid)
        if info["label"]:
            assert info["difficulty"] == _kind_of_open_grid(grid)
        seen.append(int(info["difficulty"]))
    env.close()
    assert set(seen) >= {0, 1} and 0 <= min(seen) and max(seen) < len(REACH_KINDS)
    assert seen.count(0) > len(seen) / 2  # the default mix: most inputs are answered by the plain pass


def test_the_default_main_model_runs_every_path_on_it():
    splits = _reach(num_train=16, num_test=8)
    torch.manual_seed(0)
    net = build_main_model(splits, embed_dim=4, hidden=4).eval()
    with torch.no_grad():
        logits = net.run_paths(splits.x_test, torch.tensor([[1, 2, 3]]).expand(8, 3))[0]
    assert logits.shape == (8, 2) and torch.isfinite(logits).all()
