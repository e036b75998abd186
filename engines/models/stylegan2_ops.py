"""StyleGAN2 building blocks in plain PyTorch, numerically matching rosinality/stylegan2-pytorch.

No custom CUDA ops: upfirdn2d and fused_leaky_relu are written with ordinary torch ops, so the model
runs (and can be compiled) on any device. Module and parameter names follow the rosinality layout so a
`g_ema` state dict loads key for key.

Numerics that matter (REFERENCE §3, fixture pitfalls):
  * equalised learning rate: stored weights are multiplied at run time (EqualLinear by
    lr_mul/sqrt(in), its bias by lr_mul; modulated convs by 1/sqrt(in*k*k));
  * the leaky ReLU (slope 0.2) is followed by a sqrt(2) gain, with the bias added before it;
  * FIR kernels are outer([1,3,3,1]) normalised to sum 1, times up**2 when upsampling; upfirdn2d is
    zero-insertion upsampling, padding, true convolution (flipped kernel), then subsampling.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def make_fir_kernel(taps=(1, 3, 3, 1), gain: float = 1.0) -> torch.Tensor:
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None] if k.ndim == 1 else k
    return k / k.sum() * gain


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (pad0 before, pad1 after, on both axes; negative crops), FIR
    filter every channel with `kernel` (true convolution), keep every `down`-th sample."""
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, (p0, p1, p0, p1))
    kh, kw = kernel.shape
    weight = torch.flip(kernel, (0, 1)).to(x.dtype).expand(c, 1, kh, kw)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, slope: float = 0.2,
                     gain: float = SQRT2) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), slope) * gain


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate; `activation=True` is rosinality's 'fused_lrelu'."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    def __init__(self, taps, pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel(taps, upsample_factor ** 2))
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self, taps, factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel(taps, factor ** 2))
        self.factor = factor
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution, optionally demodulated and/or 2x upsampling.

    Two mathematically equal forms (switch with `grouped`):
      * grouped (the official one): build one modulated weight per sample and run a grouped conv;
      * shared: scale the input channels by the style, run ONE conv with the shared weight, then scale
        the output channels by the demodulation coefficients. It batches like an ordinary conv.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False, blur_taps=(1, 3, 3, 1)):
        super().__init__()
        self.in_ch, self.out_ch, self.k = in_ch, out_ch, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.grouped = True
        if upsample:
            factor = 2
            p = (len(blur_taps) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_taps, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.modulation(w)  # [B, in]
        if self.grouped:
            return self._grouped(x, style)
        return self._shared(x, style)

    def _grouped(self, x, style):
        b, _, h, w_ = x.shape
        weight = self.scale * self.weight * style.view(b, 1, self.in_ch, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8).view(b, self.out_ch, 1, 1, 1)
        x = x.reshape(1, b * self.in_ch, h, w_)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * self.in_ch, self.out_ch, self.k, self.k)
            out = F.conv_transpose2d(x, weight, stride=2, padding=0, groups=b)
            out = self.blur(out.view(b, self.out_ch, out.shape[-2], out.shape[-1]))
        else:
            out = F.conv2d(x, weight.view(b * self.out_ch, self.in_ch, self.k, self.k),
                           padding=self.padding, groups=b)
            out = out.view(b, self.out_ch, out.shape[-2], out.shape[-1])
        return out

    def _shared(self, x, style):
        weight = self.scale * self.weight[0]  # [out, in, k, k]
        x = x * style[:, :, None, None]
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=0))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum_{i,kh,kw} (W[o,i] s[b,i])^2 = (s^2) @ (sum_k W^2)^T
            energy = style.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t()
            out = out * torch.rsqrt(energy + 1e-8)[:, :, None, None]
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise):
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    def __init__(self, in_ch, out_ch, kernel_size, style_dim, upsample=False, blur_taps=(1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim, upsample=upsample,
                                    blur_taps=blur_taps)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x, w, noise):
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    def __init__(self, in_ch, style_dim, upsample=True, blur_taps=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_taps)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, w, skip=None):
        out = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int):
        return self.input.expand(batch, -1, -1, -1)
