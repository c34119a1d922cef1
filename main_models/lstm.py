"""FPI-LSTM: stacked LSTM layers whose hidden sequences are found by fixed-point iteration.

Design (paper App. D.2 uses a 3-layer LSTM with the standard cell; this module decides how FPI
acts on it). The state ``z`` of a layer is its whole hidden sequence, shape (B, T, 2H + 1): the
hidden states h_t and the cell states c_t side by side (the cell needs c_{t-1}, so it is part of
the state), and a last channel that marks real tokens (1) and padding (0). The input ``u`` is the
sequence below, with the same mark in its last channel. One application computes, at every
position t in parallel,

    [i, f, g, o] = W [x_t, h_{t-1}] + b,   c_t = m_t (s(f) c_{t-1} + s(i) tanh(g)),   h_t = m_t s(o) tanh(c_t)

with (h_{t-1}, c_{t-1}) read from the *current iterate* z (zeros before t = 0), x_t the features
of u at t and m_t the mark. This is the Jacobi iteration of the LSTM recurrence (Song et al.
2021, "Accelerating Feedforward Computation via Parallel Nonlinear Equation Solving"; Lim et al.
2023, "DEER"). Why this design rather than feeding W z back as an extra LSTM input:

* Convergence is guaranteed without a contraction constant: position t of one application reads
  only position t-1 of z, so the Jacobian in z is strictly block lower triangular in time, hence
  nilpotent. After k applications from any start positions 0..k-1 are exact, and the iteration
  reaches the exact fixed point after at most T applications (T + 1 to observe a zero residual).
  The adjoint iteration of the implicit gradient inherits the same bound.
* The fixed point *is* the ordinary sequential LSTM layer started at the first real token (the
  mark zeroes the state on the front padding, as packed sequences do), so FPI on every layer is
  exactly a stacked LSTM, and the implicit gradient at it is backpropagation through time.
* Compute tracks context: the straightforward mode (one application from z = 0) sees no previous
  positions, and k iterations see the last k positions. Because the padding is exact from the
  first application, a sequence of n real tokens converges after about n + 1 iterations, so the
  solver's per-row early exit makes compute grow with length. The price: an FPI solve of k
  iterations costs k times a sequential LSTM pass in FLOPs (it trades FLOPs for parallelism over
  time), and the cost model counts exactly that.

The stem embeds token ids and mixes a short causal window (a width-``context`` causal
convolution), so the straightforward pass is a meaningful cheap model: an n-gram-like predictor
over the last ``context`` tokens. Padding (id ``pad_id``, 0 by default) goes at the *front* of a
sequence and the head reads the last position of the last layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fpi import SolverSettings
from .network import FPINetwork, assemble_network

CPU_CHUNK_BYTES = 2**21
"""A sweep without autograd on a CPU runs in chunks of rows whose gate pre-activations fill about
this many bytes (2 MiB: the gates and a few intermediates stay in a core's cache)."""


def _require_positive(**sizes: int) -> None:
    bad = {name: value for name, value in sizes.items() if value < 1}
    if bad:
        raise ValueError(f"{', '.join(sizes)} must be >= 1, got {bad}")


class CausalConvEmbedding(nn.Module):
    """Token ids (B, T) -> features (B, T, E + 1): embedding, then a causal width-``context``
    convolution and tanh, so position t sees tokens t-context+1..t; the last channel is the mark
    of real tokens (1) versus padding (0). The pad id embeds to zeros."""

    def __init__(self, vocab_size: int, embed_dim: int, *, context: int = 3, pad_id: int = 0) -> None:
        super().__init__()
        _require_positive(vocab_size=vocab_size, embed_dim=embed_dim, context=context)
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.context = context
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.mix = nn.Conv1d(embed_dim, embed_dim, context)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dtype.is_floating_point:
            raise TypeError(f"an LSTM main model reads integer token ids, got {tokens.dtype}")
        e = self.embed(tokens).transpose(1, 2)  # (B, E, T)
        e = F.pad(e, (self.context - 1, 0))  # left padding: causal
        mark = (tokens != self.pad_id).unsqueeze(-1).to(e.dtype)
        return torch.cat([torch.tanh(self.mix(e)).transpose(1, 2), mark], dim=-1)

    def flops_per_sample(self, seq_len: int) -> int:
        """The causal convolution (multiply-add = 2 FLOPs), bias and tanh; lookups are free."""
        return seq_len * (2 * self.context * self.embed_dim * self.embed_dim + 2 * self.embed_dim)


class JacobiLSTMBlock(nn.Module):
    """One LSTM layer as an FPI block: one application is one Jacobi sweep of the recurrence.

    ``u`` is (B, T, F) with F > ``input_dim``: its first ``input_dim`` features are the input (the
    stem output for the first layer, the h half of the layer below for the others) and its last
    feature is the real-token mark. The state is (B, T, 2 * hidden + 1) = [h, c, mark]. See the
    module docstring for why the iteration converges in at most T applications.
    """

    def __init__(self, input_dim: int, hidden: int, seq_len: int) -> None:
        super().__init__()
        _require_positive(input_dim=input_dim, hidden=hidden, seq_len=seq_len)
        self.input_dim = input_dim
        self.hidden = hidden
        self.seq_len = seq_len
        self.gates = nn.Linear(input_dim + hidden, 4 * hidden)
        with torch.no_grad():  # forget-gate bias 1: remember by default (Jozefowicz et al. 2015)
            self.gates.bias[hidden : 2 * hidden].fill_(1.0)

    @property
    def state_dim(self) -> int:
        return 2 * self.hidden + 1

    @property
    def state_numel(self) -> int:
        return self.seq_len * self.state_dim

    def initial_state(self, u: Tensor) -> Tensor:
        return u.new_zeros(u.shape[0], u.shape[1], self.state_dim)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        rows = z.shape[0]
        chunk = max(1, CPU_CHUNK_BYTES // (z.shape[1] * 4 * self.hidden * z.element_size()))
        if rows <= chunk or z.device.type != "cpu" or torch.is_grad_enabled():
            return self._sweep(z, u)
        # One sweep over many sequences is memory-bound on a CPU: its gate tensor and the
        # intermediates outgrow the cache. Chunks of a cache's size each run as fast per sequence as
        # a small batch does (about 2x faster per sequence at 24,576 sequences of 6 positions,
        # benchmarks/README "Training throughput"); every row's values are those of one sweep.
        out = z.new_empty(rows, z.shape[1], self.state_dim)
        for start in range(0, rows, chunk):
            out[start : start + chunk] = self._sweep(z[start : start + chunk], u[start : start + chunk])
        return out

    def _sweep(self, z: Tensor, u: Tensor) -> Tensor:
        H = self.hidden
        mark = u[..., -1:]
        prev = F.pad(z[:, :-1, : 2 * H], (0, 0, 1, 0))  # (h, c) at t-1, zeros before the first position
        i, f, g, o = self.gates(torch.cat([u[..., : self.input_dim], prev[..., :H]], dim=-1)).chunk(4, dim=-1)
        c = mark * (torch.sigmoid(f) * prev[..., H:] + torch.sigmoid(i) * torch.tanh(g))
        h = mark * torch.sigmoid(o) * torch.tanh(c)
        return torch.cat([h, c, mark], dim=-1)

    @property
    def exact_steps(self) -> int:
        """Steps of :meth:`exact_fixed_point`: one per position."""
        return self.seq_len

    def exact_fixed_point(self, u: Tensor) -> Tensor:
        """The fixed point directly: the LSTM recurrence run once over time (the iteration reaches it
        from any start, see the module docstring), with the input half of every gate computed for
        all positions in one product. With autograd, this is backpropagation through time, which is
        the implicit gradient at the fixed point, for 1/T of the iteration's work."""
        H = self.hidden
        weight_x, weight_h = self.gates.weight[:, : self.input_dim], self.gates.weight[:, self.input_dim :]
        injected = torch.addmm(self.gates.bias, u[..., : self.input_dim].reshape(-1, self.input_dim), weight_x.t())
        injected = injected.reshape(u.shape[0], u.shape[1], 4 * H)
        marks = u[..., -1:].detach()
        h = u.new_zeros(u.shape[0], H)
        c = u.new_zeros(u.shape[0], H)
        hs, cs = [], []
        # unbind, not indexing: the backward of each index would write a zero tensor of the whole sequence
        for injected_t, mark in zip(injected.unbind(1), marks.unbind(1)):
            i, f, g, o = torch.addmm(injected_t, h, weight_h.t()).chunk(4, dim=-1)
            c = mark * (torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g))
            h = mark * torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
            cs.append(c)
        return torch.cat([torch.stack(hs, dim=1), torch.stack(cs, dim=1), marks], dim=-1)

    def summarize(self, z: Tensor) -> Tensor:
        """Mean over time and last position of h, (B, 2H), in (-1, 1). The cell states are left
        out: they are unbounded. h is zero on padding, so its mean also reflects the length."""
        h = z[..., : self.hidden]
        return torch.cat([h.mean(dim=1), h[:, -1]], dim=1)

    def flops_per_sample(self) -> int:
        """Per position: the gate matmul (2 FLOPs per multiply-add) and its bias, then 3 sigmoids,
        2 tanh, 2 products and a sum for c, 1 product for h, 2 products by the mark (11H)."""
        H = self.hidden
        return self.seq_len * (2 * 4 * H * (self.input_dim + H) + 4 * H + 11 * H)


class LastStepHead(nn.Module):
    """Logits from h of the last layer at its last position: the last step of a sequence (padding
    sits at the front), or with ``spatial_dims=2`` the bottom-right cell of a grid."""

    def __init__(self, hidden: int, num_classes: int, *, spatial_dims: int = 1) -> None:
        super().__init__()
        self.hidden = hidden
        self.last = (slice(None),) + (-1,) * spatial_dims
        self.linear = nn.Linear(hidden, num_classes)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z[self.last][:, : self.hidden])

    def flops_per_sample(self) -> int:
        return 2 * self.hidden * self.linear.out_features + self.linear.out_features


