"""Calibration: statistics, normalisation, shape model, the least-squares baseline, training, evaluation."""
import json

import numpy as np
import pytest
import torch

from calibration.baseline import fit_least_squares
from calibration.evaluation.evaluate import evaluate
from calibration.prepare import TrainData, prepare
from calibration.sampling import sample_pool
from calibration.shape_model import fit_shape_model, similarity_align
from calibration.stats import compute_stats, crop_recipe
from calibration.train import TrainConfig, Trainer, init_directions
from engines.core.errors import UserError
from engines.method.default_zoo import RECIPE
from engines.method.pose import PARAM_NAMES, rotation_from_euler
from engines.method.zoo import Zoo
from engines.models.dcgan import DCGAN
from engines.models.directions import Directions


@pytest.fixture(scope="module")
def G():
    return DCGAN.from_checkpoint()


@pytest.fixture(scope="module")
def pool(G):
    return sample_pool(G, 80, seed=7, progress=False)


@pytest.fixture(scope="module")
def stats(pool):
    return {**compute_stats(pool, PARAM_NAMES), "crop_recipe": crop_recipe(pool, 64)}


def test_pool_and_stats(pool, stats):
    assert pool.detected.mean() > 0.8          # REFERENCE §4: ~90% of DCGAN faces are found
    p = pool.p[pool.detected]
    for i, name in enumerate(PARAM_NAMES):
        s = stats["params"][name]
        assert s["lo"] <= np.median(p[:, i]) <= s["hi"]
        assert s["lo"] == pytest.approx(np.percentile(p[:, i], 1))
    assert 1.0 < stats["crop_recipe"]["extent_factor"] < 1.6   # faces fill the 64 px frame


def test_normalisation_maps_range_to_a_and_round_trips():
    lo, hi = torch.tensor([-40.0, 0.0]), torch.tensor([40.0, 0.8])
    d = Directions(2, (5,), 6.0, ["yaw", "jawOpen"], "default", lo, hi)
    assert torch.allclose(d.normalise(torch.stack([lo, hi])), torch.tensor([[-6.0, -6.0], [6.0, 6.0]]))
    p = torch.tensor([[12.5, 0.3]])
    assert torch.allclose(d.denormalise(d.normalise(p)), p)
    assert d.normalise(torch.tensor([[20.0, 0.4]]))[0, 0] == pytest.approx(3.0)  # paper: deg * 6 / 40


