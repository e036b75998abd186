"""Batched generators where every sample may use its own avatar's pivotal-tuned weights.

An avatar pack stores tuned values for a few generator layers (the zoo recipe's tuned layers, engines.method.recipes: StyleGAN2
`convs.4..11`, DCGAN `main.6/7/9/10/12`). Copying G per avatar and running sessions one by one wastes
the GPU; instead an `AvatarBank` stacks every avatar's tuned tensors ([slots, *shape], slot 0 = the
untuned base weights) and the batched generators gather each sample's weights by its slot index:

* StyleGAN2's modulated conv already builds one weight per sample in its grouped form
  (W_b = scale * W * s_b, demodulated); with a bank, W is simply W[slot_b]: same kernels, no extra
  cost. Layers that no avatar tunes keep whichever form the generator is set to; a layer with
  per-sample weights always runs grouped (the shared form needs one weight for the whole batch).
  Per-sample modulation weights, noise strengths and biases are gathered the same way.
* DCGAN's tuned transposed convs become grouped transposed convs (groups = batch) on gathered
  weights; tuned BatchNorms (eval mode) use gathered gamma/beta.

The bank's storage is allocated once; `set(slot, tuned)` copies in place, so engines captured
(CUDA graphs) or compiled over a bank stay valid when sessions come and go.

StyleGAN2Batch also implements NVlabs' mixed precision: with `half_blocks = n`, the n highest-
resolution blocks (32-256 px for n = 4 at 256 px) run their convolutions in fp16 with activations
clamped to +-256 (NVlabs' conv_clamp); styles, modulated weights and demodulation are computed in
fp32 then cast, and the RGB skip sum stays fp32.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from engines.core.errors import UserError
from engines.models.stylegan2_ops import SQRT2

CONV_CLAMP = 256.0


class AvatarBank(nn.Module):
    """Per-avatar values of the generator parameters whose names start with `prefixes`.

    get(name) -> [slots, *shape]; slot 0 always holds the generator's own (untuned) weights."""

    def __init__(self, generator: nn.Module, prefixes: Iterable[str], slots: int = 8):
        super().__init__()
        if slots < 1:
            raise ValueError("an avatar bank needs at least one slot")
        prefixes = tuple(prefixes)
        params = dict(generator.named_parameters())
        self.names = sorted(n for n in params if n.startswith(prefixes))
        if not self.names:
            raise ValueError(f"no generator parameters start with {prefixes}")
        self._attr = {n: f"bank_{i}" for i, n in enumerate(self.names)}
        for n in self.names:
            base = params[n].detach()
            self.register_buffer(self._attr[n], base.unsqueeze(0).repeat((slots,) + (1,) * base.dim()).clone())
        self.slots = slots

    def has(self, name: str) -> bool:
        return name in self._attr

    def get(self, name: str) -> torch.Tensor:
        return getattr(self, self._attr[name])

    @torch.no_grad()
    def set(self, slot: int, tuned: dict[str, torch.Tensor] | None) -> None:
        """Load one avatar's tuned tensors into `slot` (names it does not tune get the base value)."""
        if not 0 < slot < self.slots:
            raise ValueError(f"slot must be in 1..{self.slots - 1} (0 is the base weights), got {slot}")
        tuned = dict(tuned or {})
        unknown = set(tuned) - set(self.names)
        if unknown:
            raise UserError(f"avatar tunes parameters outside this bank: {sorted(unknown)[:3]} "
                            f"(bank holds {self.names[0]}..{self.names[-1]})")
        for n in self.names:
            dst = self.get(n)
            src = tuned.get(n, dst[0])
            if tuple(src.shape) != tuple(dst.shape[1:]):
                raise UserError(f"avatar: '{n}' has shape {tuple(src.shape)}, generator expects {tuple(dst.shape[1:])}")
            dst[slot].copy_(src.to(dst.dtype))

    def reset(self, slot: int) -> None:
        self.set(slot, None)


def _per_sample(shape_len: int, t: torch.Tensor) -> torch.Tensor:
    """[B, *rest] -> view broadcastable against [B, C, H, W] (rest = [C])."""
    return t.view(t.shape[0], -1, *([1] * (shape_len - 2)))


