"""``grid-lookup``: a generated grid task where different inputs need different FPI layers.

A sample is an H x W grid of tokens. The bottom-right cell holds a QUERY token naming one of four
questions, all "is the target symbol X in region R?"; every other cell holds a background symbol
or X. The *window* is the 2 x 2 block at the bottom-right (the query cell and its neighbours
(H-2, W-2), (H-2, W-1), (H-1, W-2)): what the grid-LSTM's 3x3 stem sees around its head cell,
i.e. all the plain (straightforward) path can see.

Query kinds (the difficulty level):

* 0 ``local``: is X in the window? (the plain path suffices)
* 1 ``row``: is X in the last row, left of the 3 x 3 corner? (a row layer iterated: L1 or L3)
* 2 ``column``: is X in the last column, above the 3 x 3 corner? (the column layer iterated: L2)
* 3 ``grid``: is X anywhere outside the 3 x 3 corner? (rows then columns, L1 -> L2, or columns
  then rows, L2 -> L3)

Labels are balanced 50/50 within each kind and independent of everything the plain path sees:
for kinds 1-3 the 3 x 3 bottom-right corner (which contains the window) never holds X.
Distractor X's, placed with a probability independent of the label, make shortcuts useless: for
``local`` anywhere outside the window, for ``row`` in the other rows, for ``column`` in the other
columns (outside the corner); ``grid`` "no" means no X anywhere.

Why the 3 x 3 corner rather than the window (``guard=True``, the default): an FPI step on layer i
re-applies the layers above once *from their current state*, and that Jacobi sweep at the head
cell reads the previous cell along the layer's axis. So FPI on L1 also sees (H-3, W-2..W-1)
(through L2's sweep down the last column) and FPI on L2 also sees (H-2..H-1, W-3) (through L3's
sweep along the last row). With ``guard=False`` the questions are about the regions outside the
2 x 2 window only, so (H-3, W-1) belongs to the column question and (H-1, W-3) to the row
question, and a row-only path (FPI on L1) answers many column questions, and FPI on L2 many row
questions, instead of being at chance on them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .splits import DatasetSplits, apportion, generated_splits, parse_mix

GRID_KINDS: tuple[str, ...] = ("local", "row", "column", "grid")
"""Query kinds by difficulty level."""

GRID_KIND_TEXT: tuple[str, ...] = (
    "local: is X in the 2x2 bottom-right window?",
    "row: is X in the last row outside the corner?",
    "column: is X in the last column outside the corner?",
    "grid: is X anywhere outside the corner?",
)
"""The corner is the 3x3 bottom-right block with ``guard`` (default), the 2x2 window without."""


def grid_token_ids(num_background: int) -> dict[str, object]:
    """Token ids: background symbols 0..num_background-1, then X, then the 4 query tokens."""
    x = num_background
    return {
        "background": list(range(num_background)),
        "target": x,
        "queries": [x + 1 + k for k in range(len(GRID_KINDS))],
        "vocab_size": x + 1 + len(GRID_KINDS),
    }


def grid_regions(size: tuple[int, int], *, guard: bool = True) -> dict[str, np.ndarray]:
    """Boolean (H, W) masks: ``window`` (4 cells incl. the query cell), ``neighbours`` (the window
    without the query cell), ``outside`` (everything but the window), ``clear`` (cells that never
    hold X for kinds 1-3), ``far`` (the cells outside ``clear`` and the query cell: the grid
    question's region), ``last_row`` / ``last_col`` (the row / column questions' regions).

    With ``guard`` (default), ``clear`` is the whole 3 x 3 bottom-right block: a single FPI step
    also re-applies the layers above once from their current state, and that sweep reads the cell
    before the head cell along the layer's axis, which brings (H-3, W-1) into view of L1 and
    (H-1, W-3) into view of L2 (see the module docstring); the guard keeps those cells empty, so
    row questions need a row layer and column questions the column layer without exception.
    Without ``guard``, ``clear`` is the window and the regions are the last row / column / grid
    outside it.
    """
    h, w = size
    lo = 4 if guard else 3
    if h < lo or w < lo:
        raise ValueError(f"the grid must be at least {lo} x {lo}{' with guard' if guard else ''}, got {h} x {w}")
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    window = (rows >= h - 2) & (cols >= w - 2)
    query = (rows == h - 1) & (cols == w - 1)
    span = 3 if guard else 2
    clear = (rows >= h - span) & (cols >= w - span)
    return {
        "window": window,
        "neighbours": window & ~query,
        "outside": ~window,
        "clear": clear,
        "far": ~clear,
        "last_row": (rows == h - 1) & ~clear,
        "last_col": (cols == w - 1) & ~clear,
    }


def _place(grid: np.ndarray, mask: np.ndarray, count: int, value: int, rng: np.random.Generator) -> None:
    """Write ``value`` at ``count`` distinct random cells of ``mask`` (all of them if fewer)."""
    cells = np.flatnonzero(mask)
    pick = rng.choice(cells, size=min(count, cells.size), replace=False)
    grid.reshape(-1)[pick] = value


def make_grid_lookup(
    num: int,
    size: tuple[int, int],
    rng: np.random.Generator,
    *,
    mix: Sequence[float] = (0.7, 0.1, 0.1, 0.1),
    num_background: int = 3,
    max_targets: int = 2,
    distractor_prob: float = 0.5,
    guard: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num`` grids (num, H, W) int64, labels (num,) and kinds (num,).

    Kinds are apportioned exactly by ``mix``; within a kind half the labels are 1 (the extra one,
    for an odd count, is 0). A "yes" sample gets 1..``max_targets`` X's in its kind's region; with
    probability ``distractor_prob`` (independent of the label) a sample of kind 0-2 also gets
    1..``max_targets`` X's in its distractor region. ``guard``: see :func:`grid_regions`.
    """
    h, w = size
    reg = grid_regions(size, guard=guard)
    ids = grid_token_ids(num_background)
    target, queries = int(ids["target"]), list(ids["queries"])  # type: ignore[arg-type]
    answer_region = [reg["neighbours"], reg["last_row"], reg["last_col"], reg["far"]]
    rows = np.arange(h)[:, None].repeat(w, 1)
    cols = np.arange(w)[None, :].repeat(h, 0)
    distractor_region = [
        reg["outside"],
        reg["far"] & (rows != h - 1),  # other rows
        reg["far"] & (cols != w - 1),  # other columns
        None,  # grid: "no" means no X anywhere
    ]
    counts = apportion(num, mix, GRID_KINDS)
    kinds = np.repeat(np.arange(len(GRID_KINDS)), counts)
    labels = np.concatenate([rng.permutation(np.arange(c) >= c // 2 + c % 2) for c in counts]).astype(np.int64)
    order = rng.permutation(num)
    kinds, labels = kinds[order], labels[order]
    grids = rng.integers(0, num_background, size=(num, h, w))
    n_targets = rng.integers(1, max_targets + 1, size=num)
    distract = rng.random(num) < distractor_prob
    n_distract = rng.integers(1, max_targets + 1, size=num)
    for i in range(num):
        k = kinds[i]
        g = grids[i]
        if distractor_region[k] is not None and distract[i]:
            _place(g, distractor_region[k], int(n_distract[i]), target, rng)
        if labels[i]:
            _place(g, answer_region[k], int(n_targets[i]), target, rng)
        g[h - 1, w - 1] = queries[k]
    return grids.astype(np.int64), labels, kinds.astype(np.int64)


def grid_lookup_label(grid: np.ndarray, kind: int, num_background: int = 3, *, guard: bool = True) -> int:
    """The answer to ``kind``'s question on one grid, from its definition (used by tests)."""
    reg = grid_regions(grid.shape, guard=guard)
    region = [reg["neighbours"], reg["last_row"], reg["last_col"], reg["far"]][kind]
    return int(bool((grid[region] == num_background).any()))


def load_grid_lookup(
    data_dir: str | None = None,
    *,
    seed: int = 0,
    num_train: int = 10000,
    num_test: int = 2000,
    size: int = 6,
    mix: Sequence[float] | str = (0.7, 0.1, 0.1, 0.1),
    num_background: int = 3,
    distractor_prob: float = 0.5,
    guard: bool | int = True,
) -> DatasetSplits:
    """The grid-lookup task (see the module docstring), ``size`` x ``size`` grids, query kinds
    drawn by ``mix`` (local, row, column, grid; a string "0.7,0.1,0.1,0.1" is accepted for the
    command line). ``guard`` (default) keeps X out of the whole 3x3 bottom-right block for kinds
    1-3; ``guard=False`` only out of the 2x2 window (see the module docstring). Deterministic from
    ``seed``; ``data_dir`` is ignored (generated data)."""
    if num_train < 1 or num_test < 1:
        raise ValueError("num_train and num_test must be >= 1")
    mix = parse_mix(mix)
    guard = bool(guard)
    rng = np.random.default_rng([seed, 3])
    shape = (int(size), int(size))
    opts = dict(mix=mix, num_background=num_background, distractor_prob=distractor_prob, guard=guard)
    train = make_grid_lookup(num_train, shape, rng, **opts)
    test = make_grid_lookup(num_test, shape, rng, **opts)
    ids = grid_token_ids(num_background)
    return generated_splits(
        "grid-lookup",
        train,
        test,
        meta={
            "source": "synthetic grid lookup",
            "seed": seed,
            "input_kind": "grid",
            "vocab_size": int(ids["vocab_size"]),  # type: ignore[arg-type]
            "size": int(size),
            "mix": mix,
            "guard": guard,
            "target_id": int(ids["target"]),  # type: ignore[arg-type]
            "query_ids": list(ids["queries"]),  # type: ignore[arg-type]
            "difficulty": "query kind: " + "; ".join(f"{i} {t}" for i, t in enumerate(GRID_KIND_TEXT)),
        },
    )


__all__ = ["GRID_KINDS", "grid_lookup_label", "grid_regions", "grid_token_ids", "load_grid_lookup", "make_grid_lookup"]
