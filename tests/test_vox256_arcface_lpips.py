"""ArcFace IR-SE-50 and LPIPS(alex) loaders: layouts, validation and closed-form properties.

No official fixtures exist for these two, so the checks are: files in the documented layouts load
(and key-for-key into the model), wrong layouts fail with the layout named, and properties that hold
for any weights: ArcFace embeddings are unit vectors, independent across the batch; LPIPS(x, x) = 0,
it is symmetric, non-negative for non-negative heads, and equals a direct evaluation of its formula
written here with plain conv calls (tolerance 1e-5 relative: same float32 ops, different grouping).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engines.core.errors import UserError
from engines.models.arcface import ArcFace
from engines.models.lpips import LPIPS
from engines.weights.random_weights import random_arcface, random_lpips


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("arc") / "model_ir_se50.pth"
    sd = random_arcface(seed=3)
    # make BatchNorm non-trivial so eval-mode statistics matter
    g = torch.Generator().manual_seed(7)
    for k in sd:
        if k.endswith("running_mean"):
            sd[k] = torch.randn(sd[k].shape, generator=g) * 0.1
        elif k.endswith("running_var"):
            sd[k] = 1 + 0.1 * torch.rand(sd[k].shape, generator=g)
    torch.save(sd, p)
    return p, sd


def test_arcface_loads_and_embeds_unit_vectors(arcface_file, tmp_path):
    p, sd = arcface_file
    net = ArcFace.from_checkpoint(p)
    assert set(net.state_dict()) == set(sd)
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        e = net(x)
        assert e.shape == (3, 512)
        assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
        assert torch.allclose(net(x[1:2]), e[1:2], atol=1e-5)  # eval BatchNorm: no batch coupling
        assert net.embed_256(torch.zeros(2, 3, 256, 256)).shape == (2, 512)
    # DataParallel-prefixed files load too
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "dp.pth")
    assert isinstance(ArcFace.from_checkpoint(tmp_path / "dp.pth"), ArcFace)


def test_arcface_wrong_layout_named(arcface_file, tmp_path):
    _, sd = arcface_file
    bad = dict(sd)
    bad["output_layer.3.weight"] = torch.zeros(512, 512 * 4 * 4)  # a 64-px-input head
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"model_ir_se50.*output_layer.3.weight"):
        ArcFace.from_checkpoint(tmp_path / "bad.pth")
    torch.save({k: v for k, v in sd.items() if not k.startswith("body.23.")}, tmp_path / "short.pth")
    with pytest.raises(UserError, match=r"missing \d+ keys \('body.23"):
        ArcFace.from_checkpoint(tmp_path / "short.pth")
    with pytest.raises(ValueError, match="112"):
        ArcFace.from_checkpoint(arcface_file[0])(torch.zeros(1, 3, 128, 128))


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    alex, lin = random_lpips(seed=5)
    alex = {**alex, "classifier.1.weight": torch.zeros(4096, 9216)}  # torchvision files carry a classifier
    torch.save(alex, d / "alexnet-owt-7be5be79.pth")
    torch.save(lin, d / "alex.pth")
    # the lpips package's full-module layout: net.sliceK.<torchvision index>.*, scaling_layer buffers
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    full = {f"net.slice{slice_of[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v for k, v in alex.items()
            if k.startswith("features.")}
    full.update(lin)
    full["scaling_layer.shift"] = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
    full["scaling_layer.scale"] = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
    torch.save(full, d / "lpips_full.pth")
    return d, alex, lin


def _reference_lpips(x, y, alex, lin):
    """LPIPS written out: scale, five conv+ReLU taps (maxpool 3/2 before conv2, conv3), unit-normalise,
    weight the squared difference, spatial mean, sum."""
    def taps(t):
        t = (t - torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)) / torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
        out = []
        for i, (idx, stride, pad) in enumerate([(0, 4, 2), (3, 1, 2), (6, 1, 1), (8, 1, 1), (10, 1, 1)]):
            if i in (1, 2):
                t = F.max_pool2d(t, 3, 2)
            t = F.relu(F.conv2d(t, alex[f"features.{idx}.weight"], alex[f"features.{idx}.bias"], stride, pad))
            out.append(t)
        return out
    total = 0
    for i, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        total = total + ((a - b) ** 2 * lin[f"lin{i}.model.1.weight"].view(1, -1, 1, 1)).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_layouts_and_properties(lpips_files):
    d, alex, lin = lpips_files
    two = LPIPS.from_checkpoint(d / "alex.pth", d / "alexnet-owt-7be5be79.pth")
    one = LPIPS.from_checkpoint(d / "lpips_full.pth")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 96, 96, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 96, 96, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        dxy, dyx, dxx = two(x, y), two(y, x), two(x, x)
        assert dxy.shape == (2,)
        assert torch.equal(dxx, torch.zeros(2))
        assert torch.allclose(dxy, dyx, rtol=1e-6, atol=0) and (dxy > 0).all()
        assert torch.equal(one(x, y), dxy)
        ref = _reference_lpips(x, y, alex, lin)
    assert torch.allclose(dxy, ref, rtol=1e-5, atol=1e-7)


def test_lpips_bad_inputs(lpips_files, tmp_path):
    d, alex, lin = lpips_files
    with pytest.raises(UserError, match="also give the torchvision AlexNet"):
        LPIPS.from_checkpoint(d / "alex.pth")
    torch.save({**lin, "lin4.model.1.weight": torch.zeros(1, 128, 1, 1)}, tmp_path / "alex.pth")
    with pytest.raises(UserError, match=r"lin4.model.1.weight.*\(1, 128, 1, 1\)"):
        LPIPS.from_checkpoint(tmp_path / "alex.pth", d / "alexnet-owt-7be5be79.pth")
    full = torch.load(d / "lpips_full.pth", weights_only=True)
    full["scaling_layer.scale"] = torch.ones(1, 3, 1, 1)
    torch.save(full, tmp_path / "full.pth")
    with pytest.raises(UserError, match="scaling_layer.scale"):
        LPIPS.from_checkpoint(tmp_path / "full.pth")