class StyleGAN2Batch(nn.Module):
    """forward(latent [B, n_latent, 512], slot [B] long or None, half: dtype or None) -> [B, 3, R, R] fp32.

    Equal to G.synthesize(latent) for samples of slot 0 (and to an avatar's tuned copy of G for the
    others); see the module doc for precision."""

    def __init__(self, generator, bank: AvatarBank | None = None, half_blocks: int = 4):
        super().__init__()
        self.g = generator
        self.bank = bank
        self.half_from = max(2 ** (generator.log_size + 1 - half_blocks), 8) if half_blocks else 10 ** 9

    # parameters: the module's own (shared by the batch) or the bank's, gathered per sample
    def _p(self, name: str, own: torch.Tensor, slot):
        if slot is not None and self.bank is not None and self.bank.has(name):
            return self.bank.get(name)[slot], True
        return own, False

    def _style(self, lin, prefix, w, slot):
        weight, ps = self._p(prefix + "weight", lin.weight, slot)
        bias, _ = self._p(prefix + "bias", lin.bias, slot)
        if ps:
            return torch.einsum("bij,bj->bi", weight * lin.scale, w) + bias * lin.lr_mul
        return F.linear(w, weight * lin.scale, bias * lin.lr_mul)

    def _modconv(self, conv, prefix, x, w, slot, half):
        style = self._style(conv.modulation, prefix + "modulation.", w, slot)
        weight, ps = self._p(prefix + "weight", conv.weight, slot)
        b, _, h, wd = x.shape
        if ps:
            weight = weight.squeeze(1)  # bank rows are [1, out, in, k, k]
        dt = half or x.dtype
        if ps or conv.grouped:
            wt = conv.scale * weight * style.view(b, 1, conv.in_ch, 1, 1)
            if conv.demodulate:
                wt = wt * torch.rsqrt(wt.pow(2).sum(dim=(2, 3, 4)) + 1e-8).view(b, conv.out_ch, 1, 1, 1)
            x = x.to(dt).reshape(1, b * conv.in_ch, h, wd)
            wt = wt.to(dt)
            if conv.upsample:
                wt = wt.transpose(1, 2).reshape(b * conv.in_ch, conv.out_ch, conv.k, conv.k)
                out = F.conv_transpose2d(x, wt, stride=2, padding=0, groups=b)
                return conv.blur(out.view(b, conv.out_ch, out.shape[-2], out.shape[-1]))
            out = F.conv2d(x, wt.reshape(b * conv.out_ch, conv.in_ch, conv.k, conv.k), padding=conv.padding, groups=b)
            return out.view(b, conv.out_ch, out.shape[-2], out.shape[-1])
        w0 = conv.scale * weight[0]
        xs = (x * style.to(x.dtype)[:, :, None, None]).to(dt)
        if conv.upsample:
            out = conv.blur(F.conv_transpose2d(xs, w0.transpose(0, 1).to(dt), stride=2, padding=0))
        else:
            out = F.conv2d(xs, w0.to(dt), padding=conv.padding)
        if conv.demodulate:
            energy = style.pow(2) @ w0.pow(2).sum(dim=(2, 3)).t()
            out = out * torch.rsqrt(energy + 1e-8).to(dt)[:, :, None, None]
        return out

    def _styled(self, sc, prefix, x, w, noise, slot, half):
        out = self._modconv(sc.conv, prefix + "conv.", x, w, slot, half)
        nw, ps = self._p(prefix + "noise.weight", sc.noise.weight, slot)
        out = out + (_per_sample(4, nw) if ps else nw).to(out.dtype) * noise.to(out.dtype)
        bias, ps = self._p(prefix + "activate.bias", sc.activate.bias, slot)
        bias = _per_sample(4, bias) if ps else bias.view(1, -1, 1, 1)
        out = F.leaky_relu(out + bias.to(out.dtype), 0.2) * SQRT2
        if half is not None:
            out = out.clamp(-CONV_CLAMP, CONV_CLAMP)
        return out

    def _to_rgb(self, tr, x, w, skip, half):
        conv = tr.conv
        style = conv.modulation(w)  # ToRGB is never tuned: one weight, modulate the input instead
        dt = half or x.dtype
        wt = conv.scale * conv.weight[0]  # [3, in, 1, 1]
        xs = (x * style.to(x.dtype)[:, :, None, None]).to(dt)
        out = F.conv2d(xs, wt.to(dt)).float()
        if half is not None:
            out = out.clamp(-CONV_CLAMP, CONV_CLAMP)
        out = out + tr.bias
        if skip is not None:
            out = out + tr.upsample(skip)
        return out

    def forward(self, latent: torch.Tensor, slot: torch.Tensor | None = None,
                half: torch.dtype | None = None) -> torch.Tensor:
        g = self.g
        if latent.ndim != 3 or tuple(latent.shape[1:]) != g.latent_shape:
            raise ValueError(f"expected W+ latents [B, {g.n_latent}, {g.style_dim}], got {tuple(latent.shape)}")
        if slot is not None and self.bank is None:
            slot = None
        noise = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
        w = latent
        out = g.input(w.shape[0])
        out = self._styled(g.conv1, "conv1.", out, w[:, 0], noise[0], slot, None)
        skip = self._to_rgb(g.to_rgb1, out, w[:, 1], None, None)
        i = 1
        for j, to_rgb in enumerate(g.to_rgbs):
            h = half if half is not None and 2 ** (j + 3) >= self.half_from else None
            if h is None and out.dtype != torch.float32:
                out = out.float()
            out = self._styled(g.convs[2 * j], f"convs.{2 * j}.", out, w[:, i], noise[i], slot, h)
            out = self._styled(g.convs[2 * j + 1], f"convs.{2 * j + 1}.", out, w[:, i + 1], noise[i + 1], slot, h)
            skip = self._to_rgb(to_rgb, out, w[:, i + 2], skip, h)
            i += 2
        return skip


