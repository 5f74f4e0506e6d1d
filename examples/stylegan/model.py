"""A small StyleGAN2-class generator, written the way NVlabs' code runs in eval mode.

Mapping network (z -> w, with ``w_avg`` for truncation), a learned 4x4 constant, then one block per
resolution: bilinear upsampling, two modulated 3x3 convolutions with demodulation, each followed by
noise (a constant buffer per layer, scaled by a learned strength), a bias and a leaky ReLU, and a
1x1 toRGB (modulated, not demodulated) added to the upsampled image of the block before (skip
architecture). The modulated convolutions are "fused": one grouped convolution over the whole batch
with per-sample weights (groups = batch), the form that does not export to ONNX with a dynamic batch
as written; ``gendeploy export`` rewrites it (see ``gendeploy/export/rewrite.py``).

``forward(z, truncation_psi=1.0, noise_mode="random", fused_modconv=True)``:
noise_mode "random" draws new noise on every call (what training does; refused by export),
"const" uses the buffers, "none" adds none. ``fused_modconv=False`` runs the non-fused path.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


class MappingNetwork(nn.Module):
    """z -> w: normalised z through ``layers`` fully connected layers; ``w_avg`` is the mean w
    (tracked during training), the point truncation pulls towards."""

    def __init__(self, latent_dim: int, w_dim: int, layers: int = 4) -> None:
        super().__init__()
        dims = [latent_dim] + [w_dim] * layers
        self.net = nn.Sequential(
            *(m for a, b in itertools.pairwise(dims) for m in (nn.Linear(a, b), nn.LeakyReLU(0.2)))
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float | torch.Tensor = 1.0) -> torch.Tensor:
        z = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # pixel norm
        w = self.net(z)  # state: N x w_dim
        # psi may be a float or a per-sample [N, 1] tensor: no Python branch on its value; written
        # out rather than lerp, which wants one dtype (w is bf16 under autocast, w_avg FP32)
        return self.w_avg + (w - self.w_avg) * truncation_psi


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    fused: bool = True,
) -> torch.Tensor:
    """Convolve each sample with ``weight`` scaled per input channel by its style, then (with
    ``demodulate``) normalised per output channel to unit norm."""
    batch = x.shape[0]
    _, in_channels, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # N x O x I x k x k
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # N x O
    if not fused:  # scale the activations instead of the weights
        x = x * styles.reshape(batch, -1, 1, 1)
        x = F.conv2d(x, weight, padding=kh // 2)
        return x * dcoefs.reshape(batch, -1, 1, 1) if dcoefs is not None else x
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    # one grouped convolution for the whole batch: [1, N*I, H, W] with N groups
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = F.conv2d(x, w, padding=kh // 2, groups=batch)
    return x.reshape(batch, -1, *x.shape[2:])  # N x O x H x W


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution + noise + bias + leaky ReLU at one resolution."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int) -> None:
        super().__init__()
        self.affine = nn.Linear(w_dim, in_channels)
        nn.init.ones_(self.affine.bias)  # styles start at 1
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.tensor(0.1))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.resolution = resolution

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused: bool = True
    ) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), fused=fused)
        if noise_mode == "random":
            x = (
                x
                + torch.randn(x.shape[0], 1, self.resolution, self.resolution) * self.noise_strength
            )
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        return F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), 0.2) * math.sqrt(2)


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB, without demodulation."""

    def __init__(self, in_channels: int, w_dim: int, channels: int = 3) -> None:
        super().__init__()
        self.affine = nn.Linear(w_dim, in_channels)
        nn.init.ones_(self.affine.bias)
        self.weight = nn.Parameter(
            torch.randn(channels, in_channels, 1, 1) / math.sqrt(in_channels)
        )
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool = True) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), demodulate=False, fused=fused)
        return x + self.bias.reshape(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """Upsample (except at 4x4), two synthesis layers, toRGB added to the upsampled image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.torgb = ToRGB(out_channels, w_dim)

    def forward(
        self,
        x: torch.Tensor,
        img: torch.Tensor | None,
        w: torch.Tensor,
        noise_mode: str,
        fused: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resolution > 4:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv0(x, w, noise_mode, fused)
        x = self.conv1(x, w, noise_mode, fused)  # state: N x out_channels x res x res
        rgb = self.torgb(x, w, fused)
        if img is not None:
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
            rgb = img + rgb
        return x, rgb


class StyleGAN(nn.Module):
    """z (N x latent_dim) -> images (N x 3 x resolution x resolution) in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int = 64,
        w_dim: int = 64,
        resolution: int = 32,
        channels: dict[int, int] | None = None,
        mapping_layers: int = 4,
    ) -> None:
        super().__init__()
        channels = channels or {4: 128, 8: 128, 16: 64, 32: 64}
        self.latent_dim = latent_dim
        self.mapping = MappingNetwork(latent_dim, w_dim, mapping_layers)
        self.const = nn.Parameter(torch.randn(channels[4], 4, 4))  # state: C x 4 x 4
        resolutions = [4 * 2**i for i in range(int(math.log2(resolution)) - 1)]
        self.blocks = nn.ModuleList(
            SynthesisBlock(channels[max(r // 2, 4)], channels[r], w_dim, r) for r in resolutions
        )
        self._init_like_stylegan2()

    def _init_like_stylegan2(self) -> None:
        """Weights at the scale NVlabs' equalized learning rate gives them. PyTorch's default
        Linear init shrinks w layer by layer until it is nearly the biases: images then barely
        depend on z (per-pixel spread across seeds 0.02 instead of 0.5), which no random-weight
        stand-in for a trained generator should do."""
        for layer in self.mapping.net:
            if isinstance(layer, nn.Linear):  # He init for the leaky ReLU that follows
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / layer.in_features))
                nn.init.zeros_(layer.bias)
        for module in self.modules():
            if isinstance(module, (SynthesisLayer, ToRGB)):  # styles: 1 + N(0, 1)-scaled w
                nn.init.normal_(
                    module.affine.weight, 0.0, 1.0 / math.sqrt(module.affine.in_features)
                )

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float | torch.Tensor = 1.0,
        noise_mode: str = "random",
        fused_modconv: bool = True,
    ) -> torch.Tensor:
        w = self.mapping(z, truncation_psi)
        x = self.const.unsqueeze(0).expand(z.shape[0], -1, -1, -1)
        img = None
        for block in self.blocks:
            x, img = block(x, img, w, noise_mode, fused_modconv)
        assert img is not None
        return torch.tanh(img)


def tiny() -> StyleGAN:
    """An 8x8 StyleGAN with 8 channels: the same layers, for tests (latent 16)."""
    return StyleGAN(latent_dim=16, w_dim=16, resolution=8, channels={4: 8, 8: 8}, mapping_layers=2)
