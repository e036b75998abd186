"""Net3D runtime reader and the pose convention, checked against geometry we control."""
import numpy as np
import pytest
from PIL import Image

from engines.method.net3d import MediaPipeNet3D
from engines.method.pose import PARAM_NAMES, before_image_turn, euler_from_rotation, pose_vector, rotation_from_euler
from tests.mediapipe_faces import ASSETS, load_rgb


@pytest.fixture(scope="module")
def net3d():
    n = MediaPipeNet3D("image", num_faces=2)
    yield n
    n.close()


def test_euler_round_trip_and_convention():
    rng = np.random.default_rng(0)
    ang = rng.uniform([-60, -40, -30], [60, 40, 30], size=(50, 3))
    R = rotation_from_euler(ang)
    assert np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(euler_from_rotation(R), ang, atol=1e-9)
    # positive yaw turns the face normal (+z, toward the viewer) toward +x (image right)
    n = rotation_from_euler([20, 0, 0]) @ [0, 0, 1]
    assert n[0] > 0.3
    # positive pitch turns it down (-y in the y-up camera frame)
    n = rotation_from_euler([0, 20, 0]) @ [0, 0, 1]
    assert n[1] < -0.3


def test_the_angles_before_a_turn_of_the_image_read_as_asked_once_turned():
    """Closed forms, with scipy's rotations as the reference (intrinsic Y-X-Z: the module's Ry Rx Rz):
    a head showing before_image_turn(a, t), its image turned t about the camera's axis, reads a; a head
    pitched 10 degrees under a quarter turn must show a yaw of -10 instead, exactly."""
    from scipy.spatial.transform import Rotation
    rng = np.random.default_rng(3)
    for a, t in zip(rng.uniform([-40, -25, -25], [40, 25, 25], size=(20, 3)), rng.uniform(-20, 20, 20)):
        shown = Rotation.from_euler("YXZ", before_image_turn(a, t), degrees=True)
        read = (Rotation.from_euler("Z", t, degrees=True) * shown).as_euler("YXZ", degrees=True)
        assert np.allclose(read, a, atol=1e-9)
    assert np.allclose(before_image_turn([0.0, 10.0, 0.0], 90.0), [-10.0, 0.0, -90.0], atol=1e-9)


def test_pose_vector_ignores_uniform_scale():
    m = np.eye(4)
    m[:3, :3] = 1.7 * rotation_from_euler([10, -5, 3])
    p = pose_vector(m, np.zeros(52))
    assert np.allclose(p[:3], [10, -5, 3], atol=1e-9)
    assert len(p) == len(PARAM_NAMES)


def test_image_rotation_composes_with_the_head_pose(net3d):
    """Rotating the photo by t (counter-clockwise) rotates the head about the camera axis:
    the new angles must be euler(Rz(t) @ R(base)) (roll grows by ~t; a pitched head also yaws)."""
    img = load_rgb(ASSETS / "astronaut.png")
    base = net3d.read(img).p
    for angle in (-15, 15):
        rot = np.asarray(Image.fromarray(img).rotate(angle, resample=Image.BICUBIC))
        p = net3d.read(rot).p
        expected = euler_from_rotation(rotation_from_euler([0, 0, angle]) @ rotation_from_euler(base[:3]))
        assert np.abs(p[:3] - expected).max() < 2.0, (p[:3], expected)


def test_mirror_negates_yaw_and_roll_and_swaps_sides(net3d):
    img = load_rgb(ASSETS / "astronaut.png")
    a = net3d.read(img)
    b = net3d.read(np.ascontiguousarray(img[:, ::-1]))
    assert b.p[0] == pytest.approx(-a.p[0], abs=2.5)
    assert b.p[2] == pytest.approx(-a.p[2], abs=2.5)
    assert b.p[1] == pytest.approx(a.p[1], abs=2.5)
    i_l, i_r = PARAM_NAMES.index("mouthSmileLeft"), PARAM_NAMES.index("mouthSmileRight")
    assert b.p[i_l] == pytest.approx(a.p[i_r], abs=0.08)


def test_no_face_is_explicit(net3d):
    assert net3d.read(np.full((240, 320, 3), 127, np.uint8)) is None


