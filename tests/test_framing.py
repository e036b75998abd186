"""The published frame (streamer.avatar.framing): the render pasted into the photo's own surroundings."""
import numpy as np
import pytest
from PIL import Image

from engines.method.align import crop_image
from streamer.avatar.framing import (Framer, HeadTurn, face_square, generator_view, square_mask,
                                     surroundings)


def test_the_render_sits_in_the_photos_surroundings():
    rng = np.random.default_rng(0)
    surroundings = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    face = np.full((64, 64, 3), 200, np.uint8)
    frame = Framer(surroundings, 1.6, 256)(face)
    o, s = face_square(256, 1.6)
    assert (o, s) == (48, 160) and frame.shape == (256, 256, 3)
    outside = np.ones((256, 256), bool)
    outside[o:o + s, o:o + s] = False
    assert np.array_equal(frame[outside], surroundings[outside])          # the photo, untouched
    inner = frame[o + 20:o + s - 20, o + 20:o + s - 20]
    assert (inner == 200).all()                                            # the render, unblended
    edge = frame[o + s // 2, o].astype(int)                                # the seam fades from one to the other
    assert np.abs(edge - surroundings[o + s // 2, o].astype(int)).max() <= 200


def test_the_mask_is_a_square_that_fades_only_at_its_border():
    m = square_mask(100, 0.12)
    assert m[50, 50] == 1 and m[94 - 1, 50] == 1 and m[6, 50] == 1        # the chin's row near the edge: full
    assert m[0, 50] < 0.2 and m[50, 0] < 0.2 and m[0, 0] < 0.2


def test_packs_from_before_the_wider_crop_fill_the_frame():
    face = np.full((64, 64, 3), 9, np.uint8)
    frame = Framer(np.zeros((256, 256, 3), np.uint8), 1.0, 256)(face)
    assert frame.shape == (256, 256, 3) and (frame == 9).all()


def test_generator_view_cuts_the_square_back_out():
    frame = np.zeros((256, 256, 3), np.uint8)
    frame[48:208, 48:208] = 77
    view = generator_view(frame, 1.6)
    assert view.shape == (256, 256, 3) and abs(float(view.mean()) - 77) < 0.5
    assert generator_view(frame, 1.0) is frame


@pytest.mark.slow
def test_published_avatar_frame_is_the_photo_around_the_render(engine, astronaut_pack):
    """The reenactor's frame: outside the generator's square, the pack's surroundings exactly."""
    from PIL import Image

    from streamer.avatar.pack import AvatarPack
    pack = AvatarPack.load(astronaut_pack)
    assert pack.display_scale == pytest.approx(1.6)
    r = engine.make_reenactor(astronaut_pack)
    o, s = face_square(256, pack.display_scale)
    bg = np.asarray(Image.fromarray(pack.display).resize((256, 256), Image.BICUBIC))
    assert np.array_equal(r.avatar_img[:o], bg[:o]) and np.array_equal(r.avatar_img[o + s:], bg[o + s:])
    r.close()


def _roll_read(reader, img: np.ndarray) -> float:
    return float(reader.read(img).p[2])


def test_a_turned_head_reads_as_turned_that_far_and_the_frames_corners_stay(engine, astronaut_pack):
    """MediaPipe's runtime (image mode) reads the bundled avatar's published frame, its head turned by
    the framer's HeadTurn, as rolled by the same angle (counter-clockwise positive, as its roll reads)
    within 1.5 degrees; the frame's corners, away from the head, stay to the byte."""
    from engines.method.net3d import MediaPipeNet3D
    r = engine.make_reenactor(astronaut_pack)
    frame, turn = r.avatar_img, r.framer.head_turn
    r.close()
    with MediaPipeNet3D("image") as reader:
        rest = _roll_read(reader, frame)
        for roll in (-12.0, 8.0):
            turned = turn(frame, roll)
            assert _roll_read(reader, turned) - rest == pytest.approx(roll, abs=1.5)
            assert np.array_equal(turned[:20, :20], frame[:20, :20])
            assert np.array_equal(turned[-20:, -20:], frame[-20:, -20:])


def _stripes(size: int) -> np.ndarray:
    """A smooth frame of diagonal colour stripes (20 px period): any cut or fold in a warp of it shows
    as a step far larger than its own."""
    ys, xs = np.mgrid[0:size, 0:size]
    phase = (xs + 0.7 * ys) * 2 * np.pi / 20
    return np.stack([127 + 100 * np.sin(phase + k) for k in (0, 2, 4)], -1).round().astype(np.uint8)


def _largest_step(img: np.ndarray) -> int:
    img = img.astype(int)
    return max(np.abs(np.diff(img, axis=0)).max(), np.abs(np.diff(img, axis=1)).max())


def test_the_head_turns_whole_and_the_turn_fades_out_with_no_cut():
    """Closed form, on smooth stripes standing for a photo with its render pasted in (continuous at
    rest): with a 15-degree turn, the head's core is the rigid turn of the frame about the square's
    centre (OpenCV's warpAffine) within 3 levels, pixels beyond the fade are the frame's to the byte,
    and nowhere does the frame step more than 2.5 x the stripes' own largest step between neighbours
    (1.8 x; turning the face square alone cut the stripes where it met the still photo: 6.7 x)."""
    import cv2
    frame = _stripes(256)
    o, s = face_square(256, 1.6)
    turn = HeadTurn(256, o, s)
    turned = turn(frame, 15.0)
    rigid = cv2.warpAffine(frame, cv2.getRotationMatrix2D((127.5, 127.5), 15.0, 1.0), (256, 256),
                           flags=cv2.INTER_CUBIC)
    weight = np.zeros((256, 256), np.float32)
    weight[turn.box] = turn.weight
    core, still = weight == 1, weight == 0
    assert core.mean() > 0.2 and still.mean() > 0.1            # the premise: both are there
    assert np.abs(turned[core].astype(int) - rigid[core]).max() <= 3
    assert np.array_equal(turned[still], frame[still])
    assert _largest_step(turned) <= 2.5 * _largest_step(frame)


def test_the_avatar_rolls_with_the_driver_as_far_as_the_driver_rolls(engine, astronaut_pack):
    """The driver's roll is shown by turning the published face, not through G (whose roll direction
    moves a 64-px face a few degrees at most): the bundled photo as the driver, then turned 12 degrees
    either way, gives an output MediaPipe reads rolled 12 degrees either way (within 3) from the
    first frame's."""
    from PIL import Image

    from engines.core.photo import read_photo
    from engines.method.net3d import MediaPipeNet3D
    photo = read_photo("assets/astronaut.png")
    r = engine.make_reenactor(astronaut_pack)
    outs = [r.process(np.asarray(Image.fromarray(photo).rotate(a, Image.BICUBIC)), t=i / 30).image
            for i, a in enumerate([0.0] * 30 + [12.0] * 30 + [-12.0] * 30)]
    r.close()
    with MediaPipeNet3D("image") as reader:
        rest, left, right = (_roll_read(reader, outs[i]) for i in (29, 59, 89))
    assert left - rest == pytest.approx(12.0, abs=3.0) and right - rest == pytest.approx(-12.0, abs=3.0)


def _driven_by_roll_alone(r, rolls: list[float]) -> list[np.ndarray]:
    """The avatar's published frames for a driver at the avatar's own pose who then rolls his head
    alone by each of `rolls` (degrees: his yaw and pitch read as before)."""
    base = np.array(r.pack.p, dtype=np.float64)
    outs = []
    for i, roll in enumerate([0.0, *rolls]):
        r.motion.update(base + np.eye(len(base))[2] * roll, now=i / 30)
        outs.append(r._render(r._latent(r._request(r.motion.dp, None)), r.motion.roll))
    return outs[1:]


def test_a_drivers_roll_alone_leaves_the_avatars_turn_as_the_reader_reads_it(engine, astronaut_pack):
    """A turn in the image's plane moves a pitched head's pitch into the reader's yaw (its Euler order
    puts roll innermost: the bundled photo, pitched ~8 degrees, turned 12 either way reads 1.6 degrees
    of yaw either way, 3.3 apart). So G shows the yaw and pitch the turned image must read as asked
    (engines.method.pose.before_image_turn): MediaPipe's runtime reads the output rolled +12 and -12
    with its yaw within 1.5 degrees of each other (3.1 apart without)."""
    from engines.method.net3d import MediaPipeNet3D
    r = engine.make_reenactor(astronaut_pack, smooth=False)
    assert r.pack.p[1] > 5.0                    # the premise: a pitched rest
    outs = _driven_by_roll_alone(r, [12.0, -12.0])
    r.close()
    with MediaPipeNet3D("image") as reader:
        (left, right) = (reader.read(o).p for o in outs)
    assert left[2] - right[2] == pytest.approx(24.0, abs=4.0)
    assert abs(left[0] - right[0]) < 1.5, (left[:3], right[:3])


def test_the_frame_is_the_whole_frame_blend_to_the_byte():
    """Only the face square is blended per frame; the result is the closed-form blend of the whole frame
    (photo + (render - photo) * mask, the mask 0 outside the square), rounded."""
    rng = np.random.default_rng(1)
    surroundings = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    framer = Framer(surroundings, 1.6, 256)
    o, s = face_square(256, 1.6)
    mask = np.zeros((256, 256, 1), np.float32)
    mask[o:o + s, o:o + s] = square_mask(s, 0.12)[..., None]
    for _ in range(3):
        face = rng.integers(0, 255, (s, s, 3), dtype=np.uint8)
        placed = np.zeros((256, 256, 3), np.float32)
        placed[o:o + s, o:o + s] = face
        bg = framer.background
        want = (bg + (placed - bg) * mask).round().astype(np.uint8)
        assert np.array_equal(framer(face), want)


def test_surroundings_past_the_photos_edge_blur_instead_of_running_on_as_stripes():
    """A photo cut at the shoulders, in bands of colour (a patterned shirt): inside the photo the
    surroundings are the plain crop to the byte; past its bottom edge, where the plain crop repeats the
    last row as stripes with sharp edges, no step along a row is a tenth of theirs from 6 frame pixels
    past the edge on (the fill of 2026-12-03 kept a third of it there); a box inside the photo is the
    plain crop."""
    rng = np.random.default_rng(2)
    bands = np.repeat(rng.integers(0, 255, (1, 10, 3), dtype=np.uint8), 20, axis=1)
    photo = np.repeat(bands, 200, axis=0)
    box = (100.0, 170.0, 80.0)                        # 1.6 x 80 = 128 photo px: 34 past the bottom
    plain = crop_image(photo, (100.0, 170.0, 128.0), 256)
    soft = surroundings(photo, box, 1.6, 256)
    inside = (200 - 106) * 2                          # frame rows inside the photo (its rows 106..200)
    assert np.array_equal(soft[:inside - 2], plain[:inside - 2])

    def steepest(frame, rows):
        return np.abs(np.diff(frame[rows].astype(float), axis=1)).max(axis=1)

    past = slice(inside + 6, 256)
    assert steepest(plain, past).min() > 100 and steepest(soft, past).max() < 0.1 * steepest(plain, past).min()
    assert np.array_equal(surroundings(photo, (100.0, 100.0, 80.0), 1.6, 256),
                          crop_image(photo, (100.0, 100.0, 128.0), 256))


def test_a_face_cut_by_the_photos_side_is_made_whole_with_its_other_half():
    """Closed form: a picture symmetric about column 120, cut at column 150 through a 'face' whose
    landmarks run from 70 to 170, is widened by one face width and the missing columns are the
    picture's own, exactly (past the short fade where the halves meet); a face inside the photo is
    left as it is. Then the astronaut cut through her cheek: MediaPipe reads her landmarks past the
    cut, and in the mended photo a face as wide as her whole one."""
    from PIL import Image

    from engines.method.net3d import MediaPipeNet3D
    from streamer.avatar.framing import MIDLINE, MIRROR_FADE, mirror_half
    from tests.mediapipe_faces import ASSETS

    rng = np.random.default_rng(3)
    half = rng.integers(0, 255, (40, 121, 3), dtype=np.uint8)
    picture = np.concatenate([half, half[:, -2::-1]], axis=1)              # columns 0..240, mirror at 120
    landmarks = np.zeros((478, 3), np.float32)
    landmarks[:, 0] = np.linspace(70, 170, 478)
    landmarks[list(MIDLINE), 0] = 120.0
    mended = mirror_half(picture[:, :150], landmarks)
    assert mended.shape == (40, 150 + 100, 3)
    assert np.array_equal(mended[:, :150 - int(MIRROR_FADE * 100)], picture[:, :150 - int(MIRROR_FADE * 100)])
    assert np.array_equal(mended[:, 150:241], picture[:, 150:])           # the cut-off part, restored
    assert mirror_half(picture, landmarks * [0.5, 1, 1]) is picture       # whole: untouched

    full = np.asarray(Image.open(ASSETS / "astronaut.png").convert("RGB"))
    with MediaPipeNet3D("image") as net3d:
        whole = net3d.read(full)
        x0, _, x1, _ = whole.box
        edge = int(whole.landmarks[1, 0] + 0.3 * (x1 - x0))
        seen = net3d.read(np.ascontiguousarray(full[:, :edge]))
        assert seen.box[2] > edge                                          # read past the cut
        again = net3d.read(mirror_half(np.ascontiguousarray(full[:, :edge]), seen.landmarks))
    assert abs((again.box[2] - again.box[0]) / (x1 - x0) - 1) < 0.1


def test_the_other_faces_of_a_group_photo_are_blurred_out_of_the_avatars_surroundings():
    """An astronaut with a smaller one at her shoulder, inside her published frame: MediaPipe finds two
    faces in the frame cut plainly from the photo, and one (the enrolled face, centred) in the frame
    enrollment keeps, where the neighbour is blurred and the avatar's own face is left as it was."""
    from PIL import Image

    from engines.method.net3d import MediaPipeNet3D
    from engines.method.zoos import load_zoo
    from streamer.avatar.enroll import DISPLAY_SIZE, Enroller
    from streamer.avatar.framing import DISPLAY_SCALE
    from tests.mediapipe_faces import ASSETS

    face = Image.open(ASSETS / "astronaut.png").convert("RGB").crop((120, 20, 340, 240))
    canvas = Image.new("RGB", (560, 300), (90, 100, 110))
    canvas.paste(face, (40, 40))
    canvas.paste(face.transpose(Image.FLIP_LEFT_RIGHT).resize((90, 90)), (190, 150))
    photo = np.asarray(canvas)
    box, _, display, _, _ = Enroller(load_zoo("default"), progress=False, log=lambda m: None).align(photo, "two")
    plain = surroundings(photo, box, DISPLAY_SCALE, DISPLAY_SIZE)
    with MediaPipeNet3D("image", num_faces=4) as net3d:
        assert len(net3d.find_every(plain)) == 2
        kept = net3d.find_every(display)
    assert len(kept) == 1 and kept[0].box[0] < DISPLAY_SIZE / 2 < kept[0].box[2]
    x0, y0, x1, y1 = (int(v) for v in kept[0].box)
    assert np.array_equal(display[y0:y1, x0:x1], plain[y0:y1, x0:x1])     # her own face untouched
