"""Pose targets for pivotal tuning (streamer.avatar.pose_targets): the avatar photo warped to other poses and
expressions. Checked against the MediaPipe runtime reading the targets, and against closed forms."""
import numpy as np
import pytest
import torch

from calibration.shape_model import ShapeModel, shape_model_path
from engines.core.photo import read_photo
from engines.method.net3d import MediaPipeNet3D
from engines.method.pose import PARAM_NAMES
from streamer.avatar.enroll import Enroller, net3d_uint8
from streamer.avatar.pose_targets import (
    AvatarShape,
    Painter,
    TargetRecipe,
    expression_gains,
    loss_weights,
    request_bank,
)
from tests.media import ASTRONAUT

YAW, ROLL, JAW = (PARAM_NAMES.index(n) for n in ("yaw", "roll", "jawOpen"))


@pytest.fixture(scope="module")
def avatar(engine):
    """(crop [1,3,64,64], the runtime's reading of it, AvatarShape, Painter, reader) of the astronaut."""
    enroller = Enroller(engine.zoo, progress=False, log=lambda m: None)
    _, _, _, crop, reading = enroller.align(read_photo(ASTRONAUT), ASTRONAUT.name)
    shape = AvatarShape.from_view_reading(reading, 64, ShapeModel.load(shape_model_path("default")))
    reader = MediaPipeNet3D("image")
    yield crop, reading, shape, Painter(crop, shape, TargetRecipe().spacing), reader
    reader.close()


def read_p(image, reader):
    face = reader.read(net3d_uint8(image))
    assert face is not None, "the runtime finds no face in a target"
    return face.p


def test_at_its_own_pose_the_target_is_the_photo(avatar):
    crop, _, shape, paint, _ = avatar
    same = shape.at(shape.p)
    assert np.abs(same - shape.landmarks[:, :2]).max() < 1e-3      # pose and expression unchanged
    diff = (paint(same) - crop).abs().max() * 127.5
    assert diff < 2.0                                                # the identity warp, in grey levels


def test_a_requested_turn_turns_the_warped_face(avatar):
    _, _, shape, paint, reader = avatar
    p0 = read_p(paint(shape.at(shape.p)), reader)
    for i, deg in ((YAW, 15.0), (YAW, -15.0), (ROLL, 8.0)):
        p = shape.p.copy()
        p[i] += deg
        got = read_p(paint(shape.at(p)), reader)[i] - p0[i]
        # a 2D warp of a frontal photo reads as less turn than asked (yaw about half: module doc)
        assert np.sign(got) == np.sign(deg) and abs(got) >= 0.35 * abs(deg), (PARAM_NAMES[i], deg, got)
        others = [j for j in range(3) if j != i]
        assert np.abs(read_p(paint(shape.at(p)), reader)[others] - p0[others]).max() < 0.6 * abs(deg)


def test_an_opening_jaw_opens_a_dark_mouth(avatar):
    crop, _, shape, paint, reader = avatar
    read = []
    for jaw in (0.0, 0.25, 0.5, 0.75):
        p = shape.p.copy()
        p[JAW] = jaw
        img = paint(shape.at(p, gain=np.r_[np.ones(3), [2.0], np.ones(len(p) - 4)]))
        read.append(read_p(img, reader)[JAW])
    assert np.all(np.diff(read) > 0) and read[-1] > 0.3, read
    # the mouth's inside is darker than the lips around it (no lip-coloured smear)
    lips = shape.landmarks[[13, 14], :2].mean(0)
    y, x = int(round(lips[1] + 2)), int(round(lips[0]))
    assert img[0, :, y, x].mean() < crop[0, :, y - 5:y + 6, x - 5:x + 6].mean() - 0.2


def test_closing_eyes_read_as_a_blink(avatar):
    _, _, shape, paint, reader = avatar
    p = shape.p.copy()
    blinks = [PARAM_NAMES.index("eyeBlinkLeft"), PARAM_NAMES.index("eyeBlinkRight")]
    p[blinks] = 0.5
    got = read_p(paint(shape.at(p)), reader)
    assert (got[blinks] > read_p(paint(shape.at(shape.p)), reader)[blinks] + 0.25).all()
    p[blinks] = 1.0   # past a full blink the lids stop where they meet: still a closed eye
    got = read_p(paint(shape.at(p, gain=np.full(len(p), 2.0))), reader)
    assert (got[blinks] > read_p(paint(shape.at(shape.p)), reader)[blinks] + 0.25).all()