class DCGANBatch(nn.Module):
    """forward(z [B, 100], slot [B] long or None) -> [B, 3, 64, 64]; equal to DCGAN.synthesize for
    slot 0 and to an avatar's tuned copy for the others."""

    def __init__(self, generator, bank: AvatarBank | None = None):
        super().__init__()
        self.g = generator
        self.bank = bank

    def _p(self, name, own, slot):
        if slot is not None and self.bank is not None and self.bank.has(name):
            return self.bank.get(name)[slot], True
        return own, False

    def _conv_t(self, k: int, m: nn.ConvTranspose2d, x: torch.Tensor, slot, dt) -> torch.Tensor:
        weight, ps = self._p(f"main.{k}.weight", m.weight, slot)
        if not ps:
            return F.conv_transpose2d(x, weight.to(dt), stride=m.stride, padding=m.padding)
        b, c, hh, ww = x.shape   # grouped transposed conv: weight [B, in, out, k, k] -> [B*in, out, k, k]
        y = F.conv_transpose2d(x.reshape(1, b * c, hh, ww), weight.reshape(b * c, *weight.shape[2:]).to(dt),
                               stride=m.stride, padding=m.padding, groups=b)
        return y.view(b, -1, y.shape[-2], y.shape[-1])

    def forward(self, z: torch.Tensor, slot: torch.Tensor | None = None, half: torch.dtype | None = None):
        x = z.view(z.shape[0], -1, 1, 1)
        dt = half or x.dtype
        x = x.to(dt)
        for k, m in enumerate(self.g.main):
            if isinstance(m, nn.ConvTranspose2d):
                x = self._conv_t(k, m, x, slot, dt)
            elif isinstance(m, nn.BatchNorm2d):
                gamma, ps_g = self._p(f"main.{k}.weight", m.weight, slot)
                beta, ps_b = self._p(f"main.{k}.bias", m.bias, slot)
                inv = torch.rsqrt(m.running_var + m.eps)
                gamma = _per_sample(4, gamma) if ps_g else gamma.view(1, -1, 1, 1)
                beta = _per_sample(4, beta) if ps_b else beta.view(1, -1, 1, 1)
                scale = gamma * inv.view(1, -1, 1, 1)
                x = x * scale.to(dt) + (beta - m.running_mean.view(1, -1, 1, 1) * scale).to(dt)
            else:
                x = m(x)
        return x.float()


def stylegan2_fp16_error(generator, latents: torch.Tensor, half_blocks: int = 4,
                         dtype: torch.dtype = torch.float16) -> dict:
    """Relative L2 error of the mixed-precision synthesis against fp32, and the fraction of fp16
    activations that hit the clamp (a sign the clamp changes the picture, not only guards overflow)."""
    runner = StyleGAN2Batch(generator, None, half_blocks)
    with torch.no_grad():
        ref = runner(latents)
        out = runner(latents, half=dtype)
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    return {"rel_l2": err, "max_abs": (out - ref).abs().max().item(), "finite": bool(torch.isfinite(out).all()),
            "half_from_px": runner.half_from}