def test_directions_file_round_trip_and_errors(tmp_path):
    d = Directions(3, (100,), 6.0, ["yaw", "pitch", "roll"], "default", [-1, -2, -3], [1, 2, 3],
                   meta={"crop_recipe": {"extent_factor": 1.3}})
    path = tmp_path / "A.safetensors"
    d.save(path)
    e = Directions.from_checkpoint(path, expect_zoo="default", expect_params=["yaw", "pitch", "roll"])
    dp = torch.randn(4, 3)
    assert torch.equal(d(dp), e(dp)) and torch.equal(d.lo, e.lo)
    assert e.meta["crop_recipe"]["extent_factor"] == 1.3
    with pytest.raises(UserError, match="zoo 'default', not 'vox256'"):
        Directions.from_checkpoint(path, expect_zoo="vox256")
    with pytest.raises(UserError, match="expect parameters"):
        Directions.from_checkpoint(path, expect_params=["yaw"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="corrupt"):
        Directions.from_checkpoint(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt or truncated"):
        Directions.from_checkpoint(junk)


def test_similarity_align_recovers_a_known_transform():
    X = torch.randn(3, 40, 3, dtype=torch.float64)
    R = torch.as_tensor(rotation_from_euler([[30, -10, 5], [-50, 20, 0], [0, 0, 90]]))
    Y = 0.7 * X @ R.transpose(1, 2) + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    s, R2, t = similarity_align(X, Y)
    assert torch.allclose(s, torch.full((3,), 0.7, dtype=torch.float64))
    assert torch.allclose(R2, R, atol=1e-10)


def test_shape_model_recovers_a_synthetic_basis():
    """Landmarks made as identity + basis * expression, randomly posed: the fit must find the basis
    (up to the Procrustes frame) and give identities free of expression."""
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(478, 3, generator=g, dtype=torch.float64)
    basis = 0.1 * torch.randn(478, 3, 2, generator=g, dtype=torch.float64)
    basis[:200] = 0  # a rigid part, as real faces have
    n = 300
    ident = mean + 0.02 * torch.randn(n, 478, 3, generator=g, dtype=torch.float64)
    expr = torch.rand(n, 2, generator=g, dtype=torch.float64)
    C = ident + torch.einsum("nde,be->bnd", basis, expr)
    R = torch.as_tensor(rotation_from_euler(np.random.default_rng(0).uniform(-30, 30, (n, 3))))
    L = 3.0 * C @ R.transpose(1, 2) + torch.randn(n, 1, 3, generator=g, dtype=torch.float64)
    m = fit_shape_model(L.float(), expr.float())
    canon, s, Rf, _ = m.canonical(L.float())
    rec = m.compose(m.identity(canon, expr.float()), expr.float())
    assert torch.allclose(rec, canon, atol=1e-4)
    # moving expression 0 by +1 moves the same landmarks, by the same relative amount
    k = m.basis[..., 0].norm(dim=-1)
    assert k[:200].max() < 0.2 * k[200:].mean()


def test_least_squares_baseline_moves_p_as_asked(pool, stats):
    lo = np.array([stats["params"][n]["lo"] for n in PARAM_NAMES])
    hi = np.array([stats["params"][n]["hi"] for n in PARAM_NAMES])
    ls, r2 = fit_least_squares(pool, lo, hi, PARAM_NAMES, "default")
    # closed form: W pinv(W) = I on the fitted linear model, so the model predicts exactly dp
    ok = pool.detected
    z = pool.latents[ok].astype(np.float64)
    p = ls.normalise(torch.as_tensor(pool.p[ok])).numpy()
    coef, *_ = np.linalg.lstsq(np.c_[z, np.ones(len(z))], p, rcond=None)
    W = coef[:-1].T
    assert np.allclose(W @ ls.linear.weight.double().numpy(), np.eye(len(PARAM_NAMES)), atol=1e-4)
    assert torch.count_nonzero(ls.linear.bias) == 0
    assert r2.max() <= 1.0


@pytest.fixture(scope="module")
def train_data(G, pool):
    from calibration.identity import IdentityScorer
    from engines.models.facelandmarker import FaceLandmarkerTorch
    lm = FaceLandmarkerTorch.from_task().requires_grad_(False)
    sc = IdentityScorer(PARAM_NAMES)
    return prepare(G, pool, lm, sc, progress=False), lm, sc


def test_prepare_cache_round_trip(train_data, tmp_path):
    data = train_data[0]
    data.save(tmp_path / "c.pt")
    back = TrainData.load(tmp_path / "c.pt")
    assert torch.equal(back.canonical, data.canonical) and torch.equal(back.shape_model.basis, data.shape_model.basis)


def test_reference_of_a_zero_shift_is_the_source_itself(G, train_data, stats):
    data, lm, sc = train_data
    A = init_directions(_zoo(G), stats, "random", None)
    tr = Trainer(G, data, A, lm, sc, TrainConfig(lr=1e-3, batch=4, seed=0))
    s = torch.arange(4)
    ref, expr, _ = tr.reference(s, data.p[s])
    from calibration.shape_model import to_camera
    with torch.no_grad():
        from engines.core.views import net3d_view
        out = lm(net3d_view(G.synthesize(data.z[s])), data.roi[s])
    got = to_camera(out["landmarks"])
    from calibration.losses import centred
    w = data.shape_model.rigid
    assert (centred(got, w) - centred(ref, w)).abs().max() < 1e-3 * data.scale[s].max()
    assert torch.allclose(expr, data.expr_port[s], atol=1e-5)


def test_single_direction_shifts_span_the_requested_range(G, train_data, stats):
    """Half of each batch moves one direction; --expr-range widens only the expression shifts."""
    data, lm, sc = train_data
    A = init_directions(_zoo(G), stats, "random", None)
    a = A.shift_scale
    for r in (1.0, 2.0):
        tr = Trainer(G, data, A, lm, sc, TrainConfig(lr=1e-3, batch=400, seed=3, expr_range=r))
        _, dp, _ = tr.sample()
        single = dp[200:]
        assert ((single != 0).sum(1) <= 1).all()
        angle = single[:, :3].abs().max().item()
        expr = single[:, 3:].abs().max().item()
        assert angle <= a and 0.8 * a < angle
        assert expr <= r * a and 0.8 * r * a < expr
    # --single-fraction: the share of such rows (0: every row a random pair)
    for frac, n_single in ((0.0, 0), (0.25, 100), (1.0, 400)):
        tr = Trainer(G, data, A, lm, sc, TrainConfig(lr=1e-3, batch=400, seed=3, single_fraction=frac))
        _, dp, _ = tr.sample()
        moved = (dp != 0).sum(1)
        assert int((moved[400 - n_single:] <= 1).sum()) == n_single
        if n_single < 400:   # random pairs move many parameters at once
            assert (moved[:400 - n_single] > 1).float().mean() > 0.95


@pytest.mark.slow
def test_training_steps_lower_the_loss_and_resume(G, train_data, stats, tmp_path):
    data, lm, sc = train_data
    torch.manual_seed(0)
    A = init_directions(_zoo(G), stats, "random", None)
    tr = Trainer(G, data, A, lm, sc, TrainConfig(lr=3e-3, batch=8, seed=1))
    batch = tr.sample()
    with torch.no_grad():
        before = tr.losses(*batch)[0].item()
    for _ in range(12):  # the same batch: the loss must fall
        total, _ = tr.losses(*batch)
        tr.opt.zero_grad()
        total.backward()
        tr.opt.step()
    with torch.no_grad():
        after = tr.losses(*batch)[0].item()
    assert after < before * 0.97, (before, after)
    # checkpoint round trip: a resumed trainer continues identically
    tr.train_step()
    torch.save(tr.state(), tmp_path / "ck.pt")
    nxt = tr.train_step()
    A2 = init_directions(_zoo(G), stats, "random", None)
    tr2 = Trainer(G, data, A2, lm, sc, TrainConfig(lr=3e-3, batch=8, seed=99))
    tr2.load_state(torch.load(tmp_path / "ck.pt", weights_only=True))
    nxt2 = tr2.train_step()
    assert nxt2["step"] == nxt["step"] and nxt2["total"] == pytest.approx(nxt["total"], rel=1e-5)


def _zoo(G):
    return Zoo("default", G, list(PARAM_NAMES), None, RECIPE)


def test_small_evaluate_run(G, pool, stats, tmp_path):
    lo = np.array([stats["params"][n]["lo"] for n in PARAM_NAMES])
    hi = np.array([stats["params"][n]["hi"] for n in PARAM_NAMES])
    ls, _ = fit_least_squares(pool, lo, hi, PARAM_NAMES, "default")
    ls.save(tmp_path / "ls.safetensors")
    ls.save(tmp_path / "learned.safetensors")
    res, common = evaluate(_zoo(G), 12, seed=3, learned=tmp_path / "learned.safetensors",
                           least_squares=tmp_path / "ls.safetensors", progress=False)
    # the common subset: the same pairs for every method; no_shift keeps every pair, so it is the
    # subset of pairs the shifted methods kept
    n = common["no_shift"]["pairs"]
    assert n == common["learned"]["pairs"] and 0 < n <= 12
    assert n == round(res["learned"]["detected"] * 12)   # one matrix under two names: same faces lost
    if n == 12:
        assert common["learned"]["yaw"] == pytest.approx(res["learned"]["yaw"])
    assert set(res) == {"no_shift", "least_squares", "learned"}
    for r in res.values():
        assert set(r) == {*PARAM_NAMES, "identity", "detected"}
    # no shift: the reenacted image is the source, so identity is exactly 1 and every error is |p_s - p_t|
    assert res["no_shift"]["identity"] == pytest.approx(1.0, abs=1e-5)
    assert res["no_shift"]["detected"] == 1.0
    # the same matrix under two names gives the same numbers (deterministic evaluation)
    assert res["learned"] == res["least_squares"]
    json.dumps(res)