def test_gains_invert_the_read_response():
    """A reader that sees half of each expression change asked (and all of the angles) -> gain 2 for
    expressions (capped at gain_max), 1 for angles; a reader that sees none -> gain_max."""
    k, levels = 5, 4
    p_av = np.array([1.0, 2.0, 3.0, 0.1, 0.2])
    asked = np.tile(p_av, (k * levels, 1))
    for i in range(k):
        asked[i * levels:(i + 1) * levels, i] += np.linspace(-0.1, 0.3, levels)

    class HalfReader:
        def __init__(self, scale):
            self.rows, self.scale = iter(asked), scale

        def read(self, _):
            row = next(self.rows)
            seen = p_av + (row - p_av) * np.r_[np.ones(3), np.full(k - 3, self.scale)]
            return type("Reading", (), {"p": seen})()

    images = torch.zeros(k * levels, 3, 8, 8)
    g = expression_gains(images, asked, p_av, levels, HalfReader(0.5), gain_max=3.0)
    assert g == pytest.approx([1, 1, 1, 2, 2])
    g = expression_gains(images, asked, p_av, levels, HalfReader(0.0), gain_max=3.0)
    assert g == pytest.approx([1, 1, 1, 3, 3])


def test_bank_holds_each_parameter_alone_then_combinations(engine):
    A = engine.directions
    p_av = np.r_[[2.0, 5.0, -1.0], np.full(A.k - 3, 0.1)]
    recipe = TargetRecipe(samples=120, levels=5)
    dp = request_bank(p_av, A, recipe)
    assert dp.shape == (120, A.k)
    singles = dp[:5 * A.k]
    assert ((singles != 0).sum(1) <= 1).all()                 # one parameter at a time
    asked = A.denormalise(A.normalise(torch.as_tensor(p_av, dtype=torch.float32)) + singles).numpy()
    assert asked[:5, YAW].min() == pytest.approx(p_av[YAW] - 30, abs=1e-3)   # angles: within their span
    assert asked[:5, YAW].max() == pytest.approx(p_av[YAW] + 30, abs=1e-3)
    assert asked[5 * JAW:5 * JAW + 5, JAW].max() == pytest.approx(float(A.hi[JAW]), abs=1e-4)
    assert ((dp[5 * A.k:, :3] != 0).all())                     # combinations: every angle moves
    assert torch.equal(dp, request_bank(p_av, A, recipe))     # seeded


def test_loss_weights_favour_mouth_and_eyes(avatar):
    _, reading, shape, _, _ = avatar
    w = loss_weights(reading, 64, TargetRecipe(mouth_weight=5.0, eye_weight=2.0))[0, 0]
    xy = shape.landmarks[:, :2]
    at = lambda i: float(w[int(round(xy[i, 1])), int(round(xy[i, 0]))])  # noqa: E731
    assert at(14) > 4.0 and 1.7 < at(159) < 2.5 and w[2, 2] == pytest.approx(1.0, abs=1e-3)


def test_an_opening_jaw_drops_the_chin_with_the_lip(avatar):
    """The shape model alone drops the lower lip past the chin; the chin follows the lip."""
    _, _, shape, _, _ = avatar
    p = shape.p.copy()
    p[JAW] = 1.0
    moved, still = shape.at(p), shape.at(shape.p)
    down = shape.landmarks[152, :2] - shape.landmarks[10, :2]
    down /= np.linalg.norm(down)
    lip, chin = (moved[14] - still[14]) @ down, (moved[152] - still[152]) @ down
    assert lip > 3 and chin >= lip - 1e-6
    assert 152 in shape.control_points(TargetRecipe().spacing)   # the chin steers the warp even when deep


def test_one_colour_is_read_bilinearly_at_a_pixel_coordinate():
    """Closed form: at a pixel's centre the crop's own value; halfway between two, their mean; past the
    edge, the edge's (the mouth's and an eyelid's colour are read this way)."""
    crop = torch.rand(1, 3, 8, 8) * 2 - 1
    paint = Painter.__new__(Painter)
    paint.crop, paint.R = crop, 8
    assert torch.allclose(paint.colour_at(np.array([3.0, 5.0]))[0, :, 0, 0], crop[0, :, 5, 3], atol=1e-6)
    mid = (crop[0, :, 2, 4] + crop[0, :, 2, 5]) / 2
    assert torch.allclose(paint.colour_at(np.array([4.5, 2.0]))[0, :, 0, 0], mid, atol=1e-6)
    assert torch.allclose(paint.colour_at(np.array([-3.0, 0.0]))[0, :, 0, 0], crop[0, :, 0, 0], atol=1e-6)
