"""Low-rank avatar weights (engines/accel/lowrank.py) against the grouped form with full per-sample weights.

The reference for every sample b is the official grouped computation (ModulatedConv2d._grouped, or a
plain transposed conv) run with the materialised weight W + U_b V_b, one sample at a time. Layer sizes
are the official ones (vox256 StyleGAN2-256, channel multiplier 1; the DCGAN of the default zoo).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from engines.accel.lowrank import LowRankDelta, conv_transpose_low_rank, factors, matrix_shape, modconv_low_rank
from engines.method.zoos import RECIPES
from engines.models.stylegan2_ops import ModulatedConv2d


def _random_factors(rows, cols, b, r, g, scale):
    return torch.randn(b, rows, r, generator=g) * scale, torch.randn(b, r, cols, generator=g) * scale


def _close(a, b, tol):
    err = ((a - b).norm() / b.norm()).item()
    assert err < tol, err


# (in, out, spatial in, upsample): StyleGAN2-256's convs.4 (16 -> 32 px), convs.5 (32 px), convs.11 (256 px)
LAYERS = [(512, 512, 16, True), (512, 512, 32, False), (64, 64, 64, False)]


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("layer", LAYERS, ids=["up16", "conv32", "conv64x64ch"])
def test_modconv_low_rank_equals_grouped_full_weights(batch, layer):
    cin, cout, hw, up = layer
    g = torch.Generator().manual_seed(batch * 7 + cin)
    conv = ModulatedConv2d(cin, cout, 3, 512, upsample=up)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    x = torch.randn(batch, cin, hw, hw, generator=g)
    style = 1 + 0.3 * torch.randn(batch, cin, generator=g)
    rows, cols = matrix_shape(conv.weight.shape)
    u, v = _random_factors(rows, cols, batch, 8, g, 0.3)   # |dW| ~ 0.3 |W| per entry: a large tuning
    with torch.no_grad():
        out = modconv_low_rank(conv, x, style, u, v)
        ref = []
        for i in range(batch):
            one = copy.deepcopy(conv)
            one.weight.add_((u[i] @ v[i]).view(one.weight.shape))
            ref.append(one._grouped(x[i:i + 1], style[i:i + 1]))
        ref = torch.cat(ref)
    assert out.shape == ref.shape
    _close(out, ref, 1e-5)
    # and the delta matters: the shared weight alone is far off
    with torch.no_grad():
        plain = conv._shared(x, style)
    assert ((plain - ref).norm() / ref.norm()).item() > 0.05


# DCGAN: main.3 (512 -> 256, 4 -> 8 px), main.12 (64 -> 3, 32 -> 64 px)
DCGAN_LAYERS = [(512, 256, 4), (64, 3, 32)]


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("layer", DCGAN_LAYERS, ids=["main3", "main12"])
def test_conv_transpose_low_rank_equals_per_sample_weights(batch, layer):
    cin, cout, hw = layer
    g = torch.Generator().manual_seed(batch + cout)
    m = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
    x = torch.randn(batch, cin, hw, hw, generator=g)
    rows, cols = matrix_shape(m.weight.shape)
    u, v = _random_factors(rows, cols, batch, 3, g, 0.05)
    with torch.no_grad():
        out = conv_transpose_low_rank(m, x, u, v)
        ref = torch.cat([F.conv_transpose2d(x[i:i + 1], m.weight + (u[i] @ v[i]).view(m.weight.shape),
                                            stride=2, padding=1) for i in range(batch)])
    _close(out, ref, 1e-5)


def test_factors_recover_a_low_rank_delta_and_bound_a_full_one():
    g = torch.Generator().manual_seed(3)
    u, v = torch.randn(256, 6, generator=g), torch.randn(6, 512 * 16, generator=g)
    delta = (u @ v).view(256, 512, 4, 4)       # rows = 256 in a [in, out, k, k] transposed-conv weight
    fu, fv = factors(delta, 6)
    _close((fu @ fv).view_as(delta), delta, 1e-5)
    full = torch.randn(256, 512, 4, 4, generator=g)
    fu, fv = factors(full, 16)
    residual = ((full.view(256, -1) - fu @ fv).norm() / full.norm()).item()
    assert 0.5 < residual < 1.0                 # a random full delta is far from rank 16 (Eckart-Young)


def test_parametrized_layer_starts_at_the_shared_weight_and_learns_a_low_rank_change():
    g = torch.Generator().manual_seed(4)
    m = nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False)
    w0 = m.weight.detach().clone()
    parametrize.register_parametrization(m, "weight", LowRankDelta(m.weight, 4, g))
    assert torch.equal(m.weight, w0)            # U = 0: tuning starts from G
    opt = torch.optim.Adam(m.parametrizations.weight[0].parameters(), lr=1e-2)   # U, V only
    x = torch.randn(2, 64, 8, 8, generator=g)
    target = torch.randn(2, 32, 16, 16, generator=g)
    for _ in range(20):
        loss = F.mse_loss(m(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    delta = (m.weight - w0).detach()
    assert delta.abs().max() > 1e-3
    assert torch.linalg.matrix_rank(delta.reshape(64, -1)).item() <= 4
    with pytest.raises(ValueError):
        LowRankDelta(torch.zeros(3, 3), 2)


def _low_rank_tuned(g, prefixes, rank, seed, scale):
    """Tuned tensors as low-rank enrollment makes them: conv weights base + U V, the rest perturbed whole."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, p in g.named_parameters():
        if not n.startswith(prefixes):
            continue
        if n.endswith(".weight") and p.dim() >= 4:
            rows, cols = matrix_shape(p.shape)
            u = torch.randn(rows, rank, generator=gen) * scale
            out[n] = p.detach() + (u @ torch.randn(rank, cols, generator=gen) * scale).view(p.shape) * p.detach().std()
        else:
            out[n] = p.detach() + scale * torch.randn(p.shape, generator=gen) * (p.detach().std(correction=0) + 0.1)
    return out


