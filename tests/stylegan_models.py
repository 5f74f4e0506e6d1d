"""StyleGAN-shaped generators for the export tests, each tiny (latent 8, 4-8 channels, 8x8 images)
and each showing one thing StyleGAN-class models do that plain export cannot take as written.

``modulated_conv`` is written the way NVlabs' code runs in eval mode: the batch folded into the
channels of a [1, N*C, H, W] view and one grouped convolution with per-sample weights
(groups = N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LATENT = 8
CLASSES = 3


def modulated_conv(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool
) -> torch.Tensor:
    n = x.shape[0]
    _, in_channels, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # N x O x I x k x k
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, -1, 1, 1, 1)
    x = F.conv2d(
        x.reshape(1, -1, *x.shape[2:]),
        w.reshape(-1, in_channels, kh, kw),
        padding=kh // 2,
        groups=n,
    )
    return x.reshape(n, -1, *x.shape[2:])


class ModLayer(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, demodulate: bool) -> None:
        super().__init__()
        self.affine = nn.Linear(LATENT, cin)
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) + 1
        x = modulated_conv(x, self.weight, styles, self.demodulate)
        return x + self.bias.reshape(1, -1, 1, 1)


class Synthesis(nn.Module):
    """const 4x4 -> modulated 3x3 -> upsample -> modulated 3x3 -> modulated 1x1 toRGB."""

    def __init__(self, demodulate: bool = True, channels: int = 4) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(channels, 4, 4))
        self.conv0 = ModLayer(channels, channels, 3, demodulate)
        self.conv1 = ModLayer(channels, channels, 3, demodulate)
        self.torgb = ModLayer(channels, 3, 1, demodulate=False)

    def forward(self, w: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = self.const.unsqueeze(0).expand(w.shape[0], -1, -1, -1)
        x = F.leaky_relu(self.conv0(x, w), 0.2)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv1(x, w)
        if noise is not None:
            x = x + noise[0]
        return torch.tanh(self.torgb(F.leaky_relu(x, 0.2), w) / 2)


class FusedModulated(nn.Module):
    """Mapping + fused modulated convolutions with demodulation (groups = batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.mapping = nn.Sequential(nn.Linear(LATENT, LATENT), nn.LeakyReLU(0.2))
        self.synthesis = Synthesis(demodulate=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z))


class FusedModulatedNoDemod(FusedModulated):
    """The same without demodulation (StyleGAN2's toRGB kind of layer everywhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.synthesis = Synthesis(demodulate=False)


class ConstantNoise(FusedModulated):
    """Noise as NVlabs' noise_mode='const': a buffer per layer, the same for every sample."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("noise_const", torch.randn(8, 8))
        self.noise_strength = nn.Parameter(torch.tensor(0.5))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z), [self.noise_const * self.noise_strength])


class Truncated(FusedModulated):
    """Truncation toward w_avg; psi a float or a per-sample [N, 1] tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w_avg", torch.randn(LATENT))

    def forward(self, z: torch.Tensor, truncation_psi: float | torch.Tensor = 0.8) -> torch.Tensor:
        return self.synthesis(self.w_avg.lerp(self.mapping(z), truncation_psi))


class OneHotConditional(nn.Module):
    """StyleGAN's conditioning: forward(z, c) with c a one-hot [N, CLASSES] vector."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(CLASSES, LATENT)
        self.mapping = nn.Sequential(nn.Linear(2 * LATENT, LATENT), nn.LeakyReLU(0.2))
        self.synthesis = Synthesis(demodulate=True)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(torch.cat([z, self.embed(c)], dim=1)))


