"""``grid-reach``: a generated grid task where the answer is a multi-hop propagation through walls.

A sample is an H x W grid of cells: open, wall, one source S, and the target T in the bottom-right
cell. The label: can T be reached from S by right/down moves through non-wall cells (a monotone
path)? Unlike ``grid-lookup`` ("is symbol X in region R?"), no single cell answers it: reachability
has to be carried cell by cell along runs of open cells, and a wall anywhere on the way cuts it.

The grid-LSTM (``main_models/grid.py``) propagates along rows (L1), columns (L2), rows again (L3),
and its head reads the bottom-right cell. So its plain pass answers from the 2 x 2 *window* at the
bottom-right only, a solved row layer carries reachability along a straight run to the right, the
column layer a run downwards, and the three solved in order carry a path of shape right-down-right.
Every sample is built around a *route* from S to T; its kind (the difficulty level) is the shape
of the shortest such path, which decides which layers must be solved:

* 0 ``window``: S is the window's top-left cell, T is two moves away (the plain pass suffices);
* 1 ``row``: S in the last row: one run right (a row layer, L1 or L3);
* 2 ``column``: S in the last column: one run down (the column layer, L2);
* 3 ``row-column``: right, then down the last column (L1 then L2);
* 4 ``column-row``: down, then right along the last row (L2 then L3);
* 5 ``row-column-row``: right, down, right (L1, L2 and L3).

Those are the layers that carry each shape cell by cell. Measured on trained models
(benchmarks/README.md, "A second task family: grid-reach"), the single-run kinds behave so (a row
layer answers row routes, not column ones; L2 the reverse), but L2 then L3 also answers most
composite routes (kinds 3-5) nearly as well as FPI on every layer, presumably because on a 6 x 6
grid a column's LSTM state holds enough of that column for the row layer after it to line the
columns up.

How a sample is built (kind k, label y): walls are drawn independently with ``wall_prob``, the
route's cells are opened, and one route cell, the *cut*, is chosen strictly between S and T and,
for kinds 1-5, outside the 3 x 3 bottom-right corner (so that neither the plain pass nor the
one-cell hop that re-applying a layer adds can see it). The draw is kept only if walling the cut
leaves no monotone path at all, and if, with the cut open, the shortest path has exactly kind k's
number of runs and the shape the layers can carry. Then a "yes" sample has the cut open and a "no"
sample has it walled: the two labels are drawn from the same grids and differ in one cell that
only a solve along the route can see, so nothing cheaper than the route's layers tells them apart.
The label is the monotone reachability itself (:func:`grid_reach_label`), which the tests check.
That holds for the single-run kinds; for the composite ones a cheaper composite (L2 then L3) also
answers many routes (benchmarks/README.md, "A second task family: grid-reach").

Routes keep their turns off the corner for the same reason as ``grid-lookup``'s guard: a single
FPI step re-applies the layers above once, which adds a one-cell hop along each of their axes;
every straight run a kind relies on is at least two cells long where a one-cell hop would let a
cheaper path see it (see :func:`_route`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .splits import DatasetSplits, apportion, generated_splits, parse_mix

OPEN, WALL, SOURCE, TARGET = 0, 1, 2, 3
VOCAB_SIZE = 4
"""Token ids: open cell, wall, the source S, the target T (always the bottom-right cell)."""

REACH_KINDS: tuple[str, ...] = ("window", "row", "column", "row-column", "column-row", "row-column-row")
"""Route kinds by difficulty level."""

REACH_KIND_RUNS: tuple[int, ...] = (2, 1, 1, 2, 2, 3)
"""Straight runs of each kind's shortest path (the window's is two single moves)."""

REACH_KIND_TEXT: tuple[str, ...] = (
    "window: S in the 2x2 bottom-right window (plain pass)",
    "row: S in the last row, one run right (L1 or L3)",
    "column: S in the last column, one run down (L2)",
    "row-column: right, then down the last column (L1, L2)",
    "column-row: down, then right along the last row (L2, L3)",
    "row-column-row: right, down, right (L1, L2, L3)",
)

MIN_SIZE = 6
"""The smallest grid every kind fits in with its runs off the 3x3 corner."""


def _passable(grid: np.ndarray) -> np.ndarray:
    return grid != WALL


def _source(grid: np.ndarray) -> tuple[int, int]:
    where = np.argwhere(grid == SOURCE)
    if len(where) != 1:
        raise ValueError(f"a grid-reach grid holds exactly one source token ({SOURCE}), this one holds {len(where)}")
    return int(where[0, 0]), int(where[0, 1])


def grid_reach_label(grid: np.ndarray) -> int:
    """1 if the bottom-right cell is reachable from the source by right/down moves through
    non-wall cells, else 0: the task's definition, by dynamic programming over the grid."""
    grid = np.asarray(grid)
    if grid.ndim != 2:
        raise ValueError(f"expected one (H, W) grid, got shape {grid.shape}")
    ok = _passable(grid)
    si, sj = _source(grid)
    h, w = grid.shape
    reach = np.zeros((h, w), dtype=bool)
    reach[si, sj] = True
    for i in range(si, h):
        for j in range(sj, w):
            if (i, j) != (si, sj) and ok[i, j]:
                reach[i, j] = (i > si and reach[i - 1, j]) or (j > sj and reach[i, j - 1])
    return int(reach[h - 1, w - 1])


