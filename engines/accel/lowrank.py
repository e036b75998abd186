"""Low-rank avatar weights: each avatar's pivotal-tuned convolution is the shared weight plus dW = U V.

Why: with full per-avatar weights, a batch of sessions must run every tuned layer as a grouped
convolution (one weight per sample). With dW = U V of rank r, the batch runs ONE convolution with the
shared weight for everybody, plus a per-sample term through r channels (r << the layer's width):

  conv(x, W + U V) = conv(x, W) + U . conv_r(x, V)          (V: r filters; U: a 1x1 map r -> out)

A conv weight is read as a matrix [rows, cols]:
  * StyleGAN2 ModulatedConv2d [1, out, in, k, k]: rows = out, cols = in k k (U mixes output channels);
  * ConvTranspose2d (DCGAN) [in, out, k, k]: rows = in, cols = out k k (U mixes input channels first).

StyleGAN2's demodulation needs each sample's output energy with the delta included:
  E[o] = scale^2 sum_j (W + D)[o, j]^2 S[j],  S[j] = style[i(j)]^2,  D = U V
       = scale^2 ( (W^2 S)[o] + 2 sum_r U[o, r] (W diag(S) V^T)[o, r] + sum_{r,r'} U[o, r] U[o, r'] (V diag(S) V^T)[r, r'] )
so no sample's full weight is ever built.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from engines.accel.avatar_batch import AvatarBank, DCGANBatch, StyleGAN2Batch
from engines.core.errors import UserError


def matrix_shape(weight_shape) -> tuple[int, int]:
    """[rows, cols] of the matrix a conv weight is factored as (see module doc)."""
    s = tuple(weight_shape)
    if len(s) == 5:     # StyleGAN2 modulated conv [1, out, in, k, k]
        return s[1], s[2] * s[3] * s[4]
    if len(s) == 4:     # transposed conv [in, out, k, k]
        return s[0], s[1] * s[2] * s[3]
    raise ValueError(f"a low-rank delta needs a conv weight, got shape {s}")


def worth_factoring(weight_shape, rank: int) -> bool:
    """Factor a weight only where U, V hold at most half its numbers: a small layer (DCGAN's last
    two) is cheaper and better tuned whole, and its grouped convolution costs little."""
    rows, cols = matrix_shape(weight_shape)
    return rank * (rows + cols) <= rows * cols // 2


class LowRankDelta(nn.Module):
    """Parametrization W -> W + U V (torch.nn.utils.parametrize) for pivotal tuning.

    U starts at zero so tuning starts from G itself; V is random with unit-variance rows of the
    product's scale, so Adam's first steps move dW about as much as they move a full weight."""

    def __init__(self, weight: torch.Tensor, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        rows, cols = matrix_shape(weight.shape)
        if not 0 < rank <= min(rows, cols):
            raise ValueError(f"rank must be in 1..{min(rows, cols)} for a {tuple(weight.shape)} weight, got {rank}")
        self.u = nn.Parameter(torch.zeros(rows, rank, dtype=weight.dtype))
        self.v = nn.Parameter(torch.randn(rank, cols, generator=generator, dtype=weight.dtype) / math.sqrt(rank))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.u @ self.v).view(w.shape)


def low_rank_deltas(G, names: list[str], rank: int) -> list[torch.Tensor]:
    """Puts W -> W + U V on every tuned conv weight of G worth factoring and returns
    the U, V to train; the other tuned weights are tuned whole."""
    gen = torch.Generator().manual_seed(0)
    modules = dict(G.named_modules())
    out = []
    for n in names:
        owner, leaf = n.rsplit(".", 1)
        weight = getattr(modules[owner], leaf)
        if leaf == "weight" and weight.dim() >= 4 and worth_factoring(weight.shape, rank):
            delta = LowRankDelta(weight.detach(), rank, gen)
            parametrize.register_parametrization(modules[owner], leaf, delta)
            out += [delta.u, delta.v]
    return out


def fold_low_rank(G) -> None:
    """Writes W + U V into each parametrized weight, so the tuned G and its pack are plain weights."""
    for m in list(G.modules()):
        if parametrize.is_parametrized(m):
            for leaf in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, leaf, leave_parametrized=True)


def factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U [rows, r], V [r, cols]) with U V the best rank-r approximation of a weight delta (SVD).

    Exact for a delta tuned at rank <= r, so a pack stores plain tuned weights and the batched
    engine recovers the factors when it loads the avatar."""
    rows, cols = matrix_shape(delta.shape)
    m = delta.reshape(rows, cols).double()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return (u[:, :r] * root).to(delta.dtype), (root[:, None] * vh[:r]).to(delta.dtype)