def build_lstm_fpi_network(
    vocab_size: int,
    seq_len: int,
    num_classes: int,
    *,
    embed_dim: int = 32,
    hidden: int = 64,
    num_layers: int = 3,
    context: int = 3,
    pad_id: int = 0,
    solver: SolverSettings = SolverSettings(),
    summary_bins: int = 16,
) -> FPINetwork:
    """FPI-LSTM for token sequences (B, T): causal-conv embedding stem, ``num_layers`` Jacobi LSTM
    FPI layers, a linear head on the last position. Serves sequence classification and next-token
    prediction (the label is the token after the window).

    The solver's ``max_iter`` defaults to T + 1, the number of applications after which the
    iteration is exact from any start.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    stem = CausalConvEmbedding(vocab_size, embed_dim, context=context, pad_id=pad_id)
    blocks = [JacobiLSTMBlock(embed_dim if j == 0 else hidden, hidden, seq_len) for j in range(num_layers)]
    head = LastStepHead(hidden, num_classes)  # built after the blocks: the order fixes each seed's initial weights
    return assemble_network(
        stem,
        blocks,
        head,
        solver=solver,
        default_max_iter=seq_len + 1,
        stem_flops=stem.flops_per_sample(seq_len),
        head_flops=head.flops_per_sample(),
        summary_bins=summary_bins,
    )


def sequential_lstm(block: JacobiLSTMBlock, u: Tensor) -> Tensor:
    """The same layer run step by step over time (the ordinary LSTM recurrence, state zeroed on
    padding), (B, T, 2H + 1). The reference the FPI fixed point equals; used by tests."""
    B, T = u.shape[0], u.shape[1]
    H = block.hidden
    h = u.new_zeros(B, H)
    c = u.new_zeros(B, H)
    out = []
    for t in range(T):
        mark = u[:, t, -1:]
        i, f, g, o = block.gates(torch.cat([u[:, t, : block.input_dim], h], dim=-1)).chunk(4, dim=-1)
        c = mark * (torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g))
        h = mark * torch.sigmoid(o) * torch.tanh(c)
        out.append(torch.cat([h, c, mark], dim=-1))
    return torch.stack(out, dim=1)


__all__ = ["CausalConvEmbedding", "JacobiLSTMBlock", "LastStepHead", "build_lstm_fpi_network", "sequential_lstm"]