def _sweep(start: np.ndarray, ok: np.ndarray, axis: int) -> np.ndarray:
    """Cells reached from ``start`` by one straight run right (axis 1) or down (axis 0) through
    passable cells (a run of length 0 included)."""
    out = start.copy()
    n = ok.shape[axis]
    for k in range(1, n):
        if axis == 1:
            out[:, k] |= out[:, k - 1] & ok[:, k]
        else:
            out[k, :] |= out[k - 1, :] & ok[k, :]
    return out


SHAPES: tuple[str, ...] = ("R", "D", "RD", "DR", "RDR")
"""Path shapes the three layers can carry, as their runs: R right, D down."""

KIND_SHAPE: tuple[str | None, ...] = (None, "R", "D", "RD", "DR", "RDR")
"""The one shortest shape of each kind's routes (the window kind's S sees T through the stem)."""


def grid_reach_shapes(grid: np.ndarray) -> tuple[str, ...]:
    """The shapes of :data:`SHAPES` some monotone path from the source to the bottom-right cell
    has (through non-wall cells), fewest runs first."""
    grid = np.asarray(grid)
    if grid.ndim != 2:
        raise ValueError(f"expected one (H, W) grid, got shape {grid.shape}")
    ok = _passable(grid)
    si, sj = _source(grid)
    start = np.zeros_like(ok)
    start[si, sj] = True
    reach = {"R": _sweep(start, ok, 1), "D": _sweep(start, ok, 0)}
    reach["RD"] = _sweep(reach["R"], ok, 0)
    reach["DR"] = _sweep(reach["D"], ok, 1)
    reach["RDR"] = _sweep(reach["RD"], ok, 1)
    t = (grid.shape[0] - 1, grid.shape[1] - 1)
    # a path of one shape is also one of every longer shape that contains it ("R" is an "RD" whose
    # down run is empty), so a shape counts only if no shorter one reaches T
    reached = [s for s in SHAPES if reach[s][t]]
    return tuple(s for s in reached if not any(len(r) < len(s) for r in reached))


def grid_reach_runs(grid: np.ndarray) -> int | None:
    """The fewest straight runs of a monotone path from the source to the bottom-right cell whose
    shape the three layers can carry (:data:`SHAPES`), or None when there is none."""
    shapes = grid_reach_shapes(grid)
    return len(shapes[0]) if shapes else None


def _route(kind: int, h: int, w: int, rng: np.random.Generator) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The source and the route's cells from the source (exclusive) to T (inclusive) for ``kind``.

    Every row index <= h - 4 and column index <= w - 4 lies outside the 3x3 corner. What each
    path sees (tests/test_grid.py, ``test_each_path_sees_exactly_its_region``): the plain pass the
    window, FPI on L1 the last two rows (and a one-cell hop up), L2 the last two columns (and a
    one-cell hop left), L1 then L3 the last three rows. So runs down to the last row or column
    start at row <= h - 4 and runs along the last row start at column <= w - 4, and a first run
    to the right that the column layer would read through the stem's 3x3 view is at least 2
    cells long."""
    if kind == 0:
        s = (h - 2, w - 2)
        mid = (h - 2, w - 1) if rng.random() < 0.5 else (h - 1, w - 2)
        return s, [mid, (h - 1, w - 1)]
    if kind == 1:
        c = int(rng.integers(0, w - 4))
        return (h - 1, c), [(h - 1, j) for j in range(c + 1, w)]
    if kind == 2:
        r = int(rng.integers(0, h - 4))
        return (r, w - 1), [(i, w - 1) for i in range(r + 1, h)]
    if kind == 3:
        r, c = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 2))
        return (r, c), [(r, j) for j in range(c + 1, w)] + [(i, w - 1) for i in range(r + 1, h)]
    if kind == 4:
        r, c = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
        return (r, c), [(i, c) for i in range(r + 1, h)] + [(h - 1, j) for j in range(c + 1, w)]
    if kind == 5:
        r, t = int(rng.integers(0, h - 3)), int(rng.integers(2, w - 3))
        c = int(rng.integers(0, t - 1))
        cells = [(r, j) for j in range(c + 1, t + 1)] + [(i, t) for i in range(r + 1, h)] + [(h - 1, j) for j in range(t + 1, w)]
        return (r, c), cells
    raise ValueError(f"kind must be 0..{len(REACH_KINDS) - 1}, got {kind}")


def _draw(kind: int, h: int, w: int, wall_prob: float, rng: np.random.Generator, max_tries: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One grid of ``kind`` with its cut open, and the cut (see the module docstring)."""
    for _ in range(max_tries):
        grid = np.where(rng.random((h, w)) < wall_prob, WALL, OPEN)
        s, cells = _route(kind, h, w, rng)
        for cell in cells:
            grid[cell] = OPEN
        grid[s] = SOURCE
        grid[h - 1, w - 1] = TARGET
        between = cells[:-1]
        if kind > 0:
            between = [(i, j) for i, j in between if i <= h - 4 or j <= w - 4]
        cut = between[int(rng.integers(len(between)))]
        if kind > 0 and grid_reach_shapes(grid) != (KIND_SHAPE[kind],):
            continue
        grid[cut] = WALL
        if grid_reach_label(grid) == 0:
            grid[cut] = OPEN
            return grid, cut
    raise RuntimeError(f"no {REACH_KINDS[kind]} grid of {h} x {w} with wall_prob {wall_prob} found in {max_tries} draws; lower wall_prob")