def relative_residual(delta: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> float:
    """|delta - U V| / |delta|: how much of a full-tuned delta rank r misses."""
    rows, cols = matrix_shape(delta.shape)
    m = delta.reshape(rows, cols)
    return float((m - u @ v).norm() / m.norm().clamp_min(1e-30))


# -- StyleGAN2: shared modulated conv + per-sample low-rank term ---------------------------------------

def modconv_low_rank(conv, x: torch.Tensor, style: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A ModulatedConv2d (`conv`, its own weight shared by the batch) whose sample b uses weight
    W + U[b] V[b]: x [B, in, H, W], style [B, in], u [B, out, r], v [B, r, in k k]."""
    b, c, h, wd = x.shape
    r = u.shape[-1]
    w0 = conv.scale * conv.weight[0]                          # [out, in, k, k]
    xs = x * style[:, :, None, None]
    vk = v.reshape(b * r, c, conv.k, conv.k)                  # each sample's r filters
    if conv.upsample:
        base = F.conv_transpose2d(xs, w0.transpose(0, 1), stride=2, padding=0)
        low = F.conv_transpose2d(xs.reshape(1, b * c, h, wd),
                                 vk.view(b, r, c, conv.k, conv.k).transpose(1, 2).reshape(b * c, r, conv.k, conv.k),
                                 stride=2, padding=0, groups=b)
    else:
        base = F.conv2d(xs, w0, padding=conv.padding)
        low = F.conv2d(xs.reshape(1, b * c, h, wd), vk, padding=conv.padding, groups=b)
    low = low.view(b, r, low.shape[-2], low.shape[-1])
    out = base + torch.einsum("bor,brhw->bohw", conv.scale * u, low)
    if conv.upsample:
        out = conv.blur(out)
    if conv.demodulate:
        out = out * torch.rsqrt(_energy(conv, style, u, v) + 1e-8)[:, :, None, None]
    return out


def _energy(conv, style: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_j (scale (W + U V)[o, j])^2 style[i(j)]^2 per sample, [B, out] (module doc)."""
    kk = conv.k * conv.k
    w = conv.weight[0].reshape(conv.out_ch, conv.in_ch * kk)
    s2 = style.pow(2).repeat_interleave(kk, dim=1)             # [B, in k k], j = (i, kh, kw)
    plain = s2 @ w.pow(2).t()                                  # [B, out]
    vs = v * s2[:, None, :]                                    # [B, r, in k k]
    cross = torch.einsum("oj,brj->bor", w, vs)                 # W diag(S) V^T
    gram = torch.einsum("brj,bqj->brq", vs, v)                 # V diag(S) V^T
    quad = torch.einsum("bor,brq,boq->bo", u, gram, u)
    return conv.scale ** 2 * (plain + 2 * (u * cross).sum(-1) + quad)


# -- DCGAN: shared transposed conv + per-sample low-rank term -------------------------------------------

def conv_transpose_low_rank(m: nn.ConvTranspose2d, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ConvTranspose2d `m` (no bias) whose sample b uses weight W + U[b] V[b]:
    x [B, in, H, W], u [B, in, r], v [B, r, out k k]. U first mixes the input into r channels."""
    b = x.shape[0]
    r = u.shape[-1]
    k = m.kernel_size
    base = F.conv_transpose2d(x, m.weight, stride=m.stride, padding=m.padding)
    xr = torch.einsum("bir,bihw->brhw", u, x)                  # [B, r, H, W]
    low = F.conv_transpose2d(xr.reshape(1, b * r, *x.shape[-2:]), v.reshape(b * r, m.out_channels, *k),
                             stride=m.stride, padding=m.padding, groups=b)
    return base + low.view_as(base)


# -- batched generators over an avatar bank that stores conv deltas as factors -------------------------

class LowRankBank(AvatarBank):
    """An AvatarBank whose tuned conv weights are kept as rank-r factors of (tuned - base):
    u(name) [slots, rows, r], v(name) [slots, r, cols]. Other tuned tensors (biases, BatchNorm and
    modulation weights, noise strengths) stay whole; `has(name)` is False for a factored weight, so
    the batched generators take the shared weight and add the low-rank term."""

    def __init__(self, generator: nn.Module, prefixes, rank: int, slots: int = 8):
        super().__init__(generator, prefixes, slots)
        self.rank = rank
        params = dict(generator.named_parameters())
        self.factored = [n for n in self.names if n.endswith(".weight") and params[n].dim() >= 4
                         and worth_factoring(params[n].shape, rank)]
        for n in self.factored:
            rows, cols = matrix_shape(params[n].shape)
            delattr(self, self._attr.pop(n))
            self.register_buffer(self._factor_attr(n, "u"), torch.zeros(slots, rows, rank, dtype=params[n].dtype))
            self.register_buffer(self._factor_attr(n, "v"), torch.zeros(slots, rank, cols, dtype=params[n].dtype))
        self.names = [n for n in self.names if n not in self.factored]   # what the parent bank keeps whole
        self._base = {n: params[n] for n in self.factored}

    @staticmethod
    def _factor_attr(name: str, which: str) -> str:
        return "lowrank_" + which + "_" + name.replace(".", "_")

    def factors(self, name: str, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if name not in self._base:
            return None
        return getattr(self, self._factor_attr(name, "u"))[slot], getattr(self, self._factor_attr(name, "v"))[slot]

    @torch.no_grad()
    def set(self, slot: int, tuned: dict[str, torch.Tensor] | None) -> None:
        tuned = dict(tuned or {})
        super().set(slot, {n: v for n, v in tuned.items() if n not in self._base})
        for n, base in self._base.items():
            u_buf = getattr(self, self._factor_attr(n, "u"))
            v_buf = getattr(self, self._factor_attr(n, "v"))
            if n in tuned:
                if tuple(tuned[n].shape) != tuple(base.shape):
                    raise UserError(f"avatar: '{n}' has shape {tuple(tuned[n].shape)}, generator expects {tuple(base.shape)}")
                u, v = factors(tuned[n].to(base.dtype) - base.detach(), self.rank)
            else:
                u, v = torch.zeros_like(u_buf[0]), torch.zeros_like(v_buf[0])
            u_buf[slot].zero_()
            v_buf[slot].zero_()
            u_buf[slot, :, :u.shape[1]].copy_(u)
            v_buf[slot, :v.shape[0]].copy_(v)


class StyleGAN2LowRank(StyleGAN2Batch):
    """StyleGAN2Batch whose tuned modulated convs run shared + low-rank (module doc) over a LowRankBank."""

    def _modconv(self, conv, prefix, x, w, slot, half):
        pair = self.bank.factors(prefix + "weight", slot) if slot is not None and self.bank is not None else None
        if pair is None:
            return super()._modconv(conv, prefix, x, w, slot, half)
        style = self._style(conv.modulation, prefix + "modulation.", w, slot)
        dt = half or x.dtype
        u, v = pair
        return modconv_low_rank(conv, x.to(dt), style.to(dt), u.to(dt), v.to(dt))


class DCGANLowRank(DCGANBatch):
    """DCGANBatch whose tuned transposed convs run shared + low-rank over a LowRankBank."""

    def _conv_t(self, k, m, x, slot, dt):
        pair = self.bank.factors(f"main.{k}.weight", slot) if slot is not None and self.bank is not None else None
        if pair is None:
            return super()._conv_t(k, m, x, slot, dt)
        u, v = pair
        return conv_transpose_low_rank(m, x, u.to(dt), v.to(dt))
