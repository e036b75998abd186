"""engines.accel.avatar_batch: the batched generators the engine's generator stage runs on a GPU, each
sample gathering its own avatar's tuned weights from the bank.

References and tolerances:
  * StyleGAN2Batch == the official rosinality code's fixture images to 1e-3 (as
    tests/test_vox256_stylegan2.py); bf16 within 5e-2; fp16 top blocks within the fp16 engine tolerance
    (relative L2 2e-2, engines.accel.compile.TOLERANCE; checked where CUDA is present);
  * a batch whose samples use different avatars' tuned weights == each sample alone through a copy
    of G with that avatar's weights loaded: 1e-4 absolute (outputs |x| <= ~10; only summation
    order differs).
"""
from __future__ import annotations

import copy

import pytest
import torch

from engines.accel.avatar_batch import AvatarBank, DCGANBatch, StyleGAN2Batch
from engines.method.zoos import RECIPES
from engines.models.stylegan2 import StyleGAN2
from engines.weights.random_weights import random_stylegan2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On the shared 2-vCPU VM, two OpenMP threads wait ~8 ms per op for a descheduled peer: 1 is faster.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tuned(g, prefixes, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    return {n: p + scale * p.abs().mean() * torch.randn(p.shape, generator=gen)
            for n, p in g.named_parameters() if n.startswith(prefixes)}


def _with(g, tuned):
    g2 = copy.deepcopy(g)
    g2.load_state_dict({**g.state_dict(), **tuned})
    return g2


def test_generator_batch_matches_official_fixture(shared_dir):
    from tests.fixture_weights import load_npy, max_abs_diff, recipe_state_dict
    name = "stylegan2_rosinality_64_cm1"
    g = StyleGAN2.from_state_dict(recipe_state_dict(name))
    w = torch.from_numpy(load_npy(name, "inputs/w_plus.npy"))
    want = load_npy(name, "outputs/images_from_w_plus.npy")
    runner = StyleGAN2Batch(g, AvatarBank(g, RECIPES["vox256"].tuning.layers, 2), half_blocks=4)
    with torch.no_grad():
        for mode in ("grouped", "shared"):
            g.set_conv_mode(mode)
            assert max_abs_diff(runner(w), want) <= 1e-3
            # slot 0 of the bank = the base weights, gathered per sample
            assert max_abs_diff(runner(w, torch.zeros(len(w), dtype=torch.long)), want) <= 1e-3
            ref = torch.from_numpy(want).double()
            for dtype, tol in ((torch.bfloat16, 5e-2),):
                out = runner(w, None, dtype).double()
                assert torch.isfinite(out).all()
                assert ((out - ref).norm() / ref.norm()).item() <= tol, (mode, dtype)
            if torch.cuda.is_available():  # CPU fp16 convolutions take a reference path (~30 s per image)
                out = copy.deepcopy(runner).cuda()(w.cuda(), None, torch.float16).double().cpu()
                assert torch.isfinite(out).all()
                assert ((out - ref).norm() / ref.norm()).item() <= 2e-2, (mode, "fp16")
        g.set_conv_mode("grouped")


@pytest.mark.parametrize("mode", ["grouped", "shared"])
def test_stylegan2_avatar_batch_equals_each_alone(mode):
    sd, _ = random_stylegan2(64, 1, seed=5)
    g = StyleGAN2.from_state_dict(sd).set_conv_mode(mode)
    prefixes = RECIPES["vox256"].tuning.layers
    bank = AvatarBank(g, prefixes, slots=4)
    tuned = {s: _tuned(g, prefixes, seed=s, scale=0.2) for s in (1, 2, 3)}
    for s, t in tuned.items():
        bank.set(s, t)
    runner = StyleGAN2Batch(g, bank)
    lat = g.sample_latents(5, torch.Generator().manual_seed(9))
    slot = torch.tensor([2, 0, 3, 1, 2])
    with torch.no_grad():
        out = runner(lat, slot)
        for i, s in enumerate(slot.tolist()):
            alone = (_with(g, tuned[s]) if s else g).synthesize(lat[i:i + 1])
            assert (out[i:i + 1] - alone).abs().max().item() <= 1e-4, (i, s)
    # samples of one avatar are not affected by another avatar's weights
    assert (out[0] - out[4]).abs().max() > 0 or torch.equal(lat[0], lat[4])


def test_dcgan_avatar_batch_equals_each_alone():
    from engines.models.dcgan import DCGAN
    g = DCGAN.from_checkpoint()
    prefixes = RECIPES["default"].tuning.layers
    bank = AvatarBank(g, prefixes, slots=3)
    tuned = {s: _tuned(g, prefixes, seed=10 + s, scale=0.1) for s in (1, 2)}
    for s, t in tuned.items():
        bank.set(s, t)
    runner = DCGANBatch(g, bank)
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(2))
    slot = torch.tensor([1, 2, 0, 1])
    with torch.no_grad():
        out = runner(z, slot)
        for i, s in enumerate(slot.tolist()):
            alone = (_with(g, tuned[s]) if s else g).synthesize(z[i:i + 1])
            assert (out[i:i + 1] - alone).abs().max().item() <= 1e-4, (i, s)


def test_bank_rejects_foreign_weights_and_keeps_slot0():
    from engines.core.errors import UserError
    sd, _ = random_stylegan2(64, 1, seed=1)
    g = StyleGAN2.from_state_dict(sd)
    bank = AvatarBank(g, RECIPES["vox256"].tuning.layers, slots=2)
    with pytest.raises(UserError):
        bank.set(1, {"conv1.conv.weight": g.conv1.conv.weight})
    with pytest.raises(UserError):
        bank.set(1, {"convs.4.conv.weight": torch.zeros(1, 2, 3, 3, 3)})
    with pytest.raises(ValueError):
        bank.set(0, {})  # slot 0 is the base generator
    name = "convs.4.conv.weight"
    bank.set(1, {name: torch.zeros_like(g.convs[4].conv.weight)})
    assert torch.equal(bank.get(name)[0], g.convs[4].conv.weight) and bank.get(name)[1].abs().sum() == 0
    bank.reset(1)
    assert torch.equal(bank.get(name)[1], g.convs[4].conv.weight)
