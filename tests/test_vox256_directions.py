"""The official A matrix file and reenactment latent formula (fixture a_matrix) end to end.

A_matrix.pt is a real file in the official layout; the generator is the stylegan2_rosinality_256_cm1
recipe (same weights the fixture used), saved as a rosinality .pt.
Tolerances (absolute): shift vector, A(shift) and w_r 1e-5 (manifest; float32 values |x| <= 10, a
15-term dot product); mean_latent 1e-4 (mean of 4096 mapped z, |x| ~ 1); images 1e-3 (|x| <= 6.5,
as in test_vox256_stylegan2). Measured here: 0.0 for all but the shift (1.2e-7, float32 rounding of
p_target - p_source).
"""
from __future__ import annotations

import pytest
import torch

from engines.core.errors import UserError
from engines.method.reenact_latent import OFFICIAL_PSI, official_latent
from engines.models.deca import P_NAMES
from engines.models.directions import Directions
from engines.models.stylegan2 import StyleGAN2
from tests.fixture_weights import FIXTURES, load_npy, max_abs_diff, recipe_state_dict

NAME = "a_matrix"


def npy(rel):
    return torch.from_numpy(load_npy(NAME, rel))


@pytest.fixture(scope="module")
def A(shared_dir):
    return Directions.from_checkpoint(FIXTURES / NAME / "A_matrix.pt")


@pytest.fixture(scope="module")
def G(shared_dir, tmp_path_factory):
    p = tmp_path_factory.mktemp("g256") / "stylegan-voxceleb.pt"
    torch.save({"g_ema": recipe_state_dict("stylegan2_rosinality_256_cm1")}, p)
    return StyleGAN2.from_checkpoint(p)


def test_official_file_loads(A):
    assert A.k == 15 and A.out_shape == (8, 512) and A.shift_scale == 6.0
    assert A.param_names == P_NAMES and A.zoo == "vox256"


def test_shift_and_A(A):
    shift = (npy("inputs/p_target.npy") - npy("inputs/p_source.npy")).float()[None]
    assert max_abs_diff(shift, npy("outputs/shift_vector.npy")) <= 1e-5
    with torch.no_grad():
        a_shift = A(npy("outputs/shift_vector.npy"))
    assert a_shift.shape == (1, 8, 512)
    assert max_abs_diff(a_shift, npy("outputs/A_shift.npy")) <= 1e-5


def test_official_latent_formula(shared_dir):
    w_s, m, a_shift = npy("inputs/w_source.npy"), npy("inputs/mean_latent.npy"), npy("outputs/A_shift.npy")
    assert OFFICIAL_PSI == 0.7
    w_r = official_latent(w_s, a_shift, m)
    assert max_abs_diff(w_r, npy("outputs/w_r.npy")) <= 1e-5
    # layers 8..13 are only truncated, never shifted; psi = 1 is "no truncation"
    assert torch.allclose(w_r[:, 8:], m + 0.7 * (w_s[:, 8:] - m), atol=1e-6)
    assert torch.equal(official_latent(w_s, a_shift, m, psi=1.0)[:, 8:], w_s[:, 8:])
    assert torch.allclose(official_latent(w_s, None, m[0], psi=0.5), m + 0.5 * (w_s - m), atol=1e-6)


def test_mean_latent_and_images(G):
    with torch.no_grad():
        m = G.mean_latent(4096, torch.Generator().manual_seed(905010))
        assert m.shape == (1, 512)
        assert max_abs_diff(m, npy("inputs/mean_latent.npy")) <= 1e-4
        w_s, m = npy("inputs/w_source.npy"), npy("inputs/mean_latent.npy")
        img = G.synthesize(official_latent(w_s, npy("outputs/A_shift.npy"), m))
        src = G.synthesize(official_latent(w_s, None, m))
    assert max_abs_diff(img, npy("outputs/reenacted_image.npy")) <= 1e-3
    assert max_abs_diff(src, npy("outputs/source_image_truncated.npy")) <= 1e-3


def test_trainer_layout_without_shift_dim_and_bad_files(shared_dir, tmp_path):
    ck = torch.load(FIXTURES / NAME / "A_matrix.pt", weights_only=True)
    trainer = {k: v for k, v in ck.items() if k != "shift_dim"}
    trainer["step"] = 20000
    torch.save(trainer, tmp_path / "trainer.pt")
    d = Directions.from_checkpoint(tmp_path / "trainer.pt")
    assert d.out_shape == (8, 512)
    assert torch.equal(d.linear.weight, ck["A_matrix"]["linear.weight"])
    torch.save({**ck, "A_matrix": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="'A_matrix' must"):
        Directions.from_checkpoint(tmp_path / "bad.pt")
    torch.save({**ck, "num_layers_shift": 6}, tmp_path / "bad2.pt")
    with pytest.raises(UserError, match="do not match"):
        Directions.from_checkpoint(tmp_path / "bad2.pt")
