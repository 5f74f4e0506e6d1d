"""Generators with the constructs of NVlabs' StyleGAN2-ADA and StyleGAN3 code (issue 20).

Written for gendeploy: NVlabs' code is under a non-commercial licence and nothing of it is copied
here. What is reproduced is every construct that decides whether and how their generators export,
where their ``training/networks*.py`` and ``torch_utils/ops`` put it:

- ``modulated_conv2d``: the fused path (the default in eval mode) folds the batch into the
  channels after ``batch_size = int(batch_size)``; an upsampling layer is a strided *transposed*
  convolution with groups = batch whose weight is regrouped per sample, then a low-pass FIR over
  the ``[1, N*C, H, W]`` view (depthwise: groups = N*C), as ``conv2d_resample`` does;
- ``Mapping``: a one-hot ``c`` embedded, a ``w_avg`` buffer, ``if truncation_psi != 1:`` in Python
  and ``truncation_cutoff`` applied in place;
- noise: ``noise_const`` buffers, ``noise_strength`` initialised to 0, ``noise_mode='random'`` by
  default (``torch.randn`` in forward); FP16 blocks (``num_fp16_res``) unless ``force_fp32``;
- ``upfirdn2d``: the reference path, which applies even the identity filter as a 1x1 depthwise
  convolution;
- ``sg3_t``: a StyleGAN3-T-like synthesis: Fourier-feature input, modulated convolutions with an
  input gain (StyleGAN3 has no non-fused path), the pure-PyTorch filtered leaky ReLU (upsample,
  leaky ReLU, clamp, downsample) and an output scale of 0.25 after the last layer.

rosinality's and a popular conditional port's conventions are in ``ported_like.py``. Factories
(``--model tests/nvlabs_like.py:sg2ada`` or ``export_generator(sg2ada(), ...)``) build seeded
"trained-like" generators: noise strength 0.1 and ``w_avg`` the mean of mapping(z).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import signal
from torch import nn

Z_DIM = W_DIM = 64
CLASSES = 10
LRELU_GAIN = math.sqrt(2)


def normalize_2nd_moment(x: torch.Tensor) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


class Dense(nn.Module):
    """Fully connected, equalized learning rate: weights stored unscaled, scaled in forward."""

    def __init__(
        self,
        cin: int,
        cout: int,
        lrelu: bool = False,
        lr_mul: float = 1.0,
        bias_init: float | list[float] = 0.0,
        weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) * (weight_init / lr_mul))
        self.bias = nn.Parameter(torch.zeros(cout) + torch.tensor(bias_init) / lr_mul)
        self.weight_gain, self.lr_mul, self.lrelu = lr_mul / math.sqrt(cin), lr_mul, lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight * self.weight_gain, self.bias * self.lr_mul
        if not self.lrelu:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return F.leaky_relu(x.matmul(w.t()) + b, 0.2) * LRELU_GAIN


class Mapping(nn.Module):
    """z (and one-hot c) -> ``num_ws`` copies of w; truncation as NVlabs writes it."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, layers: int = 2) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.num_ws = z_dim, c_dim, num_ws
        self.embed = Dense(c_dim, w_dim) if c_dim else None
        dims = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * layers
        self.fcs = nn.ModuleList(
            Dense(a, b, lrelu=True, lr_mul=0.01) for a, b in itertools.pairwise(dims)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        x = normalize_2nd_moment(z.to(torch.float32))
        if self.embed is not None:
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1)
        for fc in self.fcs:
            x = fc(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # state: N x num_ws x w_dim
        if truncation_psi != 1:  # a Python branch on psi: a per-sample tensor cannot take it
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x[:, :cutoff] = self.w_avg.lerp(x[:, :cutoff], truncation_psi)
        return x


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative: crop), filter every channel alike with ``f``
    (1-d: separable; groups = channels, N*C on a batch-folded view), keep every ``down``-th."""
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(batch, channels, height * up, width * up)
    x = F.pad(x, [max(p, 0) for p in pad])
    x = x[:, :, max(-pad[2], 0) : x.shape[2] - max(-pad[3], 0)]
    x = x[:, :, :, max(-pad[0], 0) : x.shape[3] - max(-pad[1], 0)]
    if f is None:  # the identity filter, still applied as a (1x1, depthwise) convolution
        f = torch.ones([1, 1], device=x.device)
    f = (f * gain ** (f.ndim / 2)).flip(list(range(f.ndim)))
    kernels = [f[None, None]] if f.ndim == 2 else [f.reshape(1, 1, 1, -1), f.reshape(1, 1, -1, 1)]
    for k in kernels:
        x = F.conv2d(x, k.repeat([channels, 1, 1, 1]).to(x.dtype), groups=channels)
    return x[:, :, ::down, ::down]


def fir_2d(taps: tuple[float, ...] = (1, 3, 3, 1)) -> torch.Tensor:
    """StyleGAN2's resampling filter: the outer product of ``taps``, normalised to sum 1."""
    f = torch.tensor(taps)
    return torch.outer(f, f) / f.sum() ** 2


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> torch.Tensor:
    """A convolution, or (``up`` 2) a strided transposed convolution with the weight regrouped per
    group, then the FIR low-pass: ``conv2d_resample``'s two paths StyleGAN2 takes."""
    out_channels, in_per_group, kh, kw = (int(s) for s in w.shape)  # read as ints, as NVlabs does
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if groups == 1:
        w = w.transpose(0, 1)
    else:  # [G*O, I, k, k] -> [G*I, O, k, k]: conv_transpose2d wants input channels first
        w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    x = F.conv_transpose2d(x, w, stride=up, groups=groups)  # state: 2H+1 x 2W+1 for 3x3
    lo = padding + (f.shape[-1] + up - 1) // 2 - (kw - 1)
    hi = padding + (f.shape[-1] - up) // 2 - (kw - up)
    return upfirdn2d(x, f, pad=(lo, hi, lo, hi), gain=up**2)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    padding: int = 0,
    demodulate: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2's modulated convolution, fused (one grouped convolution over the batch) or not."""
    batch_size = x.shape[0]
    _, in_channels, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # pre-normalised against FP16 overflow
        weight = weight / (weight[0].numel() ** 0.5 * weight.norm(float("inf"), [1, 2, 3], True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)  # N x O x I x k x k
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # N x O
    if not fused_modconv:  # scale the activations before and after one shared convolution
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f, up, padding)
        return x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1) if dcoefs is not None else x
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)
    batch_size = int(batch_size)  # NVlabs: "this value will be treated as a constant"
    x = x.reshape(1, -1, *x.shape[2:])
    x = conv2d_resample(
        x, w.reshape(-1, in_channels, kh, kw).to(x.dtype), f, up, padding, batch_size
    )
    return x.reshape(batch_size, -1, *x.shape[2:])