def test_largest_face_first(shared_dir, net3d):
    faces = net3d.read_all(load_rgb(shared_dir / "media" / "twofaces_obama_biden.jpg"))
    assert len(faces) == 2 and faces[0].area >= faces[1].area


def test_video_mode_tracks(net3d):
    img = load_rgb(ASSETS / "astronaut.png")
    with MediaPipeNet3D("video") as v:
        ps = [v.read(img, t).p for t in (0, 33, 66)]
    assert np.allclose(ps[2][:3], net3d.read(img).p[:3], atol=2.0)


def _on_canvas(faces: list[tuple[Image.Image, int, tuple[int, int]]], size=(2400, 1600)) -> np.ndarray:
    """A wide grey frame with each photo shrunk to `side` px and pasted at `at` (small faces in a big frame)."""
    canvas = Image.new("RGB", size, (120, 110, 100))
    for photo, side, at in faces:
        canvas.paste(photo.resize((side, side), Image.BICUBIC), at)
    return np.asarray(canvas)


def test_small_faces_in_a_wide_photo_are_found_window_by_window(net3d):
    """The detector reads the whole frame at 128 px and misses faces under ~1/5 of it (a group of six
    at a table: none found, and enrollment refused the photo). find_all then reads overlapping windows:
    each face is found once, at the landmarks MediaPipe reads in a crop around it alone (moved back by
    the crop's corner), largest first; a frame without a face still finds none."""
    astronaut = Image.fromarray(load_rgb(ASSETS / "astronaut.png"))
    frame = _on_canvas([(astronaut, 300, (1200, 480)), (astronaut.transpose(Image.FLIP_LEFT_RIGHT), 200, (300, 900))])
    assert net3d.read_all(frame) == []
    faces = net3d.find_all(frame)
    assert len(faces) == 2 and faces[0].area > faces[1].area
    for face, (x, y, side) in zip(faces, [(1200, 480, 300), (300, 900, 200)]):
        alone = net3d.read(np.ascontiguousarray(frame[y:y + side, x:x + side]))
        gap = np.abs(face.landmarks[:, :2] - (alone.landmarks[:, :2] + [x, y])).max(0)
        assert gap.max() < 0.05 * side, gap     # the same face, read in a different window
    assert net3d.find_all(_on_canvas([])) == []


def test_a_face_the_photos_edge_cuts_and_tilts_is_found_on_the_photo_padded_by_its_edge(net3d):
    """A smiling portrait cut through the cheek and turned 10 degrees (face_recognition's test picture,
    rotated) was refused as faceless: the detector misses a face whose box leaves the image once it is
    also tilted. find_all then reads the photo with its edge pixels repeated around it. Here the
    bundled astronaut, her face's left 30% cut off and the photo turned 10 degrees: MediaPipe finds no
    face in it, and finds the one find_all returns in the padded photo, at the same landmarks moved
    back by the pad; a frame without a face still finds none."""
    from engines.method.net3d import EDGE_PAD
    rgb = load_rgb(ASSETS / "astronaut.png")
    x0, _, x1, _ = net3d.find_all(rgb)[0].box
    cut = rgb[:, int(x0 + 0.3 * (x1 - x0)):]
    photo = np.ascontiguousarray(np.asarray(Image.fromarray(cut).rotate(10, resample=Image.BICUBIC,
                                                                       fillcolor=tuple(int(v) for v in cut[0, 0]))))
    assert net3d.read_all(photo) == [] and net3d._found(photo) == []
    faces = net3d.find_all(photo)
    assert len(faces) == 1
    # the same face read on another canvas (half the pad), moved back by its own pad: the landmarks
    # inside the photo agree (those beyond its edge are the network's guesses either way)
    pad = int(EDGE_PAD / 2 * max(photo.shape[:2]))
    other = net3d._found(np.pad(photo, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))[0]
    inside = faces[0].landmarks[:, 0] >= 0
    width = faces[0].box[2] - faces[0].box[0]
    gap = np.abs(faces[0].landmarks[inside, :2] - (other.landmarks[inside, :2] - pad))
    assert inside.mean() > 0.3 and np.median(gap) < 0.03 * width and gap.max() < 0.1 * width
    assert faces[0].box[0] < 0 < faces[0].box[2]        # cut by the photo's left edge
    assert net3d.find_all(_on_canvas([])) == []
