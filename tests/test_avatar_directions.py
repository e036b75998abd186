"""A tuned to one avatar (`--tune-directions`): the tuning, the pack, the reenactor's use of it."""
from pathlib import Path

import pytest
import torch

from calibration.avatar_directions import avatar_sample, check_supported, shape_model_path, tune_directions
from calibration.identity import IdentityScorer
from calibration.shape_model import ShapeModel
from calibration.train import TrainConfig, Trainer
from engines.core.errors import UserError
from engines.models.facelandmarker import FaceLandmarkerTorch
from streamer.avatar.pack import AvatarPack
from tests.media import quick_astronaut_pack

pytestmark = pytest.mark.slow   # each test here takes (or builds a fixture of) more than ~30 s

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pack(engine, tmp_path_factory):
    """A quick enrollment that also tunes A (few steps; the same code path as --tune-directions)."""
    return quick_astronaut_pack(engine.zoo, tmp_path_factory.mktemp("pack"), tune_directions=6)


def test_tuning_lowers_the_training_loss_on_held_out_requests(engine, astronaut_pack):
    p = AvatarPack.load(astronaut_pack)   # as enrolled by default (a quick pack's mouth hardly moves)
    G, z, A0 = p.generator(engine.zoo.generator), p.latent.float(), engine.directions
    A, report = tune_directions(engine.zoo, G, z, A0, steps=60, progress=False, log=lambda m: None)
    assert report["steps"] == 60 and not torch.equal(A.linear.weight, A0.linear.weight)
    assert torch.equal(A.lo, A0.lo) and torch.equal(A.hi, A0.hi)   # same normalisation as the zoo's A
    # a batch of single-direction requests the tuning never drew (another seed), same losses
    lm = FaceLandmarkerTorch.from_task().requires_grad_(False)
    scorer = IdentityScorer(engine.zoo.param_names)
    data = avatar_sample(G, z, ShapeModel.load(shape_model_path("default")), lm, scorer)
    probe = Trainer(G, data, A0, lm, scorer, TrainConfig(lr=0.0, batch=16, seed=123, single_fraction=1.0,
                                                         expr_range=2.0))
    s, dp, p_ref = probe.sample()
    with torch.no_grad():
        before = probe.losses(s, dp, p_ref)[0].item()
        probe.A = A
        after = probe.losses(s, dp, p_ref)[0].item()
    assert after < 0.95 * before, (before, after)


def test_pack_carries_the_tuned_a_and_the_reenactor_uses_it(engine, pack):
    p = AvatarPack.load(pack)
    assert set(p.directions) == {"weight", "bias"}
    assert p.meta["tuned_directions"]["steps"] == 6
    r = engine.make_reenactor(pack, feedback_every=0)
    assert torch.equal(r.A.linear.weight, p.directions["weight"]) and torch.equal(r.A.linear.bias, p.directions["bias"])
    assert not torch.equal(r.A.linear.weight, engine.directions.linear.weight)
    assert torch.equal(engine.directions.linear.weight, engine.zoo.directions().linear.weight)
    r.close()


def test_wrong_tuned_a_or_zoo_is_a_user_error(engine, pack, tmp_path):
    p = AvatarPack.load(pack)
    p.directions = {"weight": p.directions["weight"][:, :5], "bias": p.directions["bias"]}
    bad = tmp_path / "bad.avatar"
    p.save(bad)
    with pytest.raises(UserError, match="tuned directions 'weight' has shape"):
        engine.make_reenactor(bad)
    with pytest.raises(UserError, match="default zoo"):
        check_supported("vox256")


def test_run_stream_tune_directions_on_another_zoo_is_one_line(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(ROOT / "run_stream.py"), "--avatar", str(ROOT / "assets" / "astronaut.png"),
                        "--zoo", "vox256", "--weights", str(tmp_path), "--tune-directions",
                        "--source", str(ROOT / "assets" / "pexels_woman.mp4"), "--sink", str(tmp_path / "o.mp4")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert any("--tune-directions is calibrated for the default zoo" in ln for ln in lines), r.stderr


def test_an_expression_the_tuning_broke_gets_the_zoos_column_back(engine, astronaut_pack):
    """A tuned A whose jaw column is gone (as the tuning did on Mona Lisa) must get the zoo's jaw back:
    the zoo's jaw opens this avatar's mouth past the reenactor's gate (read by the MediaPipe runtime),
    the broken one does not. Columns that still work are left as tuned."""
    import copy

    from calibration.avatar_directions import expression_response, keep_working_expressions
    p = AvatarPack.load(astronaut_pack)
    G, z, base = p.generator(engine.zoo.generator), p.latent.float(), engine.directions
    broken = copy.deepcopy(base)
    with torch.no_grad():
        broken.linear.weight[:, 3] = 0          # jawOpen
    r = expression_response(G, z, broken)
    assert abs(r[1, 0]) < 0.1 and expression_response(G, z, base)[1, 0] > 0.5   # the gate: GATE_MIN
    kept = keep_working_expressions(G, z, base, broken)
    assert kept == ["jawOpen"]
    assert torch.equal(broken.linear.weight, base.linear.weight)
