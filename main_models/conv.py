"""FPI-CNN: convolutional FPI layers for images (CIFAR-10/100 or any (C, H, W) input).

Each layer is ``f(z, u) = tanh(c * K_z(z) + K_u(u) + b)`` on feature maps of one fixed size.
``K_z`` is a 3x3 convolution normalised by an *upper bound* of its operator norm, so ``f`` is a
contraction in ``z`` with factor at most ``c < 1`` (tanh is 1-Lipschitz) and the iteration
converges (Banach).

Why not ``torch.nn.utils.parametrizations.spectral_norm``: on a convolution it normalises the
reshaped (out, in*k*k) weight matrix, whose norm is not the operator norm of the convolution
(for a random multi-channel kernel it lies well *below* it), so the layer would not be
contractive. :class:`ConvOperatorNorm` instead uses the exact singular values of circular
convolution (Sedghi, Gupta & Long, "The Singular Values of Convolutional Layers", ICLR 2019):
the zero-padded convolution on an H x W map is the restriction of the circular convolution on an
(H + k - 1) x (W + k - 1) grid, so the largest singular value over that grid's frequencies bounds
it from above. The bound is deterministic (no power-iteration state), so the same weights always
give the same layer, and it is differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .fpi import ACCELERATED, SolverSettings
from .network import FPINetwork, assemble_network


class ConvOperatorNorm(nn.Module):
    """Parametrization ``W -> W / sigma(W)`` with sigma an upper bound of the operator norm of the
    stride-1, zero-padded convolution by ``W`` on ``spatial`` sized maps.

    sigma is the largest singular value of the kernel's 2-D DFT over an (H + k - 1) x (W + k - 1)
    grid: one small (C_out x C_in) matrix per frequency.
    """

    def __init__(self, spatial: tuple[int, int], kernel_size: tuple[int, int], eps: float = 1e-12) -> None:
        super().__init__()
        self.grid = (spatial[0] + kernel_size[0] - 1, spatial[1] + kernel_size[1] - 1)
        self.eps = eps

    def sigma(self, weight: Tensor) -> Tensor:
        spectrum = torch.fft.fft2(weight, s=self.grid)  # (C_out, C_in, gh, gw)
        return torch.linalg.matrix_norm(spectrum.permute(2, 3, 0, 1), ord=2).amax()

    def forward(self, weight: Tensor) -> Tensor:
        return weight / self.sigma(weight).clamp_min(self.eps)


class ContractiveConvBlock(nn.Module):
    """f(z, u) = tanh(c * K_z(z) + K_u(u) + b) on (C, H, W) feature maps, ||K_z|| <= 1, c < 1.

    ``K_u`` is a plain 3x3 convolution from the layer below (``in_channels`` -> ``channels``), so
    applied once from z = 0 the block is an ordinary conv + tanh layer (straightforward mode).
    Rows (samples) are independent: no batch statistics.
    """

    def __init__(
        self,
        channels: int,
        in_channels: int,
        spatial: tuple[int, int],
        *,
        contraction: float = 0.9,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if not 0 < contraction < 1:
            raise ValueError(f"contraction must be in (0, 1), got {contraction}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same-size padding), got {kernel_size}")
        self.channels = channels
        self.in_channels = in_channels
        self.spatial = (int(spatial[0]), int(spatial[1]))
        self.contraction = contraction
        self.kernel_size = kernel_size
        pad = kernel_size // 2
        self.recurrent = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        parametrize.register_parametrization(self.recurrent, "weight", ConvOperatorNorm(self.spatial, (kernel_size, kernel_size)))
        self.inject = nn.Conv2d(in_channels, channels, kernel_size, padding=pad)

    @property
    def state_numel(self) -> int:
        return self.channels * self.spatial[0] * self.spatial[1]

    def initial_state(self, u: Tensor) -> Tensor:
        return u.new_zeros(u.shape[0], self.channels, *self.spatial)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        return torch.tanh(self.contraction * self.recurrent(z) + self.inject(u))

    def summarize(self, z: Tensor) -> Tensor:
        """Per-channel spatial means, (B, C): what a layer-selection policy sees of this layer."""
        return z.mean(dim=(2, 3))

    def flops_per_sample(self) -> int:
        """Both convolutions (multiply-add = 2 FLOPs), plus the scale, the bias add and tanh."""
        positions = self.spatial[0] * self.spatial[1]
        k2 = self.kernel_size * self.kernel_size
        convs = 2 * k2 * self.channels * (self.channels + self.in_channels) * positions
        return convs + 3 * self.channels * positions


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def build_conv_fpi_network(
    in_channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    *,
    channels: int = 32,
    num_layers: int = 3,
    layer_resolution: int = 8,
    contraction: float = 0.9,
    solver: SolverSettings = ACCELERATED,
    summary_bins: int = 16,
) -> FPINetwork:
    """FPI-CNN: a strided conv stem, ``num_layers`` contractive conv FPI layers, a pooled linear head.

    The stem halves the resolution with stride-2 3x3 conv + ReLU stages until the maps are at most
    ``layer_resolution`` on a side (32x32 CIFAR -> 16 -> 8), so that iterating a layer stays cheap;
    an input already that small gets one stride-1 stage. The head is global average pooling and a
    linear layer.
    """
    if in_channels < 1 or channels < 1 or num_layers < 1:
        raise ValueError("in_channels, channels and num_layers must be >= 1")
    h, w = int(image_size[0]), int(image_size[1])
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    stages: list[nn.Module] = []
    stem_flops = 0
    c_in = in_channels
    stride = 2 if max(h, w) > layer_resolution else 1
    while True:
        h, w = _conv_out(h, 3, stride, 1), _conv_out(w, 3, stride, 1)
        stages += [nn.Conv2d(c_in, channels, 3, stride=stride, padding=1), nn.ReLU()]
        # multiply-adds count 2 FLOPs; then the bias add and the ReLU
        stem_flops += 2 * 9 * c_in * channels * h * w + 2 * channels * h * w
        c_in = channels
        if stride == 1 or max(h, w) <= layer_resolution:
            break
    stem = nn.Sequential(*stages)
    blocks = [ContractiveConvBlock(channels, channels, (h, w), contraction=contraction) for _ in range(num_layers)]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
    head_flops = channels * h * w + 2 * channels * num_classes + num_classes
    return assemble_network(stem, blocks, head, solver=solver, stem_flops=stem_flops, head_flops=head_flops, summary_bins=summary_bins)


def conv_operator_norm(conv: nn.Conv2d, spatial: tuple[int, int], iterations: int = 200) -> float:
    """Power-iteration estimate of the operator norm of a stride-1, same-padded ``conv`` on
    ``spatial`` maps (a lower bound that converges to the norm); used to check the FFT bound."""
    weight = conv.weight.detach()
    pad = conv.padding
    u = torch.randn(1, weight.shape[1], *spatial, generator=torch.Generator().manual_seed(0))
    u = u / u.norm()
    with torch.no_grad():
        for _ in range(iterations):
            v = torch.nn.functional.conv2d(u, weight, padding=pad)
            u = torch.nn.functional.conv_transpose2d(v, weight, padding=pad)
            u = u / u.norm().clamp_min(1e-12)
        return float(torch.nn.functional.conv2d(u, weight, padding=pad).norm())


__all__ = ["ConvOperatorNorm", "ContractiveConvBlock", "build_conv_fpi_network", "conv_operator_norm"]
