"""Grid-LSTM: axis-wise Jacobi LSTM layers over integer token grids (N, H, W).

Each FPI layer is a :class:`~main_models.lstm.JacobiLSTMBlock` run along one axis of the grid:
every row (or every column) is one sequence, and one application is one Jacobi sweep of the LSTM
recurrence along all of them at once. Its fixed point is the sequential LSTM along each row (or
column), reached after at most W (or H) applications, W + 1 (H + 1) to observe a zero residual.

* layer 1 runs along rows (left -> right): information flows to the rightmost column;
* layer 2 runs along columns (top -> bottom): information flows to the bottom row;
* layer 3 runs along rows again.

The stem embeds tokens, mixes each 3x3 neighbourhood (zero "same" padding) and appends a constant
1 channel (the block reads its input's last channel as the real-token mark; every cell is real).
The head reads h of the top layer at the bottom-right cell. So the straightforward pass (each
layer once from z = 0, i.e. position-wise) answers from the 3x3 neighbourhood of that cell only;
a question about the last row needs a row layer iterated, one about the last column needs the
column layer, one about the whole grid needs rows then columns (L1 then L2) or columns then rows
(L2 then L3). Unlike the 1-D FPI-LSTM on front-padded sequences, every row has the full length,
so an FPI solve costs about max(H, W) + 1 applications whatever the input.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .fpi import SolverSettings
from .lstm import JacobiLSTMBlock, LastStepHead
from .network import FPINetwork, assemble_network

Axis = Literal["row", "col"]


class GridConvEmbedding(nn.Module):
    """Token ids (B, H, W) -> features (B, H, W, E + 1): embedding, 3x3 convolution with zero
    "same" padding, tanh, then a constant-1 mark channel (last)."""

    def __init__(self, vocab_size: int, embed_dim: int, *, kernel_size: int = 3) -> None:
        super().__init__()
        if vocab_size < 1 or embed_dim < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError("vocab_size and embed_dim must be >= 1 and kernel_size odd")
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.kernel_size = kernel_size
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.mix = nn.Conv2d(embed_dim, embed_dim, kernel_size, padding=kernel_size // 2)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dtype.is_floating_point:
            raise TypeError(f"the grid-LSTM reads integer token grids, got {tokens.dtype}")
        e = self.embed(tokens).permute(0, 3, 1, 2)  # (B, E, H, W)
        feats = torch.tanh(self.mix(e)).permute(0, 2, 3, 1)  # (B, H, W, E)
        mark = feats.new_ones(*feats.shape[:3], 1)
        return torch.cat([feats, mark], dim=-1)

    def flops_per_sample(self, spatial: tuple[int, int]) -> int:
        """The convolution (multiply-add = 2 FLOPs), bias and tanh per cell; lookups are free."""
        h, w = spatial
        return h * w * (2 * self.kernel_size**2 * self.embed_dim * self.embed_dim + 2 * self.embed_dim)


class AxisLSTMBlock(nn.Module):
    """A :class:`JacobiLSTMBlock` applied along one axis of a grid.

    ``u`` is (B, H, W, F) (features, then the mark in the last channel), the state ``z`` is
    (B, H, W, 2 * hidden + 1) = [h, c, mark]. ``axis="row"``: each of the H rows is a sequence
    read left -> right; ``axis="col"``: each of the W columns is a sequence read top -> bottom.
    Samples stay independent (the reshape only folds rows/columns into the block's batch), so the
    solver's per-sample early exit applies.
    """

    def __init__(self, input_dim: int, hidden: int, spatial: tuple[int, int], axis: Axis) -> None:
        super().__init__()
        if axis not in ("row", "col"):
            raise ValueError(f"axis must be 'row' or 'col', got {axis!r}")
        self.spatial = (int(spatial[0]), int(spatial[1]))
        self.axis = axis
        h, w = self.spatial
        self.lstm = JacobiLSTMBlock(input_dim, hidden, w if axis == "row" else h)

    @property
    def hidden(self) -> int:
        return self.lstm.hidden

    @property
    def input_dim(self) -> int:
        return self.lstm.input_dim

    @property
    def state_dim(self) -> int:
        return self.lstm.state_dim

    @property
    def state_numel(self) -> int:
        return self.spatial[0] * self.spatial[1] * self.state_dim

    def initial_state(self, u: Tensor) -> Tensor:
        return u.new_zeros(*u.shape[:3], self.state_dim)

    def _to_seq(self, t: Tensor) -> Tensor:
        b, h, w, f = t.shape
        if self.axis == "row":
            return t.reshape(b * h, w, f)
        return t.transpose(1, 2).reshape(b * w, h, f)

    def _from_seq(self, t: Tensor, b: int) -> Tensor:
        h, w = self.spatial
        if self.axis == "row":
            return t.reshape(b, h, w, t.shape[-1])
        return t.reshape(b, w, h, t.shape[-1]).transpose(1, 2)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        out = self.lstm(self._to_seq(z), self._to_seq(u))
        return self._from_seq(out, z.shape[0]).contiguous()

    @property
    def exact_steps(self) -> int:
        return self.lstm.exact_steps

    def exact_fixed_point(self, u: Tensor) -> Tensor:
        """The fixed point directly: the LSTM scan along every row (or column) at once."""
        return self._from_seq(self.lstm.exact_fixed_point(self._to_seq(u)), u.shape[0]).contiguous()

    def summarize(self, z: Tensor) -> Tensor:
        """Mean of h over all cells and h at the bottom-right cell (the head's), (B, 2 * hidden),
        in (-1, 1)."""
        h = z[..., : self.hidden]
        return torch.cat([h.mean(dim=(1, 2)), h[:, -1, -1]], dim=1)

    def flops_per_sample(self) -> int:
        """The LSTM block's per-position FLOPs times the H * W cells."""
        h, w = self.spatial
        per_position = self.lstm.flops_per_sample() // self.lstm.seq_len
        return h * w * per_position


GRID_AXES: tuple[Axis, ...] = ("row", "col", "row")
"""Axis of layers 1, 2, 3: rows, then columns, then rows."""


def build_grid_lstm_fpi_network(
    vocab_size: int,
    spatial: tuple[int, int],
    num_classes: int,
    *,
    embed_dim: int = 16,
    hidden: int = 32,
    axes: tuple[Axis, ...] = GRID_AXES,
    solver: SolverSettings = SolverSettings(),
    summary_bins: int = 16,
) -> FPINetwork:
    """Grid-LSTM for token grids (B, H, W): 3x3 conv embedding stem, one axis-wise Jacobi LSTM FPI
    layer per entry of ``axes`` (rows, columns, rows by default), a linear head on the bottom-right
    cell. The solver's ``max_iter`` defaults to max(H, W) + 1, after which the iteration is exact
    from any start."""
    h, w = (int(spatial[0]), int(spatial[1]))
    if h < 1 or w < 1:
        raise ValueError(f"spatial must be positive, got {spatial}")
    stem = GridConvEmbedding(vocab_size, embed_dim)
    blocks = [AxisLSTMBlock(embed_dim if j == 0 else hidden, hidden, (h, w), axis) for j, axis in enumerate(axes)]
    head = LastStepHead(hidden, num_classes, spatial_dims=2)
    return assemble_network(
        stem,
        blocks,
        head,
        solver=solver,
        default_max_iter=max(h, w) + 1,
        stem_flops=stem.flops_per_sample((h, w)),
        head_flops=head.flops_per_sample(),
        summary_bins=summary_bins,
    )


__all__ = ["GRID_AXES", "AxisLSTMBlock", "GridConvEmbedding", "build_grid_lstm_fpi_network"]
