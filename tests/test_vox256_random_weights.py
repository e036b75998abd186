"""Random-weight vox256 files: official key layouts, loadable by every public loader, runnable.

The layouts are checked key for key (name, shape, dtype) against the official-code manifests when
/work/shared is present; the write -> status -> load -> run round trip needs nothing but the repo.
"""
from __future__ import annotations

import pytest
import torch

from engines.core.statedict import build_on_meta
from engines.method.reenact_latent import official_latent
from engines.models.arcface import ArcFace
from engines.models.deca import DecaEncoder, deca_p, load_ranges
from engines.models.directions import Directions
from engines.models.e4e import E4E
from engines.models.lpips import LPIPS
from engines.models.stylegan2 import StyleGAN2
from engines.weights import cli
from engines.weights import files as weights
from engines.weights.random_weights import write_random_vox256
from tests.fixture_weights import manifest


@pytest.mark.parametrize("fixture, factory", [
    ("stylegan2_rosinality_256_cm1", lambda: StyleGAN2(256, channel_multiplier=1)),
    ("stylegan2_rosinality_64_cm1", lambda: StyleGAN2(64, channel_multiplier=1)),
    ("e4e", lambda: E4E(14)),
    ("deca_eflame", DecaEncoder),
])
def test_model_layouts_equal_the_official_ones(shared_dir, fixture, factory):
    ours = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in build_on_meta(factory).state_dict().items()}
    official = {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in manifest(fixture)["weight_recipe"]["keys"]}
    assert ours == official


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vox64")
    paths = write_random_vox256(d, size=64, seed=0, training=True)
    assert set(paths) == set(weights.VOX256)
    return d


def test_status_ready(zoo_dir, capsys):
    assert cli.main(["status", "--dir", str(zoo_dir)]) == 0
    out = capsys.readouterr().out
    assert "ready for --zoo vox256" in out and "missing" not in out and "invalid" not in out


def test_pipeline_runs_on_random_files(zoo_dir):
    d = zoo_dir
    f = {n: d / w.filename for n, w in weights.VOX256.items()}
    G = StyleGAN2.from_checkpoint(f["generator"])
    E = E4E.from_checkpoint(f["e4e"])
    D = DecaEncoder.from_checkpoint(f["deca"])
    A = Directions.from_checkpoint(f["directions"])
    R = load_ranges(f["ranges"])
    arc = ArcFace.from_checkpoint(f["arcface"])
    lp = LPIPS.from_checkpoint(f["lpips_lin"], f["alexnet"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        src = torch.rand(1, 3, 256, 256, generator=g) * 2 - 1
        w_s = E(src)
        assert w_s.shape == (1, G.n_latent, 512)
        faces = torch.rand(2, 3, 224, 224, generator=g)
        p = deca_p(D(faces), R)
        shift = A(p[1:] - p[:1])
        w_r = official_latent(w_s, shift, G.latent_avg)
        img = G.synthesize(w_r)
        assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()
        up = torch.nn.functional.interpolate(img, size=112)
        assert torch.allclose(arc(up).norm(dim=1), torch.ones(1), atol=1e-5)
        assert lp(up, up).item() == 0.0