class PerSampleToRGB(nn.Module):
    """General per-sample weights: a hypernetwork makes each sample's whole 1x1 toRGB kernel (and
    a 3x3 one), which is no product of shared weights and per-channel scales."""

    def __init__(self) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(4, 8, 8))
        self.kernel3 = nn.Linear(LATENT, 4 * 4 * 9)
        self.kernel1 = nn.Linear(LATENT, 3 * 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        x = self.const.unsqueeze(0).expand(n, -1, -1, -1).reshape(1, -1, 8, 8)
        x = F.conv2d(x, self.kernel3(z).reshape(n * 4, 4, 3, 3), padding=1, groups=n)
        x = F.leaky_relu(x, 0.2)
        rgb = F.conv2d(x, self.kernel1(z).reshape(n * 3, 4, 1, 1), groups=n)
        return torch.tanh(rgb.reshape(n, 3, 8, 8))


class RandomInForward(FusedModulated):
    """Noise drawn in forward (noise_mode='random'): refused."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z), [torch.randn(z.shape[0], 1, 8, 8)])


class IgnoresLatent(FusedModulated):
    """A constant image whatever z is: fails the gate."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(torch.zeros_like(z)))


class ModulatedUp(nn.Module):
    """A fused *transposed* modulated convolution (StyleGAN2's upsampling layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.affine = nn.Linear(LATENT, 4)
        self.weight = nn.Parameter(torch.randn(4, 3, 2, 2))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        w = self.weight.unsqueeze(0) * self.affine(z).reshape(n, -1, 1, 1, 1)
        x = x.reshape(1, -1, *x.shape[2:])
        x = F.conv_transpose2d(x, w.reshape(-1, 3, 2, 2), stride=2, groups=n)
        return x.reshape(n, 3, 8, 8)


class TransposedGrouped(nn.Module):
    """Upsamples with ``ModulatedUp``: its product is laid out [N, I, O, k, k] as the transposed
    convolution reads it, the style on I (rewritten: modulate, transposed convolution, no
    demodulation)."""

    def __init__(self) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(4, 4, 4))
        self.up = ModulatedUp()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.const.unsqueeze(0).expand(z.shape[0], -1, -1, -1)
        return torch.tanh(self.up(x, z))


class HyperTransposed(nn.Module):
    """A transposed convolution with groups = batch whose per-sample weights a linear layer makes
    from z (a hypernetwork): no modulated product, so not rewritten (a static batch exports it)."""

    def __init__(self) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(4, 4, 4))
        self.kernels = nn.Linear(LATENT, 4 * 3 * 2 * 2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        x = self.const.unsqueeze(0).expand(n, -1, -1, -1).reshape(1, -1, 4, 4)
        w = self.kernels(z).reshape(-1, 3, 2, 2)  # state: N*4 x 3 x 2 x 2
        return torch.tanh(F.conv_transpose2d(x, w, stride=2, groups=n).reshape(n, 3, 8, 8))


class BatchAsInt(FusedModulated):
    """Turns the batch size into a Python int while traced (NVlabs' ``int(batch_size)``)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = int(z.shape[0])
        return self.synthesis(self.mapping(z)).reshape(n, 3, 8, 8)


class Overflowing(nn.Module):
    """FP16 breaks it: a demodulation written as w * w on weights near 300 (squares past 65504)
    and an activation scaled by 30000 and back."""

    def __init__(self) -> None:
        super().__init__()
        self.mapping = nn.Linear(LATENT, 4)
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3) * 300)
        self.const = nn.Parameter(torch.randn(4, 8, 8))
        self.torgb = nn.Conv2d(4, 3, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        w = self.weight.unsqueeze(0) * (self.mapping(z) + 1).reshape(n, 1, -1, 1, 1)
        w = w * ((w * w).sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, -1, 1, 1, 1)
        x = self.const.unsqueeze(0).expand(n, -1, -1, -1).reshape(1, -1, 8, 8)
        x = F.conv2d(x, w.reshape(-1, 4, 3, 3), padding=1, groups=n).reshape(n, 4, 8, 8)
        x = torch.tanh((x * 30000.0) / 30000.0)
        return torch.tanh(self.torgb(x))


def nvlabs_modulated_conv(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, fused: bool
) -> torch.Tensor:
    """The order of operations of NVlabs' eval-mode ``modulated_conv2d``: the batch size is made
    a Python int before the grouped convolution, so tracing specializes it."""
    batch_size = x.shape[0]
    _, in_channels, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)  # N x O x I x k x k
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # N x O
    if not fused:
        x = F.conv2d(x * styles.reshape(batch_size, -1, 1, 1), weight, padding=kh // 2)
        return x * dcoefs.reshape(batch_size, -1, 1, 1) if dcoefs is not None else x
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)
    batch_size = int(batch_size)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = F.conv2d(x, w, padding=kh // 2, groups=batch_size)
    return x.reshape(batch_size, -1, *x.shape[2:])


class NVLayer(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, demodulate: bool) -> None:
        super().__init__()
        self.affine = nn.Linear(LATENT, cin)
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        return nvlabs_modulated_conv(x, self.weight, self.affine(w) + 1, self.demodulate, fused)


class NVLabsStyle(nn.Module):
    """Mapping, constant, a modulated 3x3 and a 1x1 toRGB through ``nvlabs_modulated_conv``;
    ``fused_modconv=False`` is the non-fused path NVlabs' code has too."""

    def __init__(self) -> None:
        super().__init__()
        self.mapping = nn.Sequential(nn.Linear(LATENT, LATENT), nn.LeakyReLU(0.2))
        self.const = nn.Parameter(torch.randn(4, 8, 8))
        self.conv0 = NVLayer(4, 4, 3, demodulate=True)
        self.torgb = NVLayer(4, 3, 1, demodulate=False)

    def forward(self, z: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        w = self.mapping(z)
        x = self.const.unsqueeze(0).repeat([w.shape[0], 1, 1, 1])
        x = F.leaky_relu(self.conv0(x, w, fused_modconv), 0.2)
        return torch.tanh(self.torgb(x, w, fused_modconv))


class BatchBranch(NVLabsStyle):
    """Branches in Python on the batch size it made an int: not the same graph at 2 and 3."""

    def forward(self, z: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        out = super().forward(z, fused_modconv)
        return out * 1.0 if int(z.shape[0]) % 2 else out


class DataDependentBranch(FusedModulated):
    """A Python branch on a tensor's value: torch.export cannot capture it."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z)
        if float(w.abs().max()) > 1000.0:
            w = w / 2
        return self.synthesis(w)


class MisalignedProduct(nn.Module):
    """A product of a shared weight and per-sample styles laid out [N, 2, 8, 3, 3] but convolved
    as [N*4, 4, 3, 3]: its axes are not the convolution's, so only the batched form is right."""

    def __init__(self) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(4, 8, 8))
        self.affine = nn.Linear(LATENT, 8)
        self.weight = nn.Parameter(torch.randn(2, 8, 3, 3) * 0.3)
        self.torgb = nn.Conv2d(4, 3, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        w = self.weight.unsqueeze(0) * self.affine(z).reshape(n, 1, -1, 1, 1)  # N x 2 x 8 x 3 x 3
        x = self.const.unsqueeze(0).expand(n, -1, -1, -1).reshape(1, -1, 8, 8)
        x = F.conv2d(x, w.reshape(-1, 4, 3, 3), padding=1, groups=n).reshape(n, 4, 8, 8)
        return torch.tanh(self.torgb(x))


class ChunkedByFour(NVLabsStyle):
    """Runs its batch in chunks of at most 4 (a ``split(batch_gpu)`` loop)."""

    def forward(self, z: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        parts = [super(ChunkedByFour, self).forward(part, fused_modconv) for part in z.split(4)]
        return torch.cat(parts)


class CountsBatches(FusedModulated):
    """Records the batch sizes it runs at outside of a capture."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_exporting():
            self.seen.append(int(z.shape[0]))
        return super().forward(z)


class IgnoresTruncation(FusedModulated):
    """Takes ``truncation_psi`` and does nothing with it."""

    def forward(self, z: torch.Tensor, truncation_psi: float = 0.7) -> torch.Tensor:
        return super().forward(z)


class RandomWithNoiseBuffer(ConstantNoise):
    """Has a noise buffer (so --noise seeded finds one) and also draws random numbers in forward."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        noise = self.noise_const * self.noise_strength + torch.randn(z.shape[0], 1, 8, 8)
        return self.synthesis(self.mapping(z), [noise])