class SG2Layer(nn.Module):
    """Modulated 3x3 (``up`` 2: upsampling) or, ``torgb``, 1x1 without demodulation; noise,
    bias and leaky ReLU (toRGB: bias only)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        w_dim: int,
        resolution: int,
        up: int = 1,
        torgb: bool = False,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        k = 1 if torgb else 3
        self.affine = Dense(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.register_buffer("resample_filter", fir_2d())
        if not torgb:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))  # NVlabs' init: 0 until trained
        self.up, self.torgb, self.resolution = up, torgb, resolution
        self.conv_clamp = conv_clamp

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused: bool = True
    ) -> torch.Tensor:
        styles = self.affine(w) * (1 / math.sqrt(self.weight[0].numel()) if self.torgb else 1)
        x = modulated_conv2d(
            x, self.weight, styles, self.resample_filter, self.up, self.weight.shape[-1] // 2,
            not self.torgb, fused,
        )  # fmt: skip
        if not self.torgb and noise_mode == "random":
            size = [x.shape[0], 1, self.resolution, self.resolution]
            x = x + (torch.randn(size, device=x.device) * self.noise_strength).to(x.dtype)
        elif not self.torgb and noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        if not self.torgb:
            x = F.leaky_relu(x, 0.2) * LRELU_GAIN
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class SG2Block(nn.Module):
    """One resolution: the 4x4 constant or an upsampling layer, a layer, toRGB added to the
    upsampled image so far (the skip architecture). ``use_fp16``: runs in FP16 unless
    ``force_fp32``, as NVlabs' blocks at the ``num_fp16_res`` highest resolutions do."""

    def __init__(
        self, cin: int, cout: int, w_dim: int, resolution: int, use_fp16: bool, clamp: float | None
    ) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(cout, 4, 4)) if cin == 0 else None
        self.conv0 = SG2Layer(cin, cout, w_dim, resolution, 2, conv_clamp=clamp) if cin else None
        self.conv1 = SG2Layer(cout, cout, w_dim, resolution, conv_clamp=clamp)
        self.torgb = SG2Layer(cout, 3, w_dim, resolution, torgb=True, conv_clamp=clamp)
        self.register_buffer("resample_filter", fir_2d())
        self.num_conv, self.use_fp16 = 2 if cin else 1, use_fp16

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool | None = None,
        force_fp32: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        if fused_modconv is None:  # NVlabs' default: fused in eval mode, in FP16 at batch 1 only
            fused_modconv = not self.training and (dtype == torch.float32 or int(ws.shape[0]) == 1)
        w = ws.unbind(dim=1)
        if self.conv0 is None:
            assert self.const is not None
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, w[0], noise_mode, fused_modconv)
        else:
            assert x is not None
            x = self.conv0(x.to(dtype), w[0], noise_mode, fused_modconv)
            x = self.conv1(x, w[1], noise_mode, fused_modconv)
        if img is not None:
            img = upfirdn2d(img, self.resample_filter, up=2, pad=(2, 1, 2, 1), gain=4)
        y = self.torgb(x, w[-1], fused=fused_modconv).to(torch.float32)
        return x, img + y if img is not None else y