def make_grid_reach(
    num: int,
    size: tuple[int, int],
    rng: np.random.Generator,
    *,
    mix: Sequence[float] = (0.7, 0.06, 0.06, 0.06, 0.06, 0.06),
    wall_prob: float = 0.4,
    max_tries: int = 1000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``num`` grids (num, H, W) int64, labels (num,), kinds (num,) and cuts (num, 2).

    Kinds are apportioned exactly by ``mix``; within a kind half the labels are 1 (the extra one,
    for an odd count, is 0). A "no" grid is its "yes" grid with the cut walled (module docstring)."""
    h, w = int(size[0]), int(size[1])
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"the grid must be at least {MIN_SIZE} x {MIN_SIZE}, got {h} x {w}")
    if not 0.0 <= wall_prob < 1.0:
        raise ValueError(f"wall_prob must be in [0, 1), got {wall_prob}")
    counts = apportion(num, mix, REACH_KINDS)
    kinds = np.repeat(np.arange(len(REACH_KINDS)), counts)
    labels = np.concatenate([rng.permutation(np.arange(c) >= c // 2 + c % 2) for c in counts]).astype(np.int64)
    order = rng.permutation(num)
    kinds, labels = kinds[order], labels[order]
    grids = np.empty((num, h, w), dtype=np.int64)
    cuts = np.empty((num, 2), dtype=np.int64)
    for n in range(num):
        grid, cut = _draw(int(kinds[n]), h, w, wall_prob, rng, max_tries)
        if not labels[n]:
            grid[cut] = WALL
        grids[n], cuts[n] = grid, cut
    return grids, labels, kinds.astype(np.int64), cuts


def load_grid_reach(
    data_dir: str | None = None,
    *,
    seed: int = 0,
    num_train: int = 10000,
    num_test: int = 2000,
    size: int = 6,
    mix: Sequence[float] | str = (0.7, 0.06, 0.06, 0.06, 0.06, 0.06),
    wall_prob: float = 0.4,
) -> DatasetSplits:
    """The grid-reach task (see the module docstring), ``size`` x ``size`` grids, route kinds drawn
    by ``mix`` (window, row, column, row-column, column-row, row-column-row; a string
    "0.7,0.06,0.06,0.06,0.06,0.06" is accepted for the command line). Deterministic from ``seed``;
    ``data_dir`` is ignored (generated data)."""
    if num_train < 1 or num_test < 1:
        raise ValueError("num_train and num_test must be >= 1")
    mix = parse_mix(mix)
    rng = np.random.default_rng([seed, 5])
    shape = (int(size), int(size))
    train = make_grid_reach(num_train, shape, rng, mix=mix, wall_prob=wall_prob)
    test = make_grid_reach(num_test, shape, rng, mix=mix, wall_prob=wall_prob)
    return generated_splits(
        "grid-reach",
        train,
        test,
        meta={
            "source": "synthetic grid reachability",
            "seed": seed,
            "input_kind": "grid",
            "vocab_size": VOCAB_SIZE,
            "size": int(size),
            "mix": mix,
            "wall_prob": float(wall_prob),
            "difficulty": "route kind: " + "; ".join(f"{i} {t}" for i, t in enumerate(REACH_KIND_TEXT)),
        },
    )


__all__ = [
    "REACH_KINDS",
    "REACH_KIND_RUNS",
    "SHAPES",
    "grid_reach_shapes",
    "grid_reach_label",
    "grid_reach_runs",
    "load_grid_reach",
    "make_grid_reach",
]