@pytest.mark.parametrize("batch", [1, 8])
def test_stylegan2_low_rank_batch_equals_grouped_full_weights(batch):
    """Official-size StyleGAN2-256 (random weights), vox256's tuned layers, each sample its own avatar."""
    from engines.accel.avatar_batch import AvatarBank, StyleGAN2Batch
    from engines.accel.lowrank import LowRankBank, StyleGAN2LowRank
    from engines.weights.random_weights import random_stylegan2
    from engines.models.stylegan2 import StyleGAN2
    sd, _ = random_stylegan2(256, 1, seed=3)
    g = StyleGAN2.from_state_dict(sd)
    prefixes = RECIPES["vox256"].tuning.layers
    slots = min(batch, 4) + 1
    full, low = AvatarBank(g, prefixes, slots), LowRankBank(g, prefixes, 8, slots)
    for s in range(1, slots):
        t = _low_rank_tuned(g, prefixes, 8, seed=s, scale=0.15)
        full.set(s, t)
        low.set(s, t)
    slot = torch.arange(batch) % slots if batch > 1 else torch.tensor([1])
    lat = g.sample_latents(batch, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = StyleGAN2Batch(g, full)(lat, slot)
        out = StyleGAN2LowRank(g, low)(lat, slot)
        untuned = g.synthesize(lat)
    _close(out, ref, 1e-4)
    tuned = slot > 0   # the tuned samples really differ from G
    assert ((ref[tuned] - untuned[tuned]).norm() / untuned[tuned].norm()).item() > 0.05


@pytest.mark.parametrize("batch", [1, 8])
def test_dcgan_low_rank_batch_equals_grouped_full_weights(batch):
    from engines.accel.avatar_batch import AvatarBank, DCGANBatch
    from engines.models.dcgan import DCGAN
    from engines.accel.lowrank import DCGANLowRank, LowRankBank
    g = DCGAN.from_checkpoint()
    prefixes = RECIPES["default"].tuning.layers
    full, low = AvatarBank(g, prefixes, 4), LowRankBank(g, prefixes, 16, 4)
    for s in (1, 2, 3):
        t = _low_rank_tuned(g, prefixes, 16, seed=20 + s, scale=0.1)
        full.set(s, t)
        low.set(s, t)
    slot = torch.arange(batch) % 4
    z = torch.randn(batch, 100, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _close(DCGANLowRank(g, low)(z, slot), DCGANBatch(g, full)(z, slot), 1e-4)


def test_low_rank_bank_factors_only_conv_weights_and_is_smaller():
    from engines.accel.avatar_batch import AvatarBank
    from engines.models.dcgan import DCGAN
    from engines.accel.lowrank import LowRankBank
    g = DCGAN.from_checkpoint()
    full, low = AvatarBank(g, RECIPES["default"].tuning.layers, 9), LowRankBank(g, RECIPES["default"].tuning.layers, 16, 9)
    # rank 16 halves main.3, main.6, main.9; main.12 (64 -> 3) stays whole
    assert low.factored == ["main.3.weight", "main.6.weight", "main.9.weight"]
    assert low.has("main.4.weight") and not low.has("main.3.weight")
    size = lambda bank: sum(b.numel() for b in bank.buffers())
    assert size(low) < 0.1 * size(full)