class SG2Synthesis(nn.Module):
    def __init__(
        self,
        w_dim: int,
        resolution: int,
        channel_base: int,
        channel_max: int,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.resolutions = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.resolutions}
        fp16_from = max(2 * resolution // 2**num_fp16_res, 8)
        for r in self.resolutions:
            cin = channels[r // 2] if r > 4 else 0
            block = SG2Block(cin, channels[r], w_dim, r, r >= fp16_from, conv_clamp)
            setattr(self, f"b{r}", block)
        self.num_ws = sum(getattr(self, f"b{r}").num_conv for r in self.resolutions) + 1

    def forward(self, ws: torch.Tensor, **block_kwargs: object) -> torch.Tensor:
        x = img = None
        first = 0
        for r in self.resolutions:
            block = getattr(self, f"b{r}")  # each block's toRGB shares the next block's first w
            x, img = block(x, img, ws.narrow(1, first, block.num_conv + 1), **block_kwargs)
            first += block.num_conv
        assert img is not None
        return img


def lowpass(taps: int, cutoff: float, width: float, fs: float) -> torch.Tensor | None:
    """A Kaiser-windowed low-pass filter (StyleGAN3-T's separable kind); None: the identity."""
    if taps == 1:
        return None
    return torch.as_tensor(signal.firwin(taps, cutoff, width=width, fs=fs), dtype=torch.float32)


class FourierInput(nn.Module):
    """StyleGAN3's input: Fourier features, rotated and translated per sample by an affine of w."""

    def __init__(self, w_dim: int, channels: int, size: int, rate: float, bandwidth: float) -> None:
        super().__init__()
        freqs = torch.randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.affine = Dense(w_dim, 4, weight_init=0.1, bias_init=[1.0, 0.0, 0.0, 0.0])
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(channels) - 0.5)
        self.size, self.rate, self.bandwidth = size, rate, bandwidth

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)  # (cos, sin, tx, ty)
        m = torch.eye(3, device=w.device).unsqueeze(0).repeat([w.shape[0], 1, 1])
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        shift = torch.eye(3, device=w.device).unsqueeze(0).repeat([w.shape[0], 1, 1])
        shift[:, 0, 2], shift[:, 1, 2] = -t[:, 2], -t[:, 3]
        m = m @ shift  # state: N x 3 x 3, in place as NVlabs builds it
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ m[:, :2, 2:]).squeeze(2)
        freqs = self.freqs.unsqueeze(0) @ m[:, :2, :2]
        band = (freqs.norm(dim=2) - self.bandwidth) / (self.rate / 2 - self.bandwidth)
        amplitudes = (1 - band).clamp(0, 1)
        theta = torch.eye(2, 3, device=w.device) * (0.5 * self.size / self.rate)
        grid = F.affine_grid(theta.unsqueeze(0), [1, 1, self.size, self.size], align_corners=False)
        x = (grid.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
        x = torch.sin((x + phases.unsqueeze(1).unsqueeze(2)) * (2 * math.pi))
        x = (x * amplitudes.unsqueeze(1).unsqueeze(2)) @ (
            self.weight / math.sqrt(len(self.weight))
        ).t()
        return x.permute(0, 3, 1, 2)  # state: N x C x size x size


class SG3Layer(nn.Module):
    """Modulated convolution (batch made an int, pre-normalised, input gain), then the filtered
    leaky ReLU's reference path: bias, upsample + FIR, leaky ReLU, clamp, FIR + downsample."""

    def __init__(
        self,
        w_dim: int,
        cin: int,
        cout: int,
        sizes: tuple[int, int],
        rates: tuple[int, int],
        cutoffs: tuple[float, float],
        widths: tuple[float, float],
        torgb: bool,
    ) -> None:
        super().__init__()
        self.torgb, self.k = torgb, 1 if torgb else 3
        self.affine = Dense(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, self.k, self.k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.register_buffer("magnitude_ema", torch.ones([]))
        tmp = max(rates) * (1 if torgb else 2)
        self.up, self.down = tmp // rates[0], tmp // rates[1]
        up_taps = 6 * self.up if self.up > 1 and not torgb else 1
        down_taps = 6 * self.down if self.down > 1 and not torgb else 1
        self.register_buffer("up_filter", lowpass(up_taps, cutoffs[0], widths[0] * 2, tmp))
        self.register_buffer("down_filter", lowpass(down_taps, cutoffs[1], widths[1] * 2, tmp))
        total = (sizes[1] - 1) * self.down + 1 - (sizes[0] + self.k - 1) * self.up
        total += up_taps + down_taps - 2
        lo = (total + self.up) // 2
        self.padding = (lo, total - lo, lo, total - lo)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        styles = self.affine(w)
        weight = self.weight
        batch_size = int(x.shape[0])  # StyleGAN3 has no non-fused path
        if self.torgb:
            styles = styles / math.sqrt(self.weight[0].numel())
        else:  # pre-normalise (the batch-wide style norm cancels in the demodulation)
            weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
            styles = styles * styles.square().mean().rsqrt()
        wt = weight.unsqueeze(0) * styles.unsqueeze(1).unsqueeze(3).unsqueeze(4)
        if not self.torgb:
            wt = wt * (wt.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(
                batch_size, -1, 1, 1, 1
            )
        gain = self.magnitude_ema.rsqrt().expand(batch_size, weight.shape[1])
        wt = wt * gain.unsqueeze(1).unsqueeze(3).unsqueeze(4)
        x = x.reshape(1, -1, *x.shape[2:])
        x = F.conv2d(x, wt.reshape(-1, *weight.shape[1:]), padding=self.k - 1, groups=batch_size)
        x = x.reshape(batch_size, -1, *x.shape[2:]) + self.bias.reshape(1, -1, 1, 1)
        x = upfirdn2d(x, self.up_filter, up=self.up, pad=self.padding, gain=self.up**2)
        x = F.leaky_relu(x, 1.0 if self.torgb else 0.2) * (1 if self.torgb else LRELU_GAIN)
        return upfirdn2d(x.clamp(-256, 256), self.down_filter, down=self.down)


class SG3Synthesis(nn.Module):
    """StyleGAN3-T's layer schedule (cutoffs rising geometrically to Nyquist, the last layers
    critically sampled, a margin cropped at the end), ``layers`` layers plus toRGB."""

    def __init__(self, w_dim: int, resolution: int, channel_base: int, channel_max: int,
                 layers: int = 6, critical: int = 2, margin: int = 10,
                 output_scale: float = 0.25) -> None:  # fmt: skip
        super().__init__()
        self.output_scale = output_scale
        exponents = np.minimum(np.arange(layers + 1) / (layers - critical), 1)
        cutoffs = 2 * (resolution / 2 / 2) ** exponents
        stopbands = 2**2.1 * (resolution / 2 * 2**0.3 / 2**2.1) ** exponents
        rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, resolution)))).astype(int)
        widths = np.maximum(stopbands, rates / 2) - cutoffs
        sizes = rates + margin * 2
        sizes[-2:] = resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max)).astype(int)
        channels[-1] = 3
        self.input = FourierInput(w_dim, int(channels[0]), int(sizes[0]), rates[0], cutoffs[0])
        self.layer_names = []
        for i in range(layers + 1):
            p = max(i - 1, 0)
            name = f"L{i}_{sizes[i]}_{channels[i]}"
            setattr(self, name, SG3Layer(
                w_dim, int(channels[p]), int(channels[i]), (int(sizes[p]), int(sizes[i])),
                (int(rates[p]), int(rates[i])), (cutoffs[p], cutoffs[i]), (widths[p], widths[i]),
                torgb=i == layers,
            ))  # fmt: skip
            self.layer_names.append(name)
        self.num_ws = layers + 2

    def forward(self, ws: torch.Tensor, **layer_kwargs: object) -> torch.Tensor:
        w = ws.to(torch.float32).unbind(dim=1)
        x = self.input(w[0])
        for name, w_i in zip(self.layer_names, w[1:], strict=True):
            x = getattr(self, name)(x, w_i, **layer_kwargs)
        if self.output_scale != 1:  # OpenVINO folds it into the last (1x1 identity) convolution
            x = x * self.output_scale
        return x


