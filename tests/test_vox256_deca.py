"""DECA E_flame (Net3D) and the paper's 15-d p against the official-code fixture.

Weights: recipe -> {'E_flame': state dict} saved as deca_model.tar -> `DecaEncoder.from_checkpoint`.
Tolerances (absolute):
  * 236 parameters and their split: 1e-4 (|x| <= 1.24; official float32-vs-float64 gap 6e-7, batch-1
    vs batch-2 gap 3.6e-7); features/stem/layer1 taps 1e-4 (|x| <= 2.7). Measured: <= 3.6e-7.
  * Euler angles: 1e-3 degree (manifest; measured 1.1e-5, float32 atan2/asin rounding).
  * p from the official pose/exp (float64 formula check): 1e-6 (measured 2.5e-7, the fixture's own
    float32 angles); p and the make_shift vector from our own forward pass: 1e-4 (angles error x 0.3,
    jaw error x 39). Measured: 5.8e-6 and 8.5e-6.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.core.errors import UserError
from engines.models.deca import (
    P_NAMES,
    DecaEncoder,
    angles_before_turn,
    axis_angle_to_euler,
    deca_p,
    load_ranges,
    normalise_p,
    range_coefficients,
)
from tests.fixture_weights import FIXTURES, load_npy, manifest, max_abs_diff, recipe_state_dict

NAME = "deca_eflame"


@pytest.fixture(scope="module")
def model(shared_dir, tmp_path_factory):
    p = tmp_path_factory.mktemp("deca") / "deca_model.tar"
    torch.save({"E_flame": recipe_state_dict(NAME), "E_detail": {}, "D_detail": {}}, p)
    return DecaEncoder.from_checkpoint(p)


@pytest.fixture(scope="module")
def ranges(shared_dir):
    return load_ranges(FIXTURES / NAME / "data" / "ranges_voxceleb.npy")


@pytest.fixture(scope="module")
def forward(model):
    img = torch.from_numpy(load_npy(NAME, "inputs/image_224.npy"))
    trace = {}
    with torch.no_grad():
        raw = model.encode_raw(img, trace)
        params = model(img)
    return raw, params, trace


def test_params_and_split(forward):
    raw, params, trace = forward
    assert max_abs_diff(raw, load_npy(NAME, "outputs/params_236.npy")) <= 1e-4
    sizes = {"shape": (2, 100), "tex": (2, 50), "exp": (2, 50), "pose": (2, 6), "cam": (2, 3), "light": (2, 9, 3)}
    for k, shape in sizes.items():
        assert tuple(params[k].shape) == shape
        assert max_abs_diff(params[k], load_npy(NAME, f"outputs/split_{k}.npy")) <= 1e-4, k
    assert max_abs_diff(trace["features_2048"], load_npy(NAME, "intermediates/features_2048.npy")) <= 1e-4
    assert max_abs_diff(trace["stem_maxpool_out"][:1], load_npy(NAME, "intermediates/stem_maxpool_out_img0.npy")) <= 1e-4
    assert max_abs_diff(trace["layer1_out"][:1], load_npy(NAME, "intermediates/layer1_out_img0.npy")) <= 1e-4


def test_euler_angles(forward):
    _, params, _ = forward
    ang = axis_angle_to_euler(params["pose"][:, :3])
    assert max_abs_diff(ang, load_npy(NAME, "outputs/angles_deg.npy")) <= 1e-3


def test_p_formula_on_official_params(ranges):
    pose = torch.from_numpy(load_npy(NAME, "outputs/split_pose.npy")).double()
    exp = torch.from_numpy(load_npy(NAME, "outputs/split_exp.npy")).double()
    p = deca_p({"pose": pose, "exp": exp}, ranges)
    assert p.shape == (2, 15) and len(P_NAMES) == 15
    assert max_abs_diff(p, load_npy(NAME, "outputs/p_normalised_15.npy")) <= 1e-6


def test_p_and_shift_from_our_forward(forward, ranges):
    _, params, _ = forward
    p = deca_p(params, ranges)
    assert max_abs_diff(p, load_npy(NAME, "outputs/p_normalised_15.npy")) <= 1e-4
    shift = (p[1] - p[0])[None].float()  # make_shift(source=image 0, target=image 1)
    assert max_abs_diff(shift, load_npy(NAME, "outputs/shift_make_shift.npy")) <= 1e-4


def test_range_coefficients_match_manifest(ranges):
    dn = manifest(NAME)["direction_normalisation"]
    a, b = range_coefficients(ranges)
    assert np.allclose(a, [dn["a_jaw"], *dn["a_exp"]], rtol=1e-12)
    assert np.allclose(b, [dn["b_jaw"], *dn["b_exp"]], rtol=1e-12, atol=1e-12)
    # the line maps [min, max] onto [-6, 6]
    r = ranges[3:15]
    assert np.allclose(a * r[:, 0] + b, -6) and np.allclose(a * r[:, 1] + b, 6)


def test_normalise_p_on_a_matrix_inputs(ranges):
    """a_matrix fixture: p_source/p_target from given angles, jaw and exp (closed form of make_shift)."""
    m = manifest("a_matrix")["inputs"]
    for side in ("source", "target"):
        d = m[f"deca_{side}"]
        p = normalise_p(torch.tensor([d["angles_deg"]], dtype=torch.float64),
                        torch.tensor([d["pose"][3]], dtype=torch.float64),
                        torch.tensor([d["exp"]], dtype=torch.float64), ranges)
        assert max_abs_diff(p[0], load_npy("a_matrix", f"inputs/p_{side}.npy")) <= 1e-9


def test_a_turn_of_the_image_changes_decas_roll_alone():
    """DECA's Euler order puts roll outermost: a head pose turned t degrees about the camera's axis
    (scipy composes the turn; the poses as axis-angle) reads the same yaw and pitch and t more roll, so
    the angles G shows before the turn are the asked ones less t of roll."""
    from scipy.spatial.transform import Rotation
    rng = np.random.default_rng(4)
    for aa, t in zip(rng.normal(0, 0.3, (10, 3)), rng.uniform(-20, 20, 10)):
        turned = (Rotation.from_euler("z", t, degrees=True) * Rotation.from_rotvec(aa)).as_rotvec()
        before, after = axis_angle_to_euler(torch.tensor(np.stack([aa, turned]), dtype=torch.float64)).numpy()
        assert np.allclose(after - before, [0.0, 0.0, t], atol=1e-9)
        assert np.allclose(angles_before_turn(after, t), before, atol=1e-9)


def test_euler_closed_form_and_gradients():
    """Rotations about one axis: x -> pitch = t, y -> yaw = -t (asin(R20) = -sin t), z -> roll = t."""
    t = 0.3
    ang = axis_angle_to_euler(torch.tensor([[t, 0, 0], [0, t, 0], [0, 0, t], [0, 0, 0]], dtype=torch.float64),
                              degrees=False)
    ref = torch.tensor([[0, t, 0], [-t, 0, 0], [0, 0, t], [0, 0, 0]], dtype=torch.float64)
    assert torch.allclose(ang, ref, atol=1e-12)
    deg = axis_angle_to_euler(torch.tensor([[t, 0.0, 0.0]]))
    assert math.isclose(deg[0, 1].item(), t * 180 / math.pi, rel_tol=1e-5)
    aa = torch.tensor([[0.1, -0.2, 0.15], [1e-9, 2e-9, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64,
                      requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: axis_angle_to_euler(x, degrees=False), (aa[:1],))
    g, = torch.autograd.grad(axis_angle_to_euler(aa).sum(), aa)  # finite at and near zero rotation
    assert torch.isfinite(g).all()


def test_bad_inputs(model, tmp_path):
    with pytest.raises(ValueError, match="224"):
        model(torch.zeros(1, 3, 256, 256))
    torch.save({"E_detail": {}}, tmp_path / "d.tar")
    with pytest.raises(UserError, match="no 'E_flame'"):
        DecaEncoder.from_checkpoint(tmp_path / "d.tar")
    np.save(tmp_path / "r.npy", np.zeros((50, 2)))
    with pytest.raises(UserError, match=r"\(50, 2\).*54, 2"):
        load_ranges(tmp_path / "r.npy")
    bad = np.tile([[1.0, -1.0]], (54, 1))
    np.save(tmp_path / "r2.npy", bad)
    with pytest.raises(UserError, match="min < max"):
        load_ranges(tmp_path / "r2.npy")
    np.save(tmp_path / "r3.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="cannot read"):
        load_ranges(tmp_path / "r3.npy")
    with pytest.raises(UserError, match="not found.*ranges_voxceleb"):
        load_ranges(tmp_path / "none.npy")