class StyleGenerator(nn.Module):
    """``forward(z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs)``, with
    ``mapping`` and ``synthesis`` callable alone, as NVlabs' ``Generator`` is."""

    def __init__(self, synthesis: SG2Synthesis | SG3Synthesis, z_dim: int, c_dim: int) -> None:
        super().__init__()
        self.z_dim, self.c_dim = z_dim, c_dim
        self.synthesis = synthesis
        self.mapping = Mapping(z_dim, c_dim, W_DIM, synthesis.num_ws)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        **synthesis_kwargs: object,
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)


# --- factories: seeded, trained-like -----------------------------------------------------------


def trained_like(g: StyleGenerator, noise_strength: float = 0.1, seed: int = 1) -> StyleGenerator:
    """Noise strength set (NVlabs initialises it to 0) and ``w_avg`` the mean of mapping(z) over
    2,000 latents and uniform labels, as training leaves it; eval mode."""
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(noise_strength)
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(2000, g.z_dim, generator=gen)
        c = F.one_hot(torch.arange(2000) % max(g.c_dim, 1), max(g.c_dim, 1))[:, : g.c_dim]
        g.mapping.w_avg.copy_(g.mapping(z, c.float())[:, 0].mean(dim=0))
    return g.eval()


def sg2ada(c_dim: int = CLASSES, resolution: int = 32, channel_base: int = 2048,
           channel_max: int = 64, noise_strength: float = 0.1, num_fp16_res: int = 0,
           conv_clamp: float | None = None) -> StyleGenerator:  # fmt: skip
    """StyleGAN2-ADA-like, 32x32, channels 64 at most, conditional (10 classes)."""
    torch.manual_seed(0)
    synthesis = SG2Synthesis(W_DIM, resolution, channel_base, channel_max, num_fp16_res, conv_clamp)
    return trained_like(StyleGenerator(synthesis, Z_DIM, c_dim), noise_strength)


def sg2ada_uncond() -> StyleGenerator:
    return sg2ada(c_dim=0)


def sg2ada_small(c_dim: int = 0, noise_strength: float = 0.1) -> StyleGenerator:
    """16x16, 16 channels at most: the same layers, fast enough for many tests."""
    return sg2ada(c_dim, 16, 256, 16, noise_strength)


def sg2ada_small_fp16_blocks() -> StyleGenerator:
    """With NVlabs' training configuration's FP16 blocks (``num_fp16_res``, ``conv_clamp`` 256):
    eager runs them in FP16 (CPU too) and takes the fused path only at batch 1."""
    return sg2ada(0, 16, 256, 16, num_fp16_res=2, conv_clamp=256)


def sg3_t(c_dim: int = CLASSES, resolution: int = 16, channel_base: int = 1024,
          channel_max: int = 32, layers: int = 14, margin: int = 10,
          output_scale: float = 0.25) -> StyleGenerator:  # fmt: skip
    """StyleGAN3-T-like, 16x16, channels 32 at most, conditional (10 classes)."""
    torch.manual_seed(0)
    synthesis = SG3Synthesis(
        W_DIM, resolution, channel_base, channel_max, layers, margin=margin,
        output_scale=output_scale,
    )  # fmt: skip
    return trained_like(StyleGenerator(synthesis, Z_DIM, c_dim))


def sg3_t_small(c_dim: int = CLASSES, output_scale: float = 0.25) -> StyleGenerator:
    """8 channels, 3 layers and a margin of 2: the same constructs, fast enough for tests."""
    return sg3_t(c_dim, 16, 256, 8, layers=3, margin=2, output_scale=output_scale)


for _factory in (
    sg2ada,
    sg2ada_uncond,
    sg2ada_small,
    sg2ada_small_fp16_blocks,
    sg3_t,
    sg3_t_small,
):
    _factory.gendeploy_loads_weights = True  # type: ignore[attr-defined]  # seeded in the factory
